"""The exchange as services: UBSCore, the matching engines and the projector, each its
own loop over logs, run one per OS process (``ledger run ubscore|engine|project``) or
all in one (``ledger run all``), over file logs or Kafka with the same code.

    balance.operations --> ubscore --> balance.events --> engine --> engine.outputs.<symbol>
                             ^                                              |
                             +----------------------------------------------+

Exactly once in effect, after any crash, for every service:

* Its state is the fold of its own output. On start it rebuilds that state from its
  output stream and resumes every input right after the last position its output
  records: UBSCore's events record the command offset they answer (``input_offset``)
  and the engine seq they settle (``engine_seq``); an engine's outputs record the
  balance.events seq that caused them (``input_seq``). Positions by seq are found with
  ``seek_seq`` (a search: transaction markers leave holes in Kafka offsets).
* One output batch is one atomic append (a file-log batch, a Kafka transaction). A crash
  before it loses the batch, which the restart recomputes; after it, the restart skips
  the batch's inputs.
* Before an append the output must end where the service left it, with no transaction
  of anyone else open on it (the last stable offset equal to the end); after it, exactly
  this batch must sit between the old end and the new one. Anything else is another
  writer, and the service stops naming it instead of forking the stream.
* Every command of balance.operations is answered once, in order: UBSCore refuses to
  resume where its last answers do not match the commands log (an answer at an offset
  holding no command, or a command skipped between two answers).
* Given a snapshot directory (``ledger.app.snapshots``), UBSCore writes a snapshot every
  ``snapshot_every`` events and starts from the newest one the log confirms, replaying
  only the tail; the positions it resumes from are part of the snapshot's state.

A broker or database that cannot be reached is retried with a doubling pause
(``RETRY_PAUSE_MS_FIRST`` .. ``RETRY_PAUSE_MS_MAX``), each retry logged; a retry
rebuilds the service from its output (the outcome of the failed append is read, never
guessed). After ``OUTAGE_S_MAX_DEFAULT`` seconds of failures the service gives up with
``ServiceError`` naming what it waited for. A corrupt record, a sequence error or a
fenced writer is never retried.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from ledger.app.snapshots import SNAPSHOT_EVERY_EVENTS_DEFAULT, SavedSnapshot, SnapshotDir, record_digest
from ledger.app.streams import Streams, seek_seq
from ledger.logs.base import CorruptRecordError, Log, LogError, LogMissingError, WriterFencedError, scan
from ledger.protocol.codec import COMMANDS, EVENTS, OUTPUTS, DecodeError
from ledger.protocol.events import CancelRequested, OrderAccepted, Rejected, SymbolListed
from ledger.protocol.outputs import EngineOutput
from ledger.protocol.reasons import Reason
from ledger.rebuild import replay
from ledger.ubscore import LedgerError, SequenceError, UBSCore
from ledger.ubscore.state import SnapshotError, command_user, fingerprint
from matching.engine import EngineError, MatchingEngine

log = logging.getLogger("ledger.services")

# Inputs per output batch (commands and engine outputs together for UBSCore; events for
# an engine): one append, one transaction. Bigger batches amortise the commit.
BATCH_INPUTS_DEFAULT = 500
# How long a batch may wait to fill once its first input is in: the latency an input can
# gain from batching. 0 takes what is there.
BATCH_WAIT_MS_DEFAULT = 2
# A service with nothing to read polls this often.
IDLE_POLL_MS = 2
# Retries of an unreachable broker or database: the pause doubles from the first to the
# largest; after OUTAGE_S_MAX_DEFAULT seconds without a successful step the service
# gives up.
RETRY_PAUSE_MS_FIRST = 100
RETRY_PAUSE_MS_MAX = 5_000
OUTAGE_S_MAX_DEFAULT = 300.0
# How long an output may hold an open transaction of someone else (its last stable
# offset behind its end) before the service gives up: longer than Kafka's default
# transaction timeout (60 s), after which the broker aborts it.
STABLE_WAIT_S_MAX = 90.0
# The batch summary line (rates, lag per input, position) is logged this often.
SUMMARY_EVERY_S_DEFAULT = 5.0
# Events read back from the end of balance.events to find the last answers (doubling).
ANSWER_SCAN_FIRST = 64


class ServiceError(LedgerError):
    """A service cannot go on: the message says what it found or waited for."""


def _seq_of_event(raw: bytes, where: str) -> int:
    seq: int = EVENTS.decode(raw, where).seq
    return seq


def _seq_of_output(raw: bytes, where: str) -> int:
    seq: int = OUTPUTS.decode(raw, where).seq
    return seq


def wait_stable(streams: Streams, output: Log, limit_s: float = STABLE_WAIT_S_MAX) -> int:
    """Wait until no transaction is open on ``output`` (its last stable offset equals its
    end) and return the end. Records up to the end may be committed yet invisible to
    read_committed readers while one is open: replaying or appending then would miss
    them. Gives up with ``ServiceError`` after ``limit_s``."""
    started = time.monotonic()
    reported = 0.0
    while True:
        stable, end = streams.stable(output)
        if stable >= end:
            return end
        waited = time.monotonic() - started
        if waited > limit_s:
            raise ServiceError(
                f"{output.name}: last stable offset {stable} behind the end {end} for {waited:.0f} s "
                "(a transaction another producer left open): not appending"
            )
        if waited - reported >= 5 or reported == 0:
            log.warning(
                "%s: last stable offset %d behind the end %d (an open transaction); waiting", output.name, stable, end
            )
            reported = waited or 0.001
        time.sleep(0.1)


def append_checked(streams: Streams, output: Log, records: list[bytes], expected_end: int) -> int:
    """Append ``records`` as one batch to ``output``, which this service alone writes and
    left at ``expected_end``; return the new end. Refuses to append while someone else's
    records or open transaction are there, and after the append checks that exactly
    this batch (and its commit marker) lies between the old end and the new one."""
    end = wait_stable(streams, output)
    if end != expected_end:
        raise SequenceError(
            f"{output.name} grew from offset {expected_end} to {end} behind this service's back: "
            "another writer; stopping rather than forking the stream"
        )
    if not records:
        return end  # nothing appended; the end is the one just checked
    output.append(records)
    placed = getattr(output, "last_append", None)
    if placed is None:
        return output.end_offset()  # a file log: its lock keeps every other writer out
    # Kafka: a plain producer's record can land between the end check and the commit.
    # The delivery reports give each record's offset; with the end seen after the
    # commit they show whether this batch alone lies between the old end and the new.
    foreign = placed.foreign_offset(end)
    if foreign is not None:
        inside = foreign < end + len(records)
        raise SequenceError(
            f"{output.name}: a record of another writer at offset {foreign}{'' if inside else ' or after'}, "
            f"{'inside' if inside else 'next to'} this service's batch (offsets {end}..{placed.offsets[-1]}, "
            f"end now {placed.end}); stopping rather than forking the stream"
        )
    new_end = placed.end
    return new_end


class _Input:
    """One input stream and where the service reads it next."""

    __slots__ = ("log", "next_offset", "pending", "label", "_poll")

    def __init__(self, log: Log, next_offset: int, label: str) -> None:
        self.log = log
        self._poll: Callable[[int, int], Any] = getattr(log, "poll", None) or log.read
        self.next_offset = next_offset
        self.pending: list[tuple[int, bytes]] = []
        self.label = label

    def fill(self, room: int) -> int:
        """Read up to ``room`` more records into ``pending``; return how many."""
        if room <= 0:
            return 0
        start = self.pending[-1][0] + 1 if self.pending else self.next_offset
        # A Kafka log's poll takes what has arrived, without a round trip to the broker.
        batch = self._poll(start, room)
        if batch.values:
            self.pending.extend(zip(batch.offsets, batch.values, strict=True))
        elif batch.next_offset > start and not self.pending:
            self.next_offset = batch.next_offset  # only markers: move past them
        return len(batch.values)

    def lag(self) -> int:
        """Offsets between the read position and the end (markers count too)."""
        return max(self.log.end_offset() - self.next_offset, 0)


def _gather(inputs: Sequence[_Input], limit: int, wait_ms: float) -> int:
    """Fill the inputs' pending records up to ``limit`` in all, waiting at most
    ``wait_ms`` after the first record arrived for the batch to fill."""
    total = sum(len(i.pending) for i in inputs)
    for i in inputs:
        total += i.fill(limit - total)
    if total == 0 or total >= limit or wait_ms <= 0:
        return total
    deadline = time.monotonic() + wait_ms / 1000
    while total < limit:
        pause = deadline - time.monotonic()
        if pause <= 0:
            break
        time.sleep(min(pause, IDLE_POLL_MS / 1000))
        for i in inputs:
            total += i.fill(limit - total)
    return total


class Counters(msgspec.Struct):
    """What a service did since it started (the summary line and the metrics)."""

    inputs: int = 0
    outputs: int = 0
    batches: int = 0
    retries: int = 0
    batch_seconds: float = 0.0


def answers(event: Any, record: bytes) -> bool:
    """Whether ``event`` is an answer to the command ``record`` (its bytes in
    balance.operations): the same request and fingerprint, the same refused command, or
    for a malformed record the same size and digest."""
    if type(event) is Rejected and event.command is None:
        return event.record_bytes == len(record) and event.record_digest == _digest(record)
    try:
        command = COMMANDS.decode(record)
    except DecodeError:
        return False
    if type(event) is Rejected:
        return bool(event.command == command)
    if getattr(command, "request_id", None) != event.request_id:
        return False
    if getattr(event, "user", command_user(command)) != command_user(command):
        return False
    try:
        return fingerprint(command) == fingerprint(event)
    except TypeError:
        return False


def _digest(record: bytes) -> str:
    return hashlib.blake2b(record, digest_size=16).hexdigest()


def last_answers(events: Log, count: int = 2) -> list[Any]:
    """The last ``count`` events of ``events`` that answer a command (newest first)."""
    end = events.end_offset()
    span = ANSWER_SCAN_FIRST
    while True:
        start = max(0, end - span)
        found: list[Any] = []
        for batch in scan(events, start, end):
            for offset, raw in zip(batch.offsets, batch.values, strict=True):
                event = EVENTS.decode(raw, f"{events.name} offset {offset}")
                if getattr(event, "input_offset", -1) >= 0:
                    found.append(event)
        if len(found) >= count or start == 0:
            return found[::-1][:count]
        span *= 4


# -- UBSCore ----------------------------------------------------------------------------


class UBSCoreService:
    """UBSCore between balance.operations plus every symbol's engine outputs and
    balance.events. One ``step`` reads a batch of inputs, answers the commands, settles
    the outputs and appends the events as one batch."""

    name = "ubscore"

    def __init__(
        self,
        streams: Streams,
        batch_inputs: int = BATCH_INPUTS_DEFAULT,
        batch_wait_ms: float = BATCH_WAIT_MS_DEFAULT,
        snapshots: SnapshotDir | None = None,
        snapshot_every: int = SNAPSHOT_EVERY_EVENTS_DEFAULT,
    ) -> None:
        if batch_inputs < 1:
            raise ValueError(f"batch_inputs {batch_inputs} must be at least 1")
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every {snapshot_every} must be at least 1")
        self.streams = streams
        self.batch_inputs = batch_inputs
        self.batch_wait_ms = batch_wait_ms
        self.snapshots = snapshots
        self.snapshot_every = snapshot_every
        self.counters = Counters()
        self.core: UBSCore | None = None
        self._events: Log | None = None
        self._commands: _Input | None = None
        self._outputs: dict[str, _Input] = {}
        self._end = 0
        self._saved_seq = 0

    def open(self) -> None:
        """Rebuild the state from balance.events (from the newest snapshot it confirms,
        if given a snapshot directory) and place every input."""
        streams = self.streams
        events = self._events = streams.events(writer=True)
        claim = getattr(events, "producer", None)
        if claim is not None:
            # Kafka: claim the transactional id first. That fences an older instance and
            # ends the transaction it left open, which would hold back every
            # read_committed read of the topic (and so this replay).
            claim()
        wait_stable(streams, events)
        core = self.core = self._restore(events)
        self._end = events.end_offset()
        streams.create_inputs()  # after the replay: a log that fails it is left as it was
        commands = streams.commands()
        self._check_resume(commands, events, core)
        self._commands = _Input(commands, core.state.last_input_offset + 1, "commands")
        self._outputs = {}
        for symbol in sorted(core.state.symbols):
            self._follow(symbol)
        log.info(
            "ubscore: resumed at seq %d; commands from offset %d; %d symbols",
            core.state.seq,
            self._commands.next_offset,
            len(self._outputs),
        )

    def _restore(self, events: Log) -> UBSCore:
        """The newest snapshot the log confirms, with the tail after it; else the whole
        log. A snapshot passed over is logged with why."""
        if self.snapshots is not None:
            for path in self.snapshots.files():
                started = time.perf_counter()
                try:
                    saved = self.snapshots.read(path)
                    if saved.stream != events.name:
                        raise SnapshotError(f"taken on {saved.stream}, not {events.name}")
                    offset = self._locate(events, saved)
                    core = replay(events, snapshot=saved.snapshot, start_offset=offset + 1)
                except SnapshotError as error:
                    log.warning("ubscore: snapshot %s passed over, the log is the truth: %s", path.name, error)
                    self.snapshots.set_aside(path)
                    continue
                except LedgerError as error:
                    # The tail does not replay onto it: the whole log decides (and fails
                    # the same way if the fault is in the log, not in the snapshot).
                    log.warning(
                        "ubscore: the tail after %s does not replay (%s); replaying the whole log", path.name, error
                    )
                    break
                log.info(
                    "ubscore: state from %s (seq %d), then %d events of the tail, in %.2f s",
                    path.name,
                    saved.seq,
                    core.state.seq - saved.seq,
                    time.perf_counter() - started,
                )
                self._saved_seq = saved.seq
                return core
        self._saved_seq = 0
        return replay(events)

    @staticmethod
    def _locate(events: Log, saved: SavedSnapshot) -> int:
        """The offset of the record the snapshot was taken after, checked by digest."""
        offset = seek_seq(events, saved.seq, _seq_of_event)
        batch = events.read(offset, 1)
        if not batch.values:
            raise SnapshotError(f"seq {saved.seq} is beyond the end of {events.name}")
        where = f"{events.name} offset {batch.offsets[0]}"
        found = _seq_of_event(bytes(batch.values[0]), where)
        if found != saved.seq:
            raise SnapshotError(f"{events.name} holds no seq {saved.seq} ({where} has seq {found})")
        if record_digest(bytes(batch.values[0])) != saved.record_digest:
            raise SnapshotError(
                f"{where} (seq {saved.seq}) is not the record it was taken after: "
                "a snapshot of another stream"
            )
        return batch.offsets[0]

    def _save_snapshot(self, last_record: bytes) -> None:
        """Write a snapshot of the state (just appended, so the log holds it). A failure
        is logged and does not stop the service: the log is the truth."""
        core, snapshots, events = self.core, self.snapshots, self._events
        assert core is not None and snapshots is not None and events is not None
        seq = core.state.seq
        self._saved_seq = seq  # the next try comes after another interval, not every batch
        started = time.perf_counter()
        try:
            path = snapshots.save(events.name, core.snapshot(), seq, last_record)
        except OSError as error:
            log.warning("ubscore: snapshot at seq %d not written: %s", seq, error.strerror or error)
            return
        log.info("ubscore: snapshot %s written in %.2f s", path.name, time.perf_counter() - started)

    def _follow(self, symbol: str) -> None:
        assert self.core is not None
        output = self.streams.outputs(symbol)
        settled = self.core.state.last_engine_seq.get(symbol, 0)
        start = seek_seq(output, settled + 1, _seq_of_output)
        self._outputs[symbol] = _Input(output, start, f"engine.outputs/{symbol}")

    @staticmethod
    def _check_resume(commands: Log, events: Log, core: UBSCore) -> None:
        last = core.state.last_input_offset
        if last < 0:
            return
        answered = last_answers(events)
        if not answered or answered[0].input_offset != last:
            raise ServiceError(f"{events.name}: the state's last command offset {last} is not its last answer's")
        batch = commands.read(last, 1)
        if not batch.values or batch.offsets[0] != last:
            raise ServiceError(
                f"{events.name} answers a command at offset {last} of {commands.name}, which holds no record there: "
                "refusing to resume past commands nobody answered"
            )
        if not answers(answered[0], bytes(batch.values[0])):
            raise ServiceError(
                f"{events.name} seq {answered[0].seq} does not answer the command at offset {last} of "
                f"{commands.name}: refusing to resume"
            )
        if len(answered) > 1:
            before = answered[1].input_offset
            following = commands.read(before + 1, 1)
            if following.offsets and following.offsets[0] != last:
                raise ServiceError(
                    f"{commands.name} offset {following.offsets[0]} has no answer: {events.name} answers offset "
                    f"{before}, then {last}; refusing to resume past a skipped command"
                )

    def close(self) -> None:
        """Close every log (the state is rebuilt by the next ``open``)."""
        for item in [self._commands, *self._outputs.values()]:
            if item is not None:
                _close_quietly(item.log)
        if self._events is not None:
            _close_quietly(self._events)
        self._events = None
        self._commands = None
        self._outputs = {}
        self.core = None

    def lags(self) -> dict[str, int]:
        """Per input, how far the read position is behind its end."""
        found: dict[str, int] = {}
        if self._commands is not None:
            found["commands"] = self._commands.lag()
        for item in self._outputs.values():
            found[item.label] = item.lag()
        return found

    def position(self) -> int:
        """The seq of the last event written."""
        return self.core.state.seq if self.core is not None else 0

    def step(self) -> int:
        """Handle one batch; return how many inputs it held (0: nothing to read)."""
        core, events, commands = self.core, self._events, self._commands
        assert core is not None and events is not None and commands is not None, "open() first"
        inputs = [self._outputs[s] for s in sorted(self._outputs)] + [commands]
        total = _gather(inputs, self.batch_inputs, self.batch_wait_ms)
        if total == 0:
            return 0
        started = time.perf_counter()
        produced: list[Any] = []
        listed: list[str] = []
        # Engine outputs first (they release funds), then commands; the order is
        # recorded in the events, so a replay needs nothing else.
        for symbol, item in zip(sorted(self._outputs), inputs, strict=False):
            for offset, raw in item.pending:
                output: EngineOutput = OUTPUTS.decode(raw, f"{item.log.name} offset {offset}")
                if output.symbol != symbol:
                    raise ServiceError(f"{item.log.name} offset {offset}: an output of {output.symbol}")
                produced.extend(core.settle(output))
        for offset, raw in commands.pending:
            answer = core.execute_record(raw, offset)
            produced.extend(answer)
            if type(answer[0]) is SymbolListed:
                listed.append(answer[0].symbol.name)
        for symbol in listed:
            # Every reader that learns of the symbol must find its stream.
            self.streams.create_outputs(symbol)
        records = [EVENTS.encode(e) for e in produced]
        self._end = append_checked(self.streams, events, records, self._end)
        for item in inputs:
            if item.pending:
                item.next_offset = item.pending[-1][0] + 1
                item.pending = []
        for symbol in listed:
            self._follow(symbol)
        if self.snapshots is not None and records and core.state.seq - self._saved_seq >= self.snapshot_every:
            self._save_snapshot(records[-1])
        counters = self.counters
        counters.inputs += total
        counters.outputs += len(produced)
        counters.batches += 1
        counters.batch_seconds += time.perf_counter() - started
        return total


# -- matching engines -------------------------------------------------------------------


class _Hosted:
    __slots__ = ("engine", "log", "end", "pending")

    def __init__(self, engine: MatchingEngine, log: Log, end: int) -> None:
        self.engine = engine
        self.log = log
        self.end = end
        self.pending: list[EngineOutput] = []


class EngineService:
    """The matching engines of ``symbols`` (None: every symbol, including those listed
    while it runs) between balance.events and each symbol's output stream."""

    name = "engine"

    def __init__(
        self,
        streams: Streams,
        symbols: Sequence[str] | None = None,
        batch_inputs: int = BATCH_INPUTS_DEFAULT,
        batch_wait_ms: float = BATCH_WAIT_MS_DEFAULT,
    ) -> None:
        if batch_inputs < 1:
            raise ValueError(f"batch_inputs {batch_inputs} must be at least 1")
        self.streams = streams
        self.symbols = None if symbols is None else sorted(set(symbols))
        self.batch_inputs = batch_inputs
        self.batch_wait_ms = batch_wait_ms
        self.counters = Counters()
        self._hosted: dict[str, _Hosted] = {}
        self._events: _Input | None = None
        self._next_seq = 1

    def open(self) -> None:
        """Rebuild every hosted book from its own stream and place the input."""
        self._hosted = {}
        wanted = self.symbols if self.symbols is not None else self.streams.output_symbols()
        for symbol in wanted:
            self._host(symbol)
        events = self.streams.events()
        # Each book resumes after the last input its stream records; the input is read
        # from the earliest of them (a book skips what it has already seen).
        self._next_seq = min((h.engine.last_input_seq for h in self._hosted.values()), default=0) + 1
        self._events = _Input(events, seek_seq(events, self._next_seq, _seq_of_event), "balance.events")
        log.info(
            "engine: hosting %s; balance.events from seq %d",
            ", ".join(self._hosted) or "(none yet)",
            self._next_seq,
        )

    def _host(self, symbol: str) -> None:
        output = self.streams.outputs(symbol, writer=True)
        claim = getattr(output, "producer", None)
        if claim is not None:
            claim()  # fence an older instance hosting this symbol
        end = wait_stable(self.streams, output)
        engine = MatchingEngine(symbol)
        for batch in scan(output, 0, end):
            for offset, raw in zip(batch.offsets, batch.values, strict=True):
                engine.apply(OUTPUTS.decode(raw, f"{output.name} offset {offset}"))
        self._hosted[symbol] = _Hosted(engine, output, end)

    def close(self) -> None:
        """Close every log."""
        for hosted in self._hosted.values():
            _close_quietly(hosted.log)
        if self._events is not None:
            _close_quietly(self._events.log)
        self._hosted = {}
        self._events = None

    def lags(self) -> dict[str, int]:
        return {} if self._events is None else {"balance.events": self._events.lag()}

    def position(self) -> int:
        """The seq of the last balance event read."""
        return self._next_seq - 1

    def step(self) -> int:
        """Handle one batch of balance.events; return how many events it held."""
        source = self._events
        assert source is not None, "open() first"
        total = _gather([source], self.batch_inputs, self.batch_wait_ms)
        if total == 0:
            return 0
        started = time.perf_counter()
        hosted = self._hosted
        expected = self._next_seq
        for offset, raw in source.pending:
            event = EVENTS.decode(raw, f"{source.log.name} offset {offset}")
            if event.seq != expected:
                if event.seq < expected:
                    continue  # before the position sought (a search lands at or before it)
                raise SequenceError(
                    f"{source.log.name} offset {offset}: seq {event.seq} where {expected} was due "
                    f"(missing {expected}..{event.seq - 1})"
                )
            expected += 1
            kind = type(event)
            if kind is OrderAccepted or kind is CancelRequested:
                book = hosted.get(event.symbol)
            elif kind is SymbolListed:
                name = event.symbol.name
                book = hosted.get(name)
                if book is None and self.symbols is None:
                    self._host(name)  # UBSCore made its stream before listing it
                    book = hosted[name]
            else:
                continue
            if book is None or event.seq <= book.engine.last_input_seq:
                continue
            book.pending.extend(book.engine.handle(event))
        written = 0
        for symbol in sorted(hosted):
            book = hosted[symbol]
            if book.pending:
                records = [OUTPUTS.encode(o) for o in book.pending]
                book.end = append_checked(self.streams, book.log, records, book.end)
                written += len(records)
                book.pending = []
        source.next_offset = source.pending[-1][0] + 1
        source.pending = []
        self._next_seq = expected
        counters = self.counters
        counters.inputs += total
        counters.outputs += written
        counters.batches += 1
        counters.batch_seconds += time.perf_counter() - started
        return total


