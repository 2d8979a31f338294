"""Example: a property test of your own, written with the strategies the library ships.

Run it with ``pytest examples/``. It checks two guarantees on random command streams:
a withdrawal never takes more than the available balance, and the books balance to the
minor unit for every asset.
"""

from __future__ import annotations

from hypothesis import given, settings

from ledger import Rejected, UBSCore, Withdraw, Withdrawn
from ledger.strategies import command_streams


@settings(max_examples=100, deadline=None)
@given(command_streams(users=3, max_size=100))
def test_withdrawals_never_overdraw_and_books_balance(commands) -> None:
    core = UBSCore()
    for offset, command in enumerate(commands):
        before = None
        if type(command) is Withdraw and command.asset in core.state.asset_index:
            before = core.state.balance(command.user, command.asset)[0]
        (event,) = core.execute(command, offset)
        if type(event) is Withdrawn:
            assert before is not None and event.amount <= before
            assert event.available == before - event.amount
        elif before is not None:
            assert type(event) is Rejected
            assert core.state.balance(command.user, command.asset)[0] == before
    assert core.state.conservation_problems() == []
