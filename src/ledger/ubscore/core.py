"""UBSCore, the user balance service core: the single writer of balances.

``decide(state, input)`` validates a command (or settles an engine output) against the
state and returns the events it produces, without changing the state. ``evolve(state,
event)`` applies one event. Both are deterministic: no clock, no randomness, no iteration
over anything whose order could differ between processes. ``UBSCore`` holds a state and
runs decide-then-evolve on the live path, evolve alone on replay.

Every command gets exactly one event: an acceptance or ``Rejected``. A rejected command
changes nothing but ``seq`` (and the request window, so a retry gets the same answer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from ledger.protocol.codec import COMMANDS, DecodeError, checked_command
from ledger.protocol.commands import Command
from ledger.protocol.events import BalanceEvent
from ledger.protocol.limits import COMMAND_BYTES_MAX
from ledger.protocol.outputs import EngineOutput
from ledger.ubscore.decision import decide_command, decide_output, reject_malformed
from ledger.ubscore.evolution import evolve, evolve_all
from ledger.ubscore.snapshots import restore, snapshot, state_hash
from ledger.ubscore.state import SequenceError, State


class UBSCore:
    """The reducer with its state: ``execute`` commands, ``settle`` engine outputs,
    ``apply`` events on replay.

    >>> from ledger.protocol import Asset, Deposit, ListAsset
    >>> core = UBSCore()
    >>> [e.seq for e in core.execute(ListAsset(1, Asset("USDT", 6)), input_offset=0)]
    [1]
    >>> core.execute(Deposit(user=7, request_id=1, asset="USDT", amount=5_000_000), 1)[0].available
    5000000
    """

    def __init__(self, state: State | None = None) -> None:
        self.state = state if state is not None else State()
        # Per symbol, the last engine seq settled here, counting outputs that produced no
        # event (not part of the replayed state; after a restart those are re-read,
        # harmlessly). The state's last_engine_seq is what the events record; the
        # position of a symbol's stream is the larger of the two.
        self.engine_cursor: dict[str, int] = {}

    def execute(self, command: Command, input_offset: int) -> list[BalanceEvent]:
        """decide + evolve for one command; returns its one event. A command that breaks
        the schema raises ``CommandError`` naming the field, and changes nothing."""
        return self.execute_checked(checked_command(command)[1], input_offset)

    def execute_checked(self, command: Command, input_offset: int) -> list[BalanceEvent]:
        """``execute`` for a command known to keep the schema: one the strict decoder
        read from a log, or one ``check_command`` passed."""
        self._check_offset(input_offset)
        events = decide_command(self.state, command, input_offset)
        evolve_all(self.state, events)
        return events

    def execute_record(self, record: bytes | memoryview, input_offset: int) -> list[BalanceEvent]:
        """decide + evolve for one record of balance.operations: a command, or anything
        else, which is answered with ``Rejected(MALFORMED_COMMAND)`` naming the record's
        size and digest (a client's bug is answered, never a reason to stop)."""
        command = None
        if len(record) <= COMMAND_BYTES_MAX:
            with contextlib.suppress(DecodeError):
                command = COMMANDS.decode(record)
        if command is not None:
            return self.execute_checked(command, input_offset)
        self._check_offset(input_offset)
        events = reject_malformed(self.state, input_offset, record)
        evolve_all(self.state, events)
        return events

    def _check_offset(self, input_offset: int) -> None:
        if input_offset <= self.state.last_input_offset:
            raise SequenceError(f"command at offset {input_offset} is not after {self.state.last_input_offset}")

    def settle(self, output: EngineOutput) -> list[BalanceEvent]:
        """decide + evolve for one engine output; a repeat of an output already settled
        returns [] and a gap raises SequenceError (never skipped)."""
        symbol = output.symbol
        last = max(self.engine_cursor.get(symbol, 0), self.state.last_engine_seq.get(symbol, 0))
        if output.seq <= last:
            return []
        if output.seq != last + 1:
            raise SequenceError(f"engine output {output.symbol}#{output.seq}: missing {last + 1}..{output.seq - 1}")
        events = decide_output(self.state, output)
        evolve_all(self.state, events)
        self.engine_cursor[symbol] = output.seq
        return events

    def apply(self, event: BalanceEvent) -> None:
        """Replay one event (evolve)."""
        evolve(self.state, event)

    def apply_all(self, events: Iterable[BalanceEvent]) -> None:
        """Replay many events."""
        for event in events:
            self.apply(event)

    def state_hash(self) -> str:
        """See ``state_hash``."""
        return state_hash(self.state)

    def snapshot(self) -> bytes:
        """See ``snapshot``."""
        return snapshot(self.state)

    @classmethod
    def from_snapshot(cls, data: bytes) -> UBSCore:
        """A reducer restored from (and verified against) a snapshot."""
        return cls(restore(data))
