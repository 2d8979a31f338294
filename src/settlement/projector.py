"""The settlement projector: reads streams from logs, checks their sequence, writes rows.

A stream is one writer's output: UBSCore's balance.events, or one symbol's
engine.outputs. For each stream the projector keeps ``folded`` (the last seq it has
taken in, in this process) and the store keeps ``applied`` (the stream's checkpoint: the
last seq whose rows are written). Each record read is judged on its ``seq`` alone (log
offsets are positions, not sequence numbers):

* ``seq == folded + 1``: taken in; its rows are written if ``seq > applied``. After a
  restart the projector reads the stream from its last saved fold state (saved with the
  checkpoint every ``STATE_EVERY_EVENTS``), or from its start if there is none, and
  folds the events up to the checkpoint without writing: that rebuilds the little state
  the mapping needs (each open order's filled quantity; each symbol's resting orders and
  level totals) from the log, never from the projected rows.
* ``seq <= folded``: a duplicate, skipped. If its bytes differ from what was taken in
  (within the last ``DUPLICATE_WINDOW_EVENTS`` read by this process) it is a *conflict*;
  one older than that is counted as unverified.
* ``seq > folded + 1``: a *gap* (a log that starts after seq 1 is one), with the exact
  missing range. Nothing after it is written.
* A record that does not decode, or contradicts the stream, is *malformed*.

Every fault is recorded in the store's ``sequence_gaps`` (stream, expected, received,
first seen), logged as a warning, counted in the stream's report, and then, by policy:
``halt`` (default) stops that stream at its last contiguous seq while the other streams
go on; ``refetch`` seeks the source back to just after the last contiguous event and
reads again, up to ``REFETCH_TRIES_MAX`` times, then halts. A conflict or a malformed
record halts at once (reading the same bytes again cannot help). When a gap's missing
seqs arrive (a refetch, or a later run over a repaired log) it is marked resolved.

Writes of a batch are committed before the stream's checkpoint moves past them, so a
crash at any point re-applies at most the last batch, and every write is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from ledger.gctune import relaxed_gc
from ledger.logs import layout
from ledger.logs.base import Log, LogError
from ledger.protocol.codec import EVENTS, OUTPUTS, DecodeError
from settlement.model import Projection, ProjectionError, Row
from settlement.store import FAULT_CONFLICT, FAULT_GAP, FAULT_MALFORMED, Checkpoint, Fault, SavedState, Store

log = logging.getLogger("settlement")

# Events read and committed together: one store commit (and one checkpoint) per batch.
# Larger batches pipeline more writes; smaller ones re-apply less after a crash.
PROJECT_BATCH_EVENTS = 2_000
# Recent records remembered per stream to tell a harmless redelivery from a conflicting
# one. About 200 bytes each, so 64 Ki of them cost about 13 MiB a stream. A duplicate
# older than the window is counted as unverified, never applied.
DUPLICATE_WINDOW_EVENTS = 65_536
# Re-reads of the source after a gap under the refetch policy, and the pause before each
# (doubling, capped): a Kafka follower or a late writer gets time to catch up.
REFETCH_TRIES_MAX = 5
REFETCH_BACKOFF_MS_FIRST = 50
REFETCH_BACKOFF_MS_MAX = 2_000
# The fold state is saved with the checkpoint every this many events of a stream, so a
# restart reads on from there instead of from the stream's start (0: never). A state is
# a few dozen bytes per open order (balance stream) or resting order (engine stream).
STATE_EVERY_EVENTS = 100_000
# Pause between polls of sources that had nothing new, when following.
FOLLOW_IDLE_MS = 20
# How often a following projector asks for streams that appeared since it started (a
# symbol listed meanwhile gets its engine.outputs).
DISCOVER_EVERY_MS = 1_000

HALT = "halt"
REFETCH = "refetch"
POLICIES = (HALT, REFETCH)

# What a stream holds (``Source.kind``).
StreamKind = Literal["balance", "engine"]
BALANCE: Final = "balance"
ENGINE: Final = "engine"


def now_ms() -> int:
    """Wall-clock milliseconds; only ever fault metadata, never a key or a version."""
    return int(time.time() * 1000)


class Source(msgspec.Struct, frozen=True):
    """A stream to project: its name (the key of its checkpoint), its log, and whether it
    is a balance.events stream (``"balance"``) or a symbol's engine.outputs (``"engine"``)."""

    stream: str
    log: Log
    kind: StreamKind
    # For an engine stream: its symbol; an output of another symbol is malformed.
    symbol: str = ""


