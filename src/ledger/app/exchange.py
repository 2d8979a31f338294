"""The whole exchange in one process: UBSCore and one matching engine per symbol, wired
over logs exactly as DESIGN.md draws it.

    commands --> balance.operations --> UBSCore --> balance.events --> engine(symbol)
                                          ^                               |
                                          +------ engine.outputs/<symbol> +

UBSCore validates each command and locks funds; only its ``OrderAccepted``,
``CancelRequested`` and ``AmendRequested`` reach an engine, so an engine never sees an order whose funds are not
locked. The engine's outputs go back to UBSCore, which settles trades and releases what
ended orders no longer need. Every record is written to its log before the batch call
returns; the logs alone rebuild every state (see ``verify``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import msgspec

from ledger.gctune import relaxed_gc
from ledger.logs.base import Log, ReadBatch, scan
from ledger.protocol.codec import EVENTS, OUTPUTS, checked_command
from ledger.protocol.commands import Command
from ledger.protocol.events import AmendRequested, BalanceEvent, CancelRequested, OrderAccepted, SymbolListed
from ledger.protocol.limits import READ_RECORDS_MAX
from ledger.protocol.outputs import EngineOutput
from ledger.rebuild import replay
from ledger.ubscore import UBSCore
from matching.book import BookError
from matching.engine import MatchingEngine

# Re-run engine outputs checked at a time against the log (see _EngineAudit): enough for
# each reducer to run a long stretch alone, few enough to hold (a few hundred KiB).
AUDIT_CHUNK_OUTPUTS = 4_096


class Exchange:
    """UBSCore plus engines, appending to ``operations``, ``events`` and one output log per
    symbol (``output_log(symbol)`` opens it)."""

    def __init__(self, operations: Log, events: Log, output_log: Callable[[str], Log]) -> None:
        if operations.end_offset() or events.end_offset():
            raise ValueError("Exchange starts on empty logs; resuming is the job of a runner")
        self.operations = operations
        self.events = events
        self.output_log = output_log
        self.outputs: dict[str, Log] = {}
        self.core = UBSCore()
        self.engines: dict[str, MatchingEngine] = {}
        self.event_count = 0
        self.output_count = 0

    @relaxed_gc()
    def submit(self, commands: Sequence[Command]) -> list[BalanceEvent]:
        """Run a batch of commands to completion (every trade settled, every ended order
        released) and append everything to the logs. Returns the balance events.

        Every command is checked against the schema first: one that breaks it raises
        ``CommandError`` naming the field, and nothing of the batch is written."""
        checked = [checked_command(c) for c in commands]
        first = self.operations.append([data for data, _ in checked])
        produced: list[BalanceEvent] = []
        outputs: dict[str, list[EngineOutput]] = {}
        core, engines = self.core, self.engines
        for i, (_, command) in enumerate(checked):
            # Events in seq order: settling an output only appends later seqs.
            pending = deque(core.execute_checked(command, first + i))
            while pending:
                event = pending.popleft()
                produced.append(event)
                symbol: str
                if isinstance(event, (OrderAccepted, CancelRequested, AmendRequested)):
                    symbol = event.symbol
                    engine = engines[symbol]
                elif isinstance(event, SymbolListed):
                    symbol = event.symbol.name
                    engine = engines[symbol] = MatchingEngine(symbol)
                    self.outputs[symbol] = self.output_log(symbol)
                else:
                    continue
                for output in engine.handle(event):
                    outputs.setdefault(symbol, []).append(output)
                    pending.extend(core.settle(output))
        self.events.append([EVENTS.encode(e) for e in produced])
        for symbol, records in outputs.items():
            if records:
                self.outputs[symbol].append([OUTPUTS.encode(o) for o in records])
        self.event_count += len(produced)
        self.output_count += sum(len(v) for v in outputs.values())
        return produced

    def state_hashes(self) -> dict[str, str]:
        """UBSCore's hash and each engine's, by name."""
        hashes = {"ubscore": self.core.state_hash()}
        for name in sorted(self.engines):
            hashes[f"engine:{name}"] = self.engines[name].state_hash()
        return hashes


class RebuildReport(msgspec.Struct):
    """The outcome of rebuilding every state from the logs and comparing."""

    ok: bool
    problems: list[str]
    replayed_hashes: dict[str, str]


def verify(events: Log, output_logs: dict[str, Log], live_hashes: dict[str, str] | None = None) -> RebuildReport:
    """Rebuild UBSCore from balance.events and each engine from its outputs; re-run each
    engine over balance.events and compare its outputs byte for byte; check conservation;
    compare with ``live_hashes`` if given.

    One pass over each log: balance.events is read and decoded once, by the UBSCore
    replay, which hands each event to the engines re-run on it; each engine's output log
    is read once, alongside, each recorded output compared with the re-run's output at
    the same position and applied to the rebuilt engine. Memory holds the states being
    rebuilt, one read batch of each log and at most a chunk of re-run outputs, never a
    whole log. A record that does not decode raises ``DecodeError`` naming its log and
    offset; everything else that fails is a problem in the report, naming the position:
    the first output where the re-run and the log differ, the offset of an output that
    does not rebuild, the seq of an event the re-run refuses."""
    problems: list[str] = []
    hashes: dict[str, str] = {}
    audits = {name: _EngineAudit(name, output_logs[name]) for name in sorted(output_logs)}
    core = replay(events, observe=_engine_feeder(audits))
    hashes["ubscore"] = core.state_hash()
    problems.extend(f"conservation: {p}" for p in core.state.conservation_problems())
    for name, audit in audits.items():
        problems.extend(audit.finish())
        hashes[f"engine:{name}"] = audit.rebuilt.state_hash()
    if live_hashes is not None:
        for name, live in live_hashes.items():
            if hashes.get(name) != live:
                problems.append(f"{name}: replayed hash {hashes.get(name)} != live hash {live}")
    return RebuildReport(not problems, problems, hashes)


def _engine_feeder(audits: dict[str, _EngineAudit]) -> Callable[[BalanceEvent], None]:
    """The replay's observer: each event an engine acts on, to that symbol's audit only
    (a listing to every audit, as each engine decides whether it is its own)."""
    everyone = list(audits.values())

    def feed(event: BalanceEvent) -> None:
        # Exact-type tests, as in MatchingEngine.handle: most events are for no engine.
        if type(event) is OrderAccepted or type(event) is CancelRequested or type(event) is AmendRequested:
            audit = audits.get(event.symbol)
            if audit is not None:
                audit.feed(event)
        elif type(event) is SymbolListed:
            for audit in everyone:
                audit.feed(event)

    return feed


class _EngineAudit:
    """One engine's checks, advanced together: the engine re-run over balance.events and
    the engine rebuilt from its own output log, the re-run's outputs compared byte for
    byte with the records at the same positions of the log.

    Outputs are checked a chunk at a time (``AUDIT_CHUNK_OUTPUTS``): each reducer then
    runs over many records in a row instead of taking turns record by record, which
    keeps its working set in the cache and measured faster."""

    __slots__ = ("name", "log", "rerun", "rebuilt", "pending", "batches", "batch", "at", "rerun_count",
                 "recorded_count", "difference_at", "rerun_failure", "rebuild_failure")

    def __init__(self, name: str, log: Log) -> None:
        self.name = name
        self.log = log
        self.rerun = MatchingEngine(name)
        self.rebuilt = MatchingEngine(name)
        self.pending: list[EngineOutput] = []  # re-run outputs not yet compared
        self.batches = scan(log)
        self.batch = ReadBatch([], [], 0)  # the output log's records being compared
        self.at = 0  # the next of them
        self.rerun_count = 0
        self.recorded_count = 0
        self.difference_at = -1  # the first position where the two streams differ
        # What stopped the re-run or the rebuild ("" while nothing has): a reducer that
        # raised once has no state left to trust, so it is fed no more.
        self.rerun_failure = ""
        self.rebuild_failure = ""

    def feed(self, event: BalanceEvent) -> None:
        """Re-run the engine on ``event``; check its outputs once a chunk is pending."""
        if self.rerun_failure:
            return
        try:
            outputs = self.rerun.handle(event)
        except BookError as error:
            self.rerun_failure = (
                f"engine {self.name}: re-running it over balance.events fails at seq {event.seq}: {error}"
            )
            return
        if outputs:
            self.pending += outputs
            if len(self.pending) >= AUDIT_CHUNK_OUTPUTS:
                self._check()

    def _check(self) -> None:
        """Compare the pending re-run outputs with the next records of the log."""
        encode = OUTPUTS.encode
        encoded = [encode(output) for output in self.pending]
        self.pending = []
        done = 0
        while done < len(encoded):
            recorded = self._take(len(encoded) - done)
            if not recorded:
                break  # the log ends first: finish() reports where
            if self.difference_at < 0 and recorded != encoded[done : done + len(recorded)]:
                self.difference_at = self.rerun_count + done + next(
                    i for i, data in enumerate(recorded) if data != encoded[done + i]
                )
            done += len(recorded)
        self.rerun_count += len(encoded)

    def _take(self, count_max: int) -> list[bytes]:
        """Up to ``count_max`` next records of the log (none at its end), each applied to
        the rebuilt engine."""
        if self.at == len(self.batch.values):
            batch = next(self.batches, None)
            if batch is None:
                return []
            self.batch, self.at = batch, 0
        start = self.at
        records = self.batch.values[start : start + count_max]
        self.at += len(records)
        self.recorded_count += len(records)
        if not self.rebuild_failure:
            self._rebuild(records, start)
        return records

    def _rebuild(self, records: list[bytes], start: int) -> None:
        decode, apply = OUTPUTS.decode_plain, self.rebuilt.apply
        for i, data in enumerate(records):
            try:
                output = decode(data)
            except msgspec.MsgspecError as error:
                where = f"{self.log.name} offset {self.batch.offsets[start + i]}"
                output = OUTPUTS.decode_after(data, where, error)
            try:
                apply(output)
            except BookError as error:
                offset = self.batch.offsets[start + i]
                self.rebuild_failure = f"engine {self.name}: its log does not rebuild at offset {offset}: {error}"
                return

    def finish(self) -> list[str]:
        """Check what is pending, read the rest of the log; return the problems found."""
        self._check()
        while self._take(READ_RECORDS_MAX):
            pass
        if self.difference_at < 0 and not self.rerun_failure and self.rerun_count != self.recorded_count:
            self.difference_at = min(self.rerun_count, self.recorded_count)
        problems = [failure for failure in (self.rerun_failure, self.rebuild_failure) if failure]
        if self.difference_at >= 0:
            problems.append(
                f"engine {self.name}: re-running it over balance.events differs from its log at output "
                f"{self.difference_at} ({self.rerun_count} outputs re-run, {self.recorded_count} recorded)"
            )
        failed = self.rerun_failure or self.rebuild_failure
        if not failed and self.rerun.state_hash() != self.rebuilt.state_hash():
            problems.append(f"engine {self.name}: re-run state differs from the state rebuilt from outputs")
        return problems


__all__ = ["Exchange", "RebuildReport", "verify"]
