"""Idempotency and all-or-nothing: retries get the original answer, rejections change
nothing but seq."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import CommandError, Deposit, PlaceOrder, Reason, Rejected, Side, UBSCore, Withdraw
from ledger.protocol.events import Deposited
from ledger.strategies import commands, listing_commands
from ledger.ubscore import without_sequence


def funded_core(window: int | None = None) -> tuple[UBSCore, int]:
    from ledger.ubscore import State

    core = UBSCore(State(request_window=window) if window else None)
    offset = 0
    for command in listing_commands():
        core.execute(command, offset)
        offset += 1
    core.execute(Deposit(1, 1000, "USDT", 10**9), offset)
    return core, offset + 1


def test_retry_gets_original_outcome_and_changes_nothing() -> None:
    core, offset = funded_core()
    first = core.execute(Deposit(7, 1, "BTC", 500), offset)[0]
    assert type(first) is Deposited
    before = without_sequence(core.state)
    retry = core.execute(Deposit(7, 1, "BTC", 500, ts_ms=99), offset + 1)[0]
    assert type(retry) is Rejected
    assert (retry.reason, retry.original_seq, retry.original_reason) == (Reason.DUPLICATE_REQUEST, first.seq, 0)
    assert without_sequence(core.state) == before
    assert core.state.balance(7, "BTC") == (500, 0)


def test_retry_of_a_rejection_gets_the_same_rejection() -> None:
    core, offset = funded_core()
    first = core.execute(Withdraw(7, 2, "BTC", 1), offset)[0]
    assert first.reason == Reason.INSUFFICIENT_FUNDS
    core.execute(Deposit(7, 3, "BTC", 10), offset + 1)
    retry = core.execute(Withdraw(7, 2, "BTC", 1), offset + 2)[0]
    assert (retry.reason, retry.original_seq, retry.original_reason) == (
        Reason.DUPLICATE_REQUEST,
        first.seq,
        Reason.INSUFFICIENT_FUNDS,
    )
    assert core.state.balance(7, "BTC") == (10, 0)


def test_same_id_different_payload_is_a_conflict() -> None:
    core, offset = funded_core()
    core.execute(Deposit(7, 1, "BTC", 500), offset)
    conflict = core.execute(Deposit(7, 1, "BTC", 501), offset + 1)[0]
    assert conflict.reason == Reason.REQUEST_ID_CONFLICT
    assert core.state.balance(7, "BTC") == (500, 0)
    # The same id is independent per user.
    other = core.execute(Deposit(8, 1, "BTC", 501), offset + 2)[0]
    assert type(other) is Deposited


def test_window_forgets_the_oldest_ids_and_is_replayed_identically() -> None:
    core, offset = funded_core(window=3)
    for request_id in range(1, 6):
        core.execute(Deposit(7, request_id, "BTC", 1), offset)
        offset += 1
    # Ids 1..2 (and the listings) fell out of the window of 3: a retry is a new deposit.
    assert type(core.execute(Deposit(7, 1, "BTC", 1), offset)[0]) is Deposited
    assert core.execute(Deposit(7, 5, "BTC", 1), offset + 1)[0].reason == Reason.DUPLICATE_REQUEST
    assert len(core.state.requests) == 3 == len(core.state.request_order)


@given(st.lists(commands(), min_size=1, max_size=60))
def test_rejected_commands_change_nothing_but_seq(stream) -> None:
    core, offset = funded_core()
    for command in stream:
        before = without_sequence(core.state, keep_requests=False)
        events = core.execute(command, offset)
        offset += 1
        assert len(events) == 1
        if type(events[0]) is Rejected:
            assert without_sequence(core.state, keep_requests=False) == before


@given(st.lists(commands(), min_size=1, max_size=40))
def test_decide_never_changes_state(stream) -> None:
    from ledger.ubscore import decide, evolve, state_hash

    core, offset = funded_core()
    for command in stream:
        before = state_hash(core.state)
        events = decide(core.state, command, offset)
        assert state_hash(core.state) == before
        for event in events:
            evolve(core.state, event)
        offset += 1


def test_orders_lock_exactly_and_reject_whole() -> None:
    core, offset = funded_core()
    # BTC-USDT: lot 10**5, tick 10. 3 lots at 100 ticks lock 3 * 100 * 10 USDT units.
    accepted = core.execute(PlaceOrder(1, 1, "BTC-USDT", Side.BUY, qty=3, price=100), offset)[0]
    assert accepted.lock_amount == 3000 and core.state.balance(1, "USDT") == (10**9 - 3000, 3000)
    too_big = core.execute(PlaceOrder(1, 2, "BTC-USDT", Side.BUY, qty=10**9, price=100), offset + 1)[0]
    assert too_big.reason == Reason.INSUFFICIENT_FUNDS
    assert core.state.balance(1, "USDT") == (10**9 - 3000, 3000)


class _Unhashable:
    """Equal to an int but not hashable: what a caller's own numeric type can be."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return other == self.value


def test_order_fields_only_equal_to_valid_values_are_refused_at_the_boundary() -> None:
    """An order whose side only compares equal to a valid value is not of the schema: it
    is refused naming the field, before anything changes (it could not be logged)."""
    core, offset = funded_core()
    before = core.state_hash()
    order = PlaceOrder(1, 1, "BTC-USDT", _Unhashable(0), 3, 100, _Unhashable(0), _Unhashable(0), 0, _Unhashable(0))  # type: ignore[arg-type]
    with pytest.raises(CommandError, match=r"PlaceOrder\.side: cannot be encoded"):
        core.execute(order, offset)
    assert core.state_hash() == before