# -- the projector ----------------------------------------------------------------------

class ProjectService:
    """The settlement projector following balance.events and the output stream of every
    symbol listed there into a store: a symbol is followed once its ``SymbolListed`` is
    projected (so one listed while it runs is picked up), never because a stream of its
    name exists. ``store`` makes a store (called again after an outage: a new projector resumes from the store's
    checkpoints)."""

    name = "project"

    def __init__(self, streams: Streams, store: Callable[[], Any], state_every_events: int | None = None) -> None:
        self.streams = streams
        self.make_store = store
        self.state_every_events = state_every_events
        self.counters = Counters()
        self._projector: Any = None
        self._store: Any = None
        self._listed = 0
        self._written = 0

    def _sources(self, known: set[str]) -> list[Any]:
        """The streams to project that are not in ``known``: balance.events, and the
        output stream of every symbol whose ``SymbolListed`` it has projected."""
        from ledger.logs import layout
        from settlement.projector import BALANCE, ENGINE, Source

        found = []
        if layout.EVENTS not in known:
            found.append(Source(layout.EVENTS, self.streams.events(), BALANCE))
        listed = self._projector.listed_symbols() if self._projector is not None else set()
        for symbol in sorted(listed):
            name = layout.output_stream(symbol)
            if name not in known:
                found.append(Source(name, self.streams.outputs(symbol), ENGINE, symbol))
        self._listed = len(listed)
        return found

    def open(self) -> None:
        from settlement.projector import Projector

        sources = self._sources(set())
        try:
            self._store = self.make_store()
            options: dict[str, Any] = {}
            if self.state_every_events is not None:
                options["state_every_events"] = self.state_every_events
            self._projector = Projector(self._store, sources, discover=self._sources, **options)
        except BaseException:
            for source in sources:
                _close_quietly(source.log)
            raise
        self._written = 0
        self._projector.discover_streams()  # the symbols its saved state knows

    def close(self) -> None:
        if self._projector is not None:
            for stream in self._projector.streams:
                _close_quietly(stream.source.log)
        if self._store is not None:
            try:
                self._store.close()
            except Exception as error:  # noqa: BLE001 (closing after a failure must not mask it)
                log.debug("closing the store: %s", error)
        self._projector = None
        self._store = None

    def lags(self) -> dict[str, int]:
        if self._projector is None:
            return {}
        return {s.source.stream: max(s.source.log.end_offset() - s.next_offset, 0) for s in self._projector.streams}

    def position(self) -> int:
        if self._projector is None:
            return 0
        return sum(s.applied for s in self._projector.streams)

    def open_faults(self) -> int:
        """How many sequence faults the store holds open."""
        return 0 if self._store is None else len(self._store.faults(open_only=True))

    def step(self) -> int:
        projector = self._projector
        assert projector is not None, "open() first"
        if len(projector.listed_symbols()) != self._listed:  # a SymbolListed projected
            projector.discover_streams()
        started = time.perf_counter()
        report = projector.run(follow=False)
        if not report.ok:
            halted = [r for r in report.streams if r.halted]
            if len(halted) == len(report.streams):
                first = halted[0]
                detail = first.fault.detail if first.fault is not None else "halted"
                raise ServiceError(f"project: every stream halted; {first.stream}: {detail}")
        total = sum(r.written for r in report.streams)  # since open(): the reports accumulate
        written = total - self._written
        self._written = total
        self._store.flush()
        counters = self.counters
        counters.inputs += written
        counters.outputs += written
        if written:
            counters.batches += 1
            counters.batch_seconds += time.perf_counter() - started
        return written