class StreamReport(msgspec.Struct):
    """What the projector did with one stream."""

    stream: str
    applied_seq: int = 0
    written: int = 0
    folded_without_writing: int = 0
    duplicates: int = 0
    duplicates_unverified: int = 0
    faults: int = 0
    refetches: int = 0
    halted: bool = False
    fault: Fault | None = None
    # The seq of the saved fold state this run started from (0: from the start).
    restored_from_seq: int = 0


class ProjectionReport(msgspec.Struct):
    """The outcome of a run: ``ok`` is False if any stream halted on a fault."""

    ok: bool
    streams: list[StreamReport]
    seconds: float


class _Stream:
    __slots__ = (
        "source",
        "report",
        "applied",
        "folded",
        "next_offset",
        "end_offset",
        "window",
        "window_order",
        "tries",
        "has_open_faults",
        "projection",
        "state_seq",
    )

    def __init__(
        self, source: Source, checkpoint: Checkpoint | None, saved: SavedState | None, has_open_faults: bool
    ) -> None:
        self.source = source
        self.applied = checkpoint.seq if checkpoint else 0
        self.report = StreamReport(source.stream, applied_seq=self.applied)
        self.folded = 0
        self.next_offset = 0
        self.end_offset = 0
        self.window: dict[int, bytes] = {}
        self.window_order: deque[int] = deque()
        self.tries = 0
        self.has_open_faults = has_open_faults
        self.projection = Projection()
        self.state_seq = 0
        # A saved state is only ever written with a checkpoint at its seq; one ahead of
        # the checkpoint would mean a store edited by hand, and is not trusted.
        if saved is not None and 0 < saved.seq <= self.applied:
            try:
                self.projection = Projection.restore(saved.state)
            except ProjectionError as error:
                log.warning("stream %s: %s; folding from the start instead", source.stream, error)
                return
            self.folded = self.state_seq = self.report.restored_from_seq = saved.seq
            self.next_offset = saved.next_offset


