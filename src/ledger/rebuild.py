"""Rebuild UBSCore's state from its log (balance.events), optionally from a snapshot.

``replay`` decodes every record strictly and applies it with ``evolve``, which re-checks
each event against the state: a gap, a duplicate, a malformed record or an event whose
balances do not add up stops the replay with an error naming the log and offset. A log
whose first event is not seq 1 (or not the snapshot's seq + 1) is refused, never
replayed partially.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from ledger.gctune import relaxed_gc
from ledger.logs.base import Log, scan
from ledger.progress import Progress
from ledger.protocol.codec import EVENTS
from ledger.protocol.events import BalanceEvent
from ledger.ubscore import SequenceError, UBSCore


class ReplaySummary(msgspec.Struct, frozen=True):
    """What a replay saw: counts, the final seq and hash, and per-asset totals."""

    log: str
    events: int
    first_seq: int
    final_seq: int
    state_hash: str
    totals: dict[str, dict[str, int]]
    conservation_problems: list[str]
    seconds: float
    events_per_second: float


def replay(
    log: Log,
    reducer: UBSCore | None = None,
    snapshot: bytes | None = None,
    until: int | None = None,
    progress: bool | None = False,
    observe: Callable[[BalanceEvent], object] | None = None,
) -> UBSCore:
    """Apply the events of ``log`` to ``reducer`` (default: a new UBSCore) and return it.

    With ``snapshot``, start from the verified snapshot state and apply only the events
    after its seq. With ``until``, stop after the event with that seq. ``progress``
    draws a progress line on stderr (None: only if stderr is a terminal). ``observe``,
    if given, is called with each event right after it is applied, so other reducers of
    balance.events (the engines ``ledger.app.exchange.verify`` re-runs) share this one
    read and decode of the log; an exception it raises stops the replay.
    """
    core, _count = _replay(log, reducer, snapshot, until, progress, observe)
    return core


def _replay(
    log: Log,
    reducer: UBSCore | None,
    snapshot: bytes | None,
    until: int | None,
    progress: bool | None,
    observe: Callable[[BalanceEvent], object] | None = None,
) -> tuple[UBSCore, int]:
    if snapshot is not None:
        core = UBSCore.from_snapshot(snapshot)
    else:
        core = reducer if reducer is not None else UBSCore()
    start_seq = core.state.seq
    # Offsets never run behind seqs (holes only push them ahead), so the event with
    # seq k + 1 is at offset k or later: start there and skip what is already applied.
    start_offset = min(start_seq, log.end_offset())
    bar = Progress(f"replay {log.name}", max(log.end_offset() - start_offset, 0), enabled=progress)
    decode_plain = EVENTS.decode_plain
    decode_after = EVENTS.decode_after
    apply = core.apply
    applied = 0
    with relaxed_gc():
        try:
            for batch in scan(log, start_offset):
                offsets = batch.offsets
                for i, raw in enumerate(batch.values):
                    try:
                        event = decode_plain(raw)
                    except msgspec.MsgspecError as error:
                        # A big integer (decoded exactly) or a bad record (an error naming it).
                        event = decode_after(raw, f"{log.name} offset {offsets[i]}", error)
                    seq = event.seq
                    if seq <= start_seq and applied == 0:
                        continue
                    if until is not None and seq > until:
                        return core, applied
                    try:
                        apply(event)
                    except SequenceError as error:
                        raise SequenceError(f"{log.name} offset {offsets[i]}: {error}") from None
                    applied += 1
                    if observe is not None:
                        observe(event)
                bar.advance(len(batch.values))
        finally:
            bar.close()
    return core, applied


def replay_summary(
    log: Log,
    snapshot: bytes | None = None,
    until: int | None = None,
    progress: bool | None = None,
) -> tuple[ReplaySummary, UBSCore]:
    """Replay ``log``; return its summary (what ``ledger replay`` prints) and the reducer."""
    started = time.perf_counter()
    core, count = _replay(log, None, snapshot, until, progress)
    seconds = time.perf_counter() - started
    state = core.state
    summary = ReplaySummary(
        log=log.name,
        events=count,
        first_seq=state.seq - count + 1 if count else state.seq,
        final_seq=state.seq,
        state_hash=core.state_hash(),
        totals=state.asset_totals(),
        conservation_problems=state.conservation_problems(),
        seconds=round(seconds, 6),
        events_per_second=round(count / seconds, 1) if seconds > 0 else 0.0,
    )
    return summary, core