def _close_quietly(item: Log) -> None:
    try:
        item.close()
    except Exception as error:  # noqa: BLE001 (closing after a failure must not mask it)
        log.debug("closing %s: %s", item.name, error)


# -- running ----------------------------------------------------------------------------


def is_retriable(error: BaseException) -> bool:
    """An outage worth waiting out: a log or store that cannot be reached. Never a
    corrupt record, a sequence fault, a fenced writer or a failed check."""
    from settlement.store import StoreError

    if isinstance(error, (CorruptRecordError, WriterFencedError, DecodeError)):
        return False
    if isinstance(error, LogMissingError):
        return True  # an input its writer has not made yet
    if isinstance(error, LogError):
        from ledger.logs.kafka import KafkaConfigError

        # A broker that cannot be reached; a file log's other errors are damage or
        # permissions, which waiting does not mend.
        return str(error).startswith("kafka") and not isinstance(error, KafkaConfigError)
    if type(error).__module__.startswith("cassandra"):
        return True  # the CQL driver's own (NoHostAvailable, timeouts): the database is away
    if type(error).__name__ == "KafkaException" and error.args:
        # A client call the log did not wrap: an outage unless the client says it is fatal.
        inner = error.args[0]
        return not (hasattr(inner, "fatal") and inner.fatal())
    return isinstance(error, StoreError)


