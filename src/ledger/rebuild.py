"""Rebuild UBSCore's state from its log (balance.events), optionally from a snapshot,
and check that the log answers its command log (balance.operations) exactly.

``replay`` decodes every record strictly and applies it with ``evolve``, which re-checks
each event against the state: a gap, a duplicate, a malformed record or an event whose
balances do not add up stops the replay with an error naming the log and offset. A log
whose first event is not seq 1 (or not the snapshot's seq + 1) is refused, never
replayed partially.

``check_answers`` reads balance.operations beside balance.events and reports every
command with no answer or more than one, and every answer naming an offset that holds
no command, judged against the offsets the command log actually holds (Kafka's have
holes).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator

import msgspec
from msgspec.msgpack import Ext

from ledger.gctune import relaxed_gc
from ledger.logs.base import Log, scan
from ledger.progress import Progress
from ledger.protocol.codec import EVENTS
from ledger.protocol.events import BALANCE_EVENT_TYPES, BalanceEvent
from ledger.protocol.limits import READ_RECORDS_MAX
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
    start_offset: int | None = None,
) -> UBSCore:
    """Apply the events of ``log`` to ``reducer`` (default: a new UBSCore) and return it.

    With ``snapshot``, start from the verified snapshot state and apply only the events
    after its seq; ``start_offset``, if known, is an offset at or before the first of
    them (default: the snapshot's seq, which never lies past it). With ``until``, stop
    after the event with that seq. ``progress`` draws a progress line on stderr (None:
    only if stderr is a terminal). ``observe``, if given, is called with each event
    right after it is applied, so other reducers of balance.events (the engines
    ``ledger.app.exchange.verify`` re-runs) share this one read and decode of the log;
    an exception it raises stops the replay.
    """
    core, _count = _replay(log, reducer, snapshot, until, progress, observe, start_offset)
    return core


def _replay(
    log: Log,
    reducer: UBSCore | None,
    snapshot: bytes | None,
    until: int | None,
    progress: bool | None,
    observe: Callable[[BalanceEvent], object] | None = None,
    start_offset: int | None = None,
) -> tuple[UBSCore, int]:
    if snapshot is not None:
        core = UBSCore.from_snapshot(snapshot)
    else:
        core = reducer if reducer is not None else UBSCore()
    start_seq = core.state.seq
    # Offsets never run behind seqs (holes only push them ahead), so the event with
    # seq k + 1 is at offset k or later: start there and skip what is already applied.
    start_offset = min(start_seq if start_offset is None else start_offset, log.end_offset())
    bar = Progress(f"replay {log.name}", max(log.end_offset() - start_offset, 0), enabled=progress)
    decode_or_wide = EVENTS.decode_or_wide
    decode_wide = EVENTS.decode_wide
    decode_after = EVENTS.decode_after
    apply = core.apply
    applied = 0
    with relaxed_gc():
        try:
            for batch in scan(log, start_offset):
                offsets = batch.offsets
                for i, raw in enumerate(batch.values):
                    try:
                        event = decode_or_wide(raw)
                    except msgspec.MsgspecError as error:
                        # A big integer of schema 2 (decoded exactly) or a bad record (an
                        # error naming it).
                        event = decode_after(raw, f"{log.name} offset {offsets[i]}", error)
                    if type(event) is Ext:  # a record holding an integer beyond 64 bits
                        event = decode_wide(event, f"{log.name} offset {offsets[i]}")
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


# -- every command answered exactly once -------------------------------------------------

# How many problems a report lists (all are counted): enough to show the pattern, while
# a report over millions of unanswered commands stays small.
ANSWER_PROBLEMS_LISTED_MAX = 100
# How many of the latest answered offsets the check remembers, to tell a second answer
# of an earlier command from an answer merely out of order. Answers come in offset order,
# so a sound log needs none of them; the window bounds the check's memory.
ANSWERED_OFFSETS_REMEMBERED_MAX = READ_RECORDS_MAX

# The events that answer a command: exactly those that name its offset.
ANSWER_TYPES: frozenset[type] = frozenset(
    kind for kind in BALANCE_EVENT_TYPES if "input_offset" in kind.__struct_fields__  # type: ignore[attr-defined]
)

UNANSWERED = "unanswered"
ANSWERED_TWICE = "answered twice"
NO_SUCH_COMMAND = "no such command"
OUT_OF_ORDER = "out of order"


class AnswerProblem(msgspec.Struct, frozen=True):
    """One command not answered exactly once, or one answer that names no command.

    ``offset`` is the command's offset in the command log (for ``NO_SUCH_COMMAND`` the
    offset the answer names); ``seq`` is the answering event's (0 for ``UNANSWERED``).
    """

    kind: str
    offset: int
    seq: int
    detail: str


class AnswersReport(msgspec.Struct, frozen=True):
    """What ``check_answers`` found: counts of everything, the first problems listed."""

    commands_log: str
    events_log: str
    commands: int
    answers: int
    unanswered: int
    answered_twice: int
    no_such_command: int
    out_of_order: int
    problems: list[AnswerProblem]
    ok: bool

    @property
    def problems_total(self) -> int:
        """Every problem found, listed or not."""
        return self.unanswered + self.answered_twice + self.no_such_command + self.out_of_order


def _offsets(log: Log, until: int) -> Iterator[int]:
    for batch in scan(log, 0, until):
        yield from batch.offsets


class _AnswerCheck:
    """The merge of the command log's offsets with the answers' ``input_offset``s."""

    def __init__(self, commands: Log, commands_end: int) -> None:
        self.commands_name = commands.name
        self.commands_end = commands_end
        self.offsets = _offsets(commands, commands_end)
        self.next_command: int | None = next(self.offsets, None)
        self.command_count = 0 if self.next_command is None else 1
        # The latest answered offsets with the seq that answered each, oldest first.
        self.answered: dict[int, int] = {}
        self.answered_order: deque[int] = deque()
        self.last_offset = -1
        self.answer_count = 0
        self.listed: list[AnswerProblem] = []
        self.counts = dict.fromkeys((UNANSWERED, ANSWERED_TWICE, NO_SUCH_COMMAND, OUT_OF_ORDER), 0)

    def problem(self, kind: str, offset: int, seq: int, detail: str) -> None:
        self.counts[kind] += 1
        if len(self.listed) < ANSWER_PROBLEMS_LISTED_MAX:
            self.listed.append(AnswerProblem(kind, offset, seq, detail))

    def advance(self) -> None:
        self.next_command = next(self.offsets, None)
        self.command_count += self.next_command is not None

    def answer(self, offset: int, seq: int) -> None:
        """Event ``seq`` answers the command at ``offset``."""
        self.answer_count += 1
        if offset <= self.last_offset:
            first_seq = self.answered.get(offset)
            if first_seq is not None:
                detail = f"command at offset {offset} answered by seq {first_seq} and again by seq {seq}"
                self.problem(ANSWERED_TWICE, offset, seq, detail)
            else:
                detail = f"seq {seq} answers offset {offset} after an answer to offset {self.last_offset}"
                self.problem(OUT_OF_ORDER, offset, seq, detail)
            return
        self.unanswered_before(offset)
        if self.next_command == offset:
            self.answered[offset] = seq
            self.answered_order.append(offset)
            if len(self.answered_order) > ANSWERED_OFFSETS_REMEMBERED_MAX:
                del self.answered[self.answered_order.popleft()]
            self.advance()
        elif self.next_command is None and offset >= self.commands_end:
            where = f"past the end of {self.commands_name} (it ends at offset {self.commands_end})"
            self.problem(NO_SUCH_COMMAND, offset, seq, f"seq {seq} answers offset {offset}, {where}")
        else:
            where = f"where {self.commands_name} holds no record"
            self.problem(NO_SUCH_COMMAND, offset, seq, f"seq {seq} answers offset {offset}, {where}")
        self.last_offset = offset

    def unanswered_before(self, offset: int | None) -> None:
        """Every command before ``offset`` not answered yet has no answer (None: all)."""
        while self.next_command is not None and (offset is None or self.next_command < offset):
            self.problem(UNANSWERED, self.next_command, 0, f"command at offset {self.next_command} has no answer")
            self.advance()


def check_answers(commands: Log, events: Log, progress: bool | None = False) -> AnswersReport:
    """Check that ``events`` (balance.events, from seq 1) answers every record of
    ``commands`` (balance.operations, the same shard) exactly once, in offset order.

    An answer is an event with an ``input_offset`` (``ANSWER_TYPES``). Both logs are
    streamed once, side by side, up to the ends they had when the check began (the
    events' end is read first, so that no answer can name a command appended after the
    check looked); memory is bounded by ``ANSWERED_OFFSETS_REMEMBERED_MAX``. Reported,
    each with its offset: a command with no answer (``UNANSWERED``, including commands
    after the last answer), a command answered again (``ANSWERED_TWICE``), an answer
    naming an offset that holds no command, in a hole or past the end
    (``NO_SUCH_COMMAND``), and an answer to an offset before the previous answer's that
    the check no longer remembers answered (``OUT_OF_ORDER``). A record of ``events``
    that does not decode raises ``DecodeError`` naming it.

    >>> from ledger import Deposit, ListAsset, MemoryLog, UBSCore, Asset, COMMANDS, EVENTS
    >>> commands, events, core = MemoryLog("ops"), MemoryLog("events"), UBSCore()
    >>> for offset, c in enumerate([ListAsset(1, Asset("USDT", 6)), Deposit(7, 1, "USDT", 5)]):
    ...     _ = commands.append([COMMANDS.encode(c)])
    ...     _ = events.append([EVENTS.encode(e) for e in core.execute(c, offset)])
    >>> _ = commands.append([COMMANDS.encode(Deposit(7, 2, "USDT", 5))])  # never answered
    >>> report = check_answers(commands, events)
    >>> (report.ok, report.commands, report.answers, [p.detail for p in report.problems])
    (False, 3, 2, ['command at offset 2 has no answer'])
    """
    events_end = events.end_offset()
    check = _AnswerCheck(commands, commands.end_offset())
    decode_plain, decode_after = EVENTS.decode_plain, EVENTS.decode_after
    answer_types = ANSWER_TYPES
    bar = Progress(f"answers {events.name}", events_end, enabled=progress)
    try:
        for batch in scan(events, 0, events_end):
            for i, raw in enumerate(batch.values):
                try:
                    event = decode_plain(raw)
                except msgspec.MsgspecError as error:
                    event = decode_after(raw, f"{events.name} offset {batch.offsets[i]}", error)
                if type(event) in answer_types:
                    check.answer(event.input_offset, event.seq)  # type: ignore[union-attr]
            bar.advance(len(batch.values))
    finally:
        bar.close()
    check.unanswered_before(None)
    counts = check.counts
    return AnswersReport(
        commands_log=commands.name,
        events_log=events.name,
        commands=check.command_count,
        answers=check.answer_count,
        unanswered=counts[UNANSWERED],
        answered_twice=counts[ANSWERED_TWICE],
        no_such_command=counts[NO_SUCH_COMMAND],
        out_of_order=counts[OUT_OF_ORDER],
        problems=check.listed,
        ok=not any(counts.values()),
    )