class Projector:
    """Projects ``sources`` into ``store``.

    ``policy`` is ``"halt"`` or ``"refetch"``; ``batch_events`` bounds a commit;
    ``clock`` gives fault timestamps (metadata only).
    """

    def __init__(
        self,
        store: Store,
        sources: Sequence[Source],
        policy: str = HALT,
        batch_events: int = PROJECT_BATCH_EVENTS,
        clock: Callable[[], int] = now_ms,
        sleep: Callable[[float], None] = time.sleep,
        state_every_events: int = STATE_EVERY_EVENTS,
        discover: Callable[[set[str]], list[Source]] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r}: use one of {', '.join(POLICIES)}")
        if not 0 < batch_events <= 1_000_000:
            raise ValueError(f"batch_events {batch_events}: 1 to 1,000,000")
        names = [s.stream for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names repeat: {names}")
        for s in sources:
            if s.kind not in (BALANCE, ENGINE):
                raise ValueError(f"stream {s.stream}: kind {s.kind!r} is neither {BALANCE!r} nor {ENGINE!r}")
        if state_every_events < 0:
            raise ValueError(f"state_every_events {state_every_events} is negative")
        self.state_every_events = state_every_events
        self.discover = discover
        self.store = store
        self.policy = policy
        self.batch_events = batch_events
        self.clock = clock
        self.sleep = sleep
        store.setup()
        open_streams = {f.stream for f in store.faults(open_only=True)}
        self._open_gap_streams = open_streams
        self.streams = [self._new_stream(s) for s in sources]
        self._stop = False

    def _new_stream(self, source: Source) -> _Stream:
        store = self.store
        name = source.stream
        stream = _Stream(source, store.checkpoint(name), store.load_state(name), name in self._open_gap_streams)
        if stream.state_seq and not self._resumes_at_its_seq(stream):
            log.warning(
                "stream %s: the record before offset %d is not seq %d in this log; folding from the start",
                name,
                stream.next_offset,
                stream.state_seq,
            )
            stream.projection = Projection()
            stream.folded = stream.state_seq = stream.next_offset = stream.report.restored_from_seq = 0
        return stream

    def _resumes_at_its_seq(self, stream: _Stream) -> bool:
        """Whether the saved offset still follows the saved seq in this log: a resume is
        judged by seq, because a log rewritten or repaired since (or another log under
        the same name) puts other records at the same offsets."""
        log_, offset = stream.source.log, stream.next_offset
        # Kafka leaves holes (transaction markers): the last record is a little way back.
        start = max(offset - 64, 0)
        try:
            batch = log_.read(start, offset - start)
        except LogError:
            return False
        values = [raw for o, raw in zip(batch.offsets, batch.values, strict=True) if o < offset]
        if not values:
            return False
        decode = EVENTS.decode if stream.source.kind == BALANCE else OUTPUTS.decode
        try:
            return decode(values[-1]).seq == stream.state_seq
        except DecodeError:
            return False

    def listed_symbols(self) -> set[str]:
        """The symbols whose ``SymbolListed`` the balance stream has folded so far (from
        its saved state on, or from the start): the engine streams there are to follow."""
        found: set[str] = set()
        for stream in self.streams:
            if stream.source.kind == BALANCE:
                found.update(stream.projection.assets_of)
        return found

    def discover_streams(self) -> None:
        """Ask ``discover`` for streams not projected yet (a symbol listed meanwhile) and
        take them in; ``run(follow=True)`` does it by itself when idle."""
        if self.discover is not None:
            self._discover()

    def _discover(self) -> None:
        assert self.discover is not None
        known = {s.source.stream for s in self.streams}
        for source in self.discover(known):
            if source.stream in known:
                raise ValueError(f"discover returned {source.stream}, which is already projected")
            log.warning("stream %s: found while following; projecting it too", source.stream)
            self.streams.append(self._new_stream(source))
            known.add(source.stream)

    def stop(self) -> None:
        """Ask a following ``run`` to return after its current batch."""
        self._stop = True

    @relaxed_gc()
    def run(self, follow: bool = False, max_seconds: float | None = None) -> ProjectionReport:
        """Project every stream up to its end (the end offset seen when a pass starts);
        with ``follow``, keep polling for new records until ``stop()``, ``max_seconds``,
        or every stream halting. Everything is written when it returns.

        A ``StoreError`` (the store failed a commit after its retries) propagates; the
        checkpoint stays before the failed commit. Make a new ``Projector`` to go on: it
        resumes from the store's checkpoint."""
        started = time.monotonic()
        discovered_at = started
        while not self._stop:
            progressed = False
            live = [s for s in self.streams if not s.report.halted]
            if not live:
                break
            for stream in live:
                stream.end_offset = stream.source.log.end_offset()
                while stream.next_offset < stream.end_offset and not stream.report.halted:
                    if not self._step(stream):
                        break
                    progressed = True
            if not follow:
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                break
            if not progressed:
                # Nothing new: let a pipelining store finish what it holds, so a quiet
                # stream's last events are not left waiting for the next ones.
                self.store.flush()
                now = time.monotonic()
                if self.discover is not None and now - discovered_at >= DISCOVER_EVERY_MS / 1000:
                    discovered_at = now
                    self._discover()
                self.sleep(FOLLOW_IDLE_MS / 1000)
        self.store.flush()
        reports = [s.report for s in self.streams]
        return ProjectionReport(
            ok=not any(r.halted for r in reports),
            streams=reports,
            seconds=round(time.monotonic() - started, 6),
        )

    # -- one batch of one stream --------------------------------------------------------

    def _step(self, stream: _Stream) -> bool:
        """Read and handle one batch; False if nothing could be read."""
        source = stream.source
        batch = source.log.read(stream.next_offset, min(self.batch_events, stream.end_offset - stream.next_offset))
        if not batch.values:
            if batch.next_offset > stream.next_offset:
                stream.next_offset = batch.next_offset
                return True
            return False
        balance = source.kind == BALANCE
        decode = EVENTS.decode if balance else OUTPUTS.decode
        projection = stream.projection
        writes: list[Row] = []
        report = stream.report
        window, window_order = stream.window, stream.window_order
        fault: Fault | None = None
        where = source.log.name
        for offset, raw in zip(batch.offsets, batch.values, strict=True):
            try:
                item: Any = decode(raw)
            except DecodeError as error:
                fault = self._fault(
                    stream, FAULT_MALFORMED, stream.folded + 1, -1, f"{where} offset {offset}: {error.problem}"
                )
                break
            seq = item.seq
            folded = stream.folded
            if seq < 1:
                fault = self._fault(
                    stream, FAULT_MALFORMED, folded + 1, seq, f"{where} offset {offset}: seq {seq} (seqs start at 1)"
                )
                break
            if seq <= folded:
                known = window.get(seq)
                if known is None:
                    # Older than this process's window: it cannot be compared, so it is
                    # counted and reported, never applied.
                    report.duplicates_unverified += 1
                    log.warning(
                        "stream %s: %s offset %d: seq %d again, older than the comparison window; skipped",
                        source.stream,
                        where,
                        offset,
                        seq,
                    )
                elif known != raw:
                    # received: where the stream stood; the fault is resolved once a later
                    # run over a repaired log gets past it.
                    fault = self._fault(
                        stream,
                        FAULT_CONFLICT,
                        seq,
                        folded,
                        f"{where} offset {offset}: seq {seq} again with other bytes (after seq {folded})",
                    )
                    break
                else:
                    report.duplicates += 1
                stream.next_offset = offset + 1
                continue
            if seq != folded + 1:
                fault = self._fault(
                    stream,
                    FAULT_GAP,
                    folded + 1,
                    seq,
                    f"{where} offset {offset}: seq {seq} where {folded + 1} was due (missing {folded + 1}..{seq - 1})",
                )
                break
            target = writes if seq > stream.applied else None
            try:
                if balance:
                    projection.balance_event(item, target)
                else:
                    if source.symbol and item.symbol != source.symbol:
                        raise ProjectionError(f"an output of symbol {item.symbol} in the stream of {source.symbol}")
                    projection.engine_output(item, target)
            except ProjectionError as error:
                fault = self._fault(stream, FAULT_MALFORMED, seq, seq, f"{where} offset {offset}: {error}")
                break
            if target is None:
                report.folded_without_writing += 1
            else:
                report.written += 1
            stream.folded = seq
            stream.next_offset = offset + 1
            window[seq] = raw
            window_order.append(seq)
            if len(window_order) > DUPLICATE_WINDOW_EVENTS:
                del window[window_order.popleft()]
        else:
            stream.next_offset = max(stream.next_offset, batch.next_offset)
        self._flush(stream, writes, save_state=fault is None)
        if fault is not None:
            self._after_fault(stream, fault)
        return True

    def _flush(self, stream: _Stream, writes: list[Row], save_state: bool = True) -> None:
        if stream.folded <= stream.applied:
            return
        checkpoint = Checkpoint(stream.source.stream, stream.folded, stream.next_offset)
        state = None
        # Never after a fault in the batch: the fold state is only saved from a batch
        # that ended cleanly.
        if save_state and self.state_every_events and stream.folded - stream.state_seq >= self.state_every_events:
            state = stream.projection.snapshot()
            stream.state_seq = stream.folded
        # On a StoreError the run ends; a new Projector (with a fresh Projection, which
        # remembers no bucket rows as written) goes on from the checkpoint.
        self.store.commit(writes, checkpoint, state)
        stream.applied = stream.folded
        stream.report.applied_seq = stream.applied
        stream.tries = 0
        if stream.has_open_faults:
            self.store.flush()  # a fault is resolved only once the rows after it are written
            for resolved in self.store.resolve_faults(stream.source.stream, stream.applied):
                log.warning("stream %s: gap from seq %d resolved", resolved.stream, resolved.expected)
            stream.has_open_faults = any(f.stream == stream.source.stream for f in self.store.faults(open_only=True))

    def _fault(self, stream: _Stream, kind: str, expected: int, received: int, detail: str) -> Fault:
        fault = Fault(stream.source.stream, expected, kind, received, detail, self.clock())
        if kind == FAULT_GAP:
            # An open gap of this stream that began earlier has been partly filled (the
            # stream got past its start): this one, recorded now, is what is left of it.
            for old in self.store.faults(open_only=True):
                if old.stream == fault.stream and old.kind == FAULT_GAP and old.expected < expected:
                    self.store.record_fault(
                        msgspec.structs.replace(
                            old,
                            resolved=True,
                            detail=f"{old.detail}; seqs up to "
                            f"{expected - 1} arrived, the rest is the gap from {expected}",
                        )
                    )
        self.store.record_fault(fault)
        stream.has_open_faults = True
        previous = stream.report.fault
        if previous is None or (previous.kind, previous.expected) != (kind, expected):
            stream.report.faults += 1  # a refetch finding the same fault again is not a new one
        stream.report.fault = fault
        log.warning("stream %s: %s: %s", fault.stream, kind, detail)
        return fault

    def _after_fault(self, stream: _Stream, fault: Fault) -> None:
        if self.policy == REFETCH and fault.kind == FAULT_GAP and stream.tries < REFETCH_TRIES_MAX:
            pause_ms = min(REFETCH_BACKOFF_MS_FIRST * 2**stream.tries, REFETCH_BACKOFF_MS_MAX)
            stream.tries += 1
            stream.report.refetches += 1
            # next_offset already points just after the last contiguous event.
            self.sleep(pause_ms / 1000)
            return
        stream.report.halted = True
        log.error("stream %s halted at seq %d: %s", stream.source.stream, stream.folded, fault.detail)


def file_sources(directory: str | Path, skip: set[str] | frozenset[str] = frozenset()) -> list[Source]:
    """The streams of a file-log deployment laid out as ``ledger.logs.layout`` defines it:
    balance.events and one engine.outputs stream per symbol, less those named in
    ``skip`` (``file_sources(d, known)`` as a ``Projector``'s ``discover`` finds new
    symbols)."""
    from ledger.logs.file import FileLog

    events = layout.events_dir(directory)
    if not events.is_dir():
        raise ValueError(f"{directory}: no {layout.EVENTS} log here")
    sources = []
    if layout.EVENTS not in skip:
        sources.append(Source(layout.EVENTS, FileLog(events, readonly=True), BALANCE))
    for symbol in layout.output_symbols(directory):
        name = layout.output_stream(symbol)
        if name not in skip:
            sources.append(Source(name, FileLog(layout.output_dir(directory, symbol), readonly=True), ENGINE, symbol))
    return sources


def kafka_sources(
    bootstrap: str,
    balance_topic: str,
    engine_topics: dict[str, str],
    partition: int = 0,
    client_config: Mapping[str, str] | None = None,
    balance_stream: str | None = None,
) -> list[Source]:
    """The streams of Kafka topics: ``balance_topic`` (one UBSCore shard's partition) and
    one topic per symbol in ``engine_topics`` (symbol -> topic). ``client_config`` holds
    the connection settings (``ledger.logs.kafka.load_client_config``). The balance
    stream's name (its checkpoint's key) is ``balance_stream``, by default the topic's
    name; an engine stream's is ``engine.outputs/SYMBOL`` whatever its topic."""
    from ledger.logs.kafka import KafkaLog

    def open_log(topic: str) -> KafkaLog:
        return KafkaLog(bootstrap, topic, partition, client_config=client_config)

    sources = [Source(balance_stream or balance_topic, open_log(balance_topic), BALANCE)]
    for symbol in sorted(engine_topics):
        sources.append(Source(layout.output_stream(symbol), open_log(engine_topics[symbol]), ENGINE, symbol))
    return sources


__all__ = [
    "BALANCE",
    "ENGINE",
    "HALT",
    "REFETCH",
    "ProjectionReport",
    "Projector",
    "Source",
    "StreamReport",
    "StreamKind",
    "file_sources",
    "kafka_sources",
]
