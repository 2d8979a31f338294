"""The whole exchange in one process: UBSCore and one matching engine per symbol, wired
over logs exactly as DESIGN.md draws it.

    commands --> balance.operations --> UBSCore --> balance.events --> engine(symbol)
                                          ^                               |
                                          +------ engine.outputs/<symbol> +

UBSCore validates each command and locks funds; only its ``OrderAccepted`` and
``CancelRequested`` reach an engine, so an engine never sees an order whose funds are not
locked. The engine's outputs go back to UBSCore, which settles trades and releases what
ended orders no longer need. Every record is written to its log before the batch call
returns; the logs alone rebuild every state (see ``verify``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import msgspec

from ledger.gctune import relaxed_gc
from ledger.logs.base import Log, scan
from ledger.protocol.codec import EVENTS, OUTPUTS, checked_command
from ledger.protocol.commands import Command
from ledger.protocol.events import BalanceEvent, CancelRequested, OrderAccepted, SymbolListed
from ledger.protocol.outputs import EngineOutput
from ledger.rebuild import replay
from ledger.ubscore import UBSCore
from matching.engine import MatchingEngine


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
                if isinstance(event, (OrderAccepted, CancelRequested)):
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
    compare with ``live_hashes`` if given."""
    problems: list[str] = []
    hashes: dict[str, str] = {}
    core = replay(events)
    hashes["ubscore"] = core.state_hash()
    problems.extend(f"conservation: {p}" for p in core.state.conservation_problems())
    for name in sorted(output_logs):
        log = output_logs[name]
        rebuilt = MatchingEngine(name)
        recorded: list[bytes] = []
        for batch in scan(log):
            for raw in batch.values:
                recorded.append(bytes(raw))
                rebuilt.apply(OUTPUTS.decode(raw, f"{log.name} offset {len(recorded) - 1}"))
        hashes[f"engine:{name}"] = rebuilt.state_hash()
        rerun = MatchingEngine(name)
        rerun_records: list[bytes] = []
        for batch in scan(events):
            for raw in batch.values:
                rerun_records.extend(OUTPUTS.encode(o) for o in rerun.handle(EVENTS.decode(raw)))
        if rerun_records != recorded:
            at = next(
                (i for i, (a, b) in enumerate(zip(rerun_records, recorded, strict=False)) if a != b),
                min(len(rerun_records), len(recorded)),
            )
            problems.append(
                f"engine {name}: re-running it over balance.events differs from its log at output "
                f"{at} ({len(rerun_records)} outputs re-run, {len(recorded)} recorded)"
            )
        if rerun.state_hash() != rebuilt.state_hash():
            problems.append(f"engine {name}: re-run state differs from the state rebuilt from outputs")
    if live_hashes is not None:
        for name, live in live_hashes.items():
            if hashes.get(name) != live:
                problems.append(f"{name}: replayed hash {hashes.get(name)} != live hash {live}")
    return RebuildReport(not problems, problems, hashes)


__all__ = ["Exchange", "RebuildReport", "verify"]