class Stopper:
    """A stop request (SIGTERM, SIGINT, a test): services finish the batch in hand."""

    def __init__(self) -> None:
        self.requested = False

    def stop(self, *_: object) -> None:
        self.requested = True


def run_services(
    services: Sequence[Any],
    stopper: Stopper,
    idle_exit_s: float = 0.0,
    outage_s_max: float = OUTAGE_S_MAX_DEFAULT,
    summary_every_s: float = SUMMARY_EVERY_S_DEFAULT,
    metrics: Any = None,
) -> None:
    """Run ``services`` in turn in this thread until ``stopper`` is set (or, with
    ``idle_exit_s``, until none had anything to do for that long). Outages are retried
    (see the module's notes); a service that fails for ``outage_s_max`` raises
    ``ServiceError``. Errors that are not outages propagate at once. ``metrics`` (a
    ``ledger.app.metrics.ServiceMetrics``) is brought up to date after every round."""
    opened = [False] * len(services)
    failing_since: list[float | None] = [None] * len(services)
    pause_ms = [float(RETRY_PAUSE_MS_FIRST)] * len(services)
    retry_at = [0.0] * len(services)
    idle_since = time.monotonic()
    summary_at = time.monotonic()
    marks = [(0, 0)] * len(services)
    try:
        while not stopper.requested:
            busy = False
            now = time.monotonic()
            for i, service in enumerate(services):
                if stopper.requested:
                    break
                if now < retry_at[i]:
                    continue
                try:
                    if not opened[i]:
                        service.open()
                        opened[i] = True
                    handled = service.step()
                except Exception as error:
                    if not is_retriable(error):
                        raise
                    opened[i] = False
                    service.close()
                    service.counters.retries += 1
                    first = failing_since[i]
                    if first is None:
                        first = failing_since[i] = time.monotonic()
                    waited = time.monotonic() - first
                    if waited >= outage_s_max:
                        raise ServiceError(
                            f"{service.name}: gave up after {waited:.0f} s of retries (limit {outage_s_max:.0f} s); "
                            f"last: {error}"
                        ) from None
                    log.warning(
                        "%s: %s; retry %d in %.1f s", service.name, error, service.counters.retries, pause_ms[i] / 1000
                    )
                    retry_at[i] = time.monotonic() + pause_ms[i] / 1000
                    pause_ms[i] = min(pause_ms[i] * 2, RETRY_PAUSE_MS_MAX)
                    busy = True  # an outage is not idleness
                    continue
                if failing_since[i] is not None:
                    log.warning("%s: serving again after %.1f s", service.name, time.monotonic() - failing_since[i])
                failing_since[i] = None
                pause_ms[i] = RETRY_PAUSE_MS_FIRST
                if handled:
                    busy = True
            if metrics is not None:
                metrics.update(services, opened)
            now = time.monotonic()
            if summary_every_s and now - summary_at >= summary_every_s:
                for i, service in enumerate(services):
                    c = service.counters
                    seconds = now - summary_at
                    try:
                        lags = service.lags() if opened[i] else {}
                        position = service.position() if opened[i] else -1
                    except Exception as error:  # noqa: BLE001 (the next step reports an outage)
                        lags, position = {"unknown": -1}, -1
                        log.debug("%s: lags: %s", service.name, error)
                    log.info(
                        "%s: %.0f inputs/s, %.0f outputs/s, %d batches, retries %d, position %d, lag %s",
                        service.name,
                        (c.inputs - marks[i][0]) / seconds,
                        (c.outputs - marks[i][1]) / seconds,
                        c.batches,
                        c.retries,
                        position,
                        ", ".join(f"{k} {v}" for k, v in lags.items()) or "-",
                    )
                    marks[i] = (c.inputs, c.outputs)
                summary_at = now
            if busy:
                idle_since = now
                continue
            if idle_exit_s and now - idle_since >= idle_exit_s:
                return
            time.sleep(IDLE_POLL_MS / 1000)
    finally:
        for i, service in enumerate(services):
            if opened[i]:
                service.close()


__all__ = [
    "BATCH_INPUTS_DEFAULT",
    "BATCH_WAIT_MS_DEFAULT",
    "EngineError",
    "EngineService",
    "OUTAGE_S_MAX_DEFAULT",
    "Reason",
    "ServiceError",
    "Stopper",
    "UBSCoreService",
    "answers",
    "append_checked",
    "is_retriable",
    "last_answers",
    "run_services",
    "wait_stable",
]
