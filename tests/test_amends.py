"""Amends (ReduceOrder, ReplaceOrder) through UBSCore and the real matching engine.

UBSCore and the engine are joined by two queues, so a test chooses what is in flight:
an amend UBSCore accepted while fills it has not settled yet are on their way, or while
the engine has not seen the orders that fill it. After every balance event money is
conserved, no balance is negative, and each user's locked balance is exactly the sum of
the locks of their open orders; each lock covers every state the order may still take.
Property test first, examples after.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import event as note
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.protocol.codec import EVENTS, OUTPUTS
from ledger.protocol.commands import (
    CancelOrder,
    Command,
    Deposit,
    ListAsset,
    ListSymbol,
    PlaceOrder,
    ReduceOrder,
    ReplaceOrder,
    SelfTrade,
    Side,
    TimeInForce,
)
from ledger.protocol.events import (
    AmendRequested,
    AmendSettled,
    BalanceEvent,
    FundsUnlocked,
    OrderAccepted,
    Rejected,
    TradeSettled,
)
from ledger.protocol.market import Asset, Symbol
from ledger.protocol.outputs import (
    AmendRejected,
    EngineOutput,
    OrderAmended,
    OrderCancelled,
    OrderRested,
)
from ledger.protocol.reasons import Reason
from ledger.ubscore import UBSCore, without_sequence
from ledger.ubscore.amend import order_lock_needed
from ledger.ubscore.state import O_LOCK, O_PENDING
from matching.book import BookError
from matching.engine import MatchingEngine
from support import assert_conserved

SYMBOL = Symbol("X-Y", "X", "Y", lot=100, tick=10, maker_fee_ppm=1_000, taker_fee_ppm=2_000)
BUY, SELL = Side.BUY, Side.SELL


class Pipe:
    """UBSCore and one engine, with what each has produced and the other not yet taken in."""

    def __init__(self) -> None:
        self.core = UBSCore()
        self.engine = MatchingEngine(SYMBOL.name)
        self.to_engine: deque[BalanceEvent] = deque()
        self.to_core: deque[EngineOutput] = deque()
        self.events: list[BalanceEvent] = []
        self.outputs: list[EngineOutput] = []
        self.offset = 0
        for command in (ListAsset(1, Asset("X", 2)), ListAsset(2, Asset("Y", 2)), ListSymbol(3, SYMBOL)):
            self.command(command)
        self.drain()

    def command(self, command: Command) -> BalanceEvent:
        events = self.core.execute(command, self.offset)
        self.offset += 1
        self._record(events)
        assert len(events) == 1, "every command is answered by exactly one event"
        return events[0]

    def _record(self, events: list[BalanceEvent]) -> None:
        for event in events:
            self.events.append(event)
            self.to_engine.append(event)
        check_locks(self.core)

    def engine_step(self) -> list[EngineOutput]:
        outputs = self.engine.handle(self.to_engine.popleft())
        self.engine.book.check()
        self.outputs += outputs
        self.to_core.extend(outputs)
        return outputs

    def core_step(self) -> list[BalanceEvent]:
        events = self.core.settle(self.to_core.popleft())
        self._record(events)
        return events

    def drain(self) -> None:
        while self.to_engine or self.to_core:
            while self.to_engine:
                self.engine_step()
            while self.to_core:
                self.core_step()

    def run(self, command: Command) -> BalanceEvent:
        """A command and everything it causes, settled."""
        event = self.command(command)
        self.drain()
        return event

    def order(self, user: int, request_id: int, side: Side, qty: int, price: int, **options: Any) -> int:
        event = self.run(PlaceOrder(user, request_id, SYMBOL.name, side, qty, price, **options))
        assert isinstance(event, OrderAccepted), event
        return event.order_id

    def fund(self, user: int, x: int = 10**9, y: int = 10**9) -> None:
        self.run(Deposit(user, 1, "X", x))
        self.run(Deposit(user, 2, "Y", y))

    def since(self, count: int) -> list[BalanceEvent]:
        return self.events[count:]


def check_locks(core: UBSCore) -> None:
    """Conservation, and every open order's lock covers each state it may take; an order
    with no amend pending holds exactly what its remainder needs."""
    assert_conserved(core)
    for order in core.state.orders.values():
        if order[3] != 0:  # a market order's lock is its budget
            continue
        needed = order_lock_needed(SYMBOL, order)
        assert order[O_LOCK] >= needed
        if not order[O_PENDING]:
            assert order[O_LOCK] == needed


def check_replay(pipe: Pipe) -> None:
    """balance.events alone rebuilds UBSCore, from the start or from a snapshot half way;
    the engine's outputs alone rebuild its book; every record survives the codec."""
    events = [EVENTS.decode(EVENTS.encode(e)) for e in pipe.events]
    assert events == pipe.events
    replayed = UBSCore()
    replayed.apply_all(events)
    assert replayed.state_hash() == pipe.core.state_hash()
    half = UBSCore()
    half.apply_all(events[: len(events) // 2])
    resumed = UBSCore.from_snapshot(half.snapshot())
    resumed.apply_all(events[len(events) // 2 :])
    assert resumed.state_hash() == pipe.core.state_hash()
    rebuilt = MatchingEngine(SYMBOL.name)
    for output in pipe.outputs:
        rebuilt.apply(OUTPUTS.decode(OUTPUTS.encode(output)))
    assert rebuilt.state_hash() == pipe.engine.state_hash()
    resumed_engine = MatchingEngine.from_snapshot(pipe.engine.snapshot())
    assert resumed_engine.state_hash() == pipe.engine.state_hash()


def y_balance(pipe: Pipe, user: int) -> tuple[int, int]:
    return pipe.core.state.balance(user, "Y")


# -- property: random streams with amends, fills in flight -------------------------------

_PLACE = st.tuples(
    st.just("place"),
    st.sampled_from([2, 1, 3]),
    st.sampled_from([SELL, BUY]),
    st.integers(1, 12),
    st.integers(98, 102),
    st.sampled_from([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.POST_ONLY, TimeInForce.IOC]),
)
# An order priced through the whole book: it trades with whatever rests opposite.
_TAKE = st.tuples(st.just("take"), st.sampled_from([2, 1, 3]), st.sampled_from([SELL, BUY]), st.integers(1, 12))
_STEP = st.one_of(
    _PLACE,
    _PLACE,
    _PLACE,
    _TAKE,
    st.tuples(st.just("reduce"), st.integers(0, 50), st.integers(1, 12)),
    st.tuples(st.just("replace"), st.integers(0, 50), st.integers(94, 106), st.integers(0, 14),
              st.sampled_from(list(SelfTrade))),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("retry"), st.integers(0, 50)),
    st.tuples(st.just("engine"), st.integers(1, 4)),
    st.tuples(st.just("core"), st.integers(1, 4)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, min_size=10, max_size=80), st.integers(0, 3))
def test_random_streams_with_amends_conserve_lock_exactly_and_replay(steps: list[Any], poor: int) -> None:
    pipe = Pipe()
    # User ``poor`` (if any) has little quote, so some replaces lack funds.
    for user in (1, 2, 3):
        pipe.fund(user, y=30_000 if user == poor else 10**9)
    commands: list[Command] = []
    request_id = 10
    for step in steps:
        kind = step[0]
        request_id += 1
        open_orders = sorted(pipe.core.state.orders.items())
        if kind == "engine" or kind == "core":
            queue, act = (pipe.to_engine, pipe.engine_step) if kind == "engine" else (pipe.to_core, pipe.core_step)
            for _ in range(step[1]):
                if queue:
                    act()
            continue
        if kind == "place":
            _, user, side, qty, price, tif = step
            command: Command = PlaceOrder(user, request_id, SYMBOL.name, side, qty, price, tif=tif)
        elif kind == "take":
            _, user, side, qty = step
            command = PlaceOrder(user, request_id, SYMBOL.name, side, qty, 106 if side == BUY else 94)
        elif kind == "retry":
            if not commands:
                continue
            command = commands[step[1] % len(commands)]
        elif not open_orders:
            continue
        else:
            order_id, order = open_orders[step[1] % len(open_orders)]
            user = order[0]
            if kind == "reduce":
                command = ReduceOrder(user, request_id, order_id, step[2])
            elif kind == "replace":
                command = ReplaceOrder(user, request_id, order_id, step[2], step[3], step[4])
            else:
                command = CancelOrder(user, request_id, order_id)
        commands.append(command)
        pipe.command(command)
    pipe.drain()
    for kind in sorted({type(e).__name__ for e in pipe.events} | {type(o).__name__ for o in pipe.outputs}):
        note(kind)
    check_replay(pipe)
    # Everything still open can be cancelled, and then nothing is locked at all.
    for order_id, order in sorted(pipe.core.state.orders.items()):
        request_id += 1
        pipe.run(CancelOrder(order[0], request_id, order_id))
    assert not pipe.core.state.orders and not pipe.engine.book.orders
    assert all(account[1::2] == [0, 0] for account in pipe.core.state.accounts.values())
    check_replay(pipe)


# -- examples -----------------------------------------------------------------------------


def test_a_reduce_after_a_partial_fill_counts_the_fill_and_keeps_priority() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    pipe.fund(3)
    first = pipe.order(1, 10, BUY, 10, 100)
    second = pipe.order(3, 10, BUY, 5, 100)
    pipe.order(2, 10, SELL, 4, 100)  # fills 4 of the first
    before = y_balance(pipe, 1)
    count = len(pipe.events)
    pipe.run(ReduceOrder(1, 11, first, 6))
    requested, settled = pipe.since(count)
    assert isinstance(requested, AmendRequested) and requested.lock_amount == 0 and requested.keep_priority
    assert pipe.outputs[-1] == OrderAmended(pipe.engine.seq, SYMBOL.name, requested.seq, first, 1, BUY, 100, 6, 2,
                                            True)
    # The lock for 6 - 4 = 2 lots at 100 stays; 4 lots' worth comes back.
    assert isinstance(settled, AmendSettled) and settled.amount == 4 * 100 * SYMBOL.tick
    assert y_balance(pipe, 1) == (before[0] + 4_000, 2_000)
    # Still first in the queue: the next sell fills it before the other order.
    pipe.order(2, 11, SELL, 2, 100)
    assert first not in pipe.core.state.orders and second in pipe.core.state.orders
    check_replay(pipe)


@pytest.mark.parametrize("total", [4, 3, 1])
def test_a_reduce_to_what_has_filled_ends_the_order_and_releases_the_rest(total: int) -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    order_id = pipe.order(1, 10, BUY, 10, 100)
    pipe.order(2, 10, SELL, 4, 100)
    count = len(pipe.events)
    pipe.run(ReduceOrder(1, 11, order_id, total))
    assert isinstance(pipe.outputs[-1], OrderCancelled)
    assert pipe.outputs[-1].reason == Reason.AMEND_ALREADY_FILLED and pipe.outputs[-1].qty_remaining == 6
    unlocked = pipe.since(count)[-1]
    assert isinstance(unlocked, FundsUnlocked) and unlocked.amount == 6 * 100 * SYMBOL.tick
    assert y_balance(pipe, 1)[1] == 0 and order_id not in pipe.core.state.orders
    assert not pipe.engine.book.orders
    check_replay(pipe)


def test_an_amend_racing_the_fill_that_ends_the_order_is_unknown_and_changes_nothing() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    order_id = pipe.order(1, 10, BUY, 10, 100)
    # The sell that fills it is accepted, then the replace, before the engine sees either.
    pipe.command(PlaceOrder(2, 10, SYMBOL.name, SELL, 10, 100))
    replace = pipe.command(ReplaceOrder(1, 11, order_id, 103))
    assert isinstance(replace, AmendRequested) and replace.lock_amount == 10 * 3 * SYMBOL.tick
    pipe.drain()
    assert isinstance(pipe.outputs[-1], AmendRejected) and pipe.outputs[-1].reason == Reason.UNKNOWN_ORDER
    # The last fill released the extra lock; the refusal settles nothing.
    assert isinstance(pipe.events[-1], FundsUnlocked) and pipe.events[-1].amount == 10 * 3 * SYMBOL.tick
    assert y_balance(pipe, 1)[1] == 0 and not pipe.core.state.orders
    # Settled before the amend arrives, the same race is UBSCore's to answer.
    answer = pipe.run(ReduceOrder(1, 12, order_id, 5))
    assert isinstance(answer, Rejected) and answer.reason == Reason.UNKNOWN_ORDER
    check_replay(pipe)


def test_a_fill_in_flight_beyond_the_new_total_ends_the_order_and_nothing_more_trades() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    order_id = pipe.order(1, 10, BUY, 10, 100)
    pipe.command(PlaceOrder(2, 10, SYMBOL.name, SELL, 6, 100))
    pipe.command(ReplaceOrder(1, 11, order_id, 104, 5))  # total 5, but 6 fill first
    pipe.drain()
    end = pipe.outputs[-1]
    assert isinstance(end, OrderCancelled) and end.reason == Reason.AMEND_ALREADY_FILLED and end.qty_remaining == 4
    assert [type(o).__name__ for o in pipe.outputs[-2:]] == ["Trade", "OrderCancelled"]
    assert y_balance(pipe, 1)[1] == 0 and not pipe.core.state.orders
    check_replay(pipe)


def test_a_replace_across_the_book_trades_as_a_taker_then_rests() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    pipe.order(2, 10, SELL, 3, 101)
    pipe.order(2, 11, SELL, 2, 102)
    order_id = pipe.order(1, 10, BUY, 10, 100)
    before = y_balance(pipe, 1)
    count = len(pipe.outputs)
    pipe.run(ReplaceOrder(1, 11, order_id, 102))
    shape = [(type(o).__name__, getattr(o, "price", None), getattr(o, "qty", None)) for o in pipe.outputs[count:]]
    assert shape == [("OrderAmended", 102, 10), ("Trade", 101, 3), ("Trade", 102, 2), ("OrderRested", 102, None)]
    assert pipe.outputs[-1] == OrderRested(pipe.engine.seq, SYMBOL.name, pipe.outputs[-1].input_seq, order_id, 1,
                                           BUY, 102, 5)
    # Locked: 5 lots at 102. Spent: 3 at 101 and 2 at 102 (the lot below the limit refunded).
    spent = (3 * 101 + 2 * 102) * SYMBOL.tick
    assert y_balance(pipe, 1) == (before[0] + before[1] - spent - 5 * 102 * SYMBOL.tick, 5 * 102 * SYMBOL.tick)
    check_replay(pipe)


@pytest.mark.parametrize(
    ("stp", "shape", "own_left"),
    [
        (SelfTrade.CANCEL_TAKER, ["OrderAmended", "OrderCancelled"], True),
        (SelfTrade.CANCEL_MAKER, ["OrderAmended", "OrderCancelled", "Trade", "OrderRested"], False),
        (SelfTrade.CANCEL_BOTH, ["OrderAmended", "OrderCancelled", "OrderCancelled"], False),
    ],
)
def test_a_replace_that_meets_its_own_order_follows_its_self_trade_mode(
    stp: SelfTrade, shape: list[str], own_left: bool
) -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    own = pipe.order(1, 10, SELL, 2, 101)
    pipe.order(2, 10, SELL, 3, 101)
    order_id = pipe.order(1, 11, BUY, 5, 100)
    count = len(pipe.outputs)
    pipe.run(ReplaceOrder(1, 12, order_id, 101, 0, stp))
    outputs = pipe.outputs[count:]
    assert [type(o).__name__ for o in outputs] == shape
    assert all(o.reason == Reason.SELF_TRADE_PREVENTED for o in outputs if isinstance(o, OrderCancelled))
    assert (own in pipe.core.state.orders) is own_left and (own in pipe.engine.book.orders) is own_left
    assert (order_id in pipe.core.state.orders) is (stp == SelfTrade.CANCEL_MAKER)
    check_replay(pipe)


def test_a_post_only_replace_that_would_cross_is_refused_and_the_order_stays() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    pipe.order(2, 10, SELL, 3, 102)
    order_id = pipe.order(1, 10, BUY, 5, 100, tif=TimeInForce.POST_ONLY)
    before = y_balance(pipe, 1)
    count = len(pipe.events)
    pipe.run(ReplaceOrder(1, 11, order_id, 102))
    requested, settled = pipe.since(count)
    assert isinstance(requested, AmendRequested) and requested.post_only
    assert requested.lock_amount == 5 * 2 * SYMBOL.tick
    assert isinstance(pipe.outputs[-1], AmendRejected) and pipe.outputs[-1].reason == Reason.POST_ONLY_WOULD_TAKE
    assert isinstance(settled, AmendSettled) and settled.reason == Reason.POST_ONLY_WOULD_TAKE
    assert settled.amount == requested.lock_amount and (settled.price, settled.qty) == (100, 5)
    assert y_balance(pipe, 1) == before
    assert pipe.engine.book.orders[order_id].price == 100
    # A price that does not cross is a replace like any other, and stays post-only.
    pipe.run(ReplaceOrder(1, 12, order_id, 101))
    assert pipe.engine.book.orders[order_id].price == 101
    pipe.run(ReplaceOrder(1, 13, order_id, 103))
    assert isinstance(pipe.outputs[-1], AmendRejected)
    check_replay(pipe)


def test_a_buy_replaced_higher_without_the_funds_is_refused_and_nothing_changes() -> None:
    pipe = Pipe()
    pipe.run(Deposit(1, 1, "Y", 10 * 100 * SYMBOL.tick + 5))
    order_id = pipe.order(1, 10, BUY, 10, 100)
    state_before = without_sequence(pipe.core.state, keep_requests=False)
    engine_before = pipe.engine.state_hash()
    for command in (ReplaceOrder(1, 11, order_id, 101), ReplaceOrder(1, 12, order_id, 100, 11)):
        answer = pipe.run(command)
        assert isinstance(answer, Rejected) and answer.reason == Reason.INSUFFICIENT_FUNDS
    assert without_sequence(pipe.core.state, keep_requests=False) == state_before
    assert pipe.engine.state_hash() == engine_before
    # A cheaper price needs nothing more, and gives back the difference once confirmed.
    pipe.run(ReplaceOrder(1, 13, order_id, 90))
    assert y_balance(pipe, 1) == (5 + 10 * 10 * SYMBOL.tick, 10 * 90 * SYMBOL.tick)
    check_replay(pipe)


def test_two_amends_of_one_order_in_flight_with_a_fill_before_them() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    order_id = pipe.order(1, 10, BUY, 10, 100)
    pipe.command(PlaceOrder(2, 10, SYMBOL.name, SELL, 3, 100))  # fills 3 at 100, in flight
    first = pipe.command(ReplaceOrder(1, 11, order_id, 105))
    second = pipe.command(ReduceOrder(1, 12, order_id, 6))
    assert isinstance(first, AmendRequested) and first.lock_amount == 10 * 5 * SYMBOL.tick
    # The reduce keeps the price the replace will give, and needs nothing more.
    assert isinstance(second, AmendRequested) and (second.price, second.qty_before, second.lock_amount) == (105, 10, 0)
    pipe.drain()
    amended = [o for o in pipe.outputs if isinstance(o, OrderAmended)]
    assert [(o.price, o.qty, o.qty_remaining, o.priority_kept) for o in amended] == [
        (105, 10, 7, False),
        (105, 6, 3, True),
    ]
    settled = [e for e in pipe.events if isinstance(e, AmendSettled)]
    # Locked 10 lots at 105, 3 spent at 100: the first answer frees all but 7 at 105,
    # the second all but 3 at 105.
    assert [e.amount for e in settled] == [10 * 1050 - 3 * 1000 - 7 * 1050, 4 * 1050]
    assert y_balance(pipe, 1)[1] == 3 * 105 * SYMBOL.tick
    assert pipe.engine.book.orders[order_id].remaining == 3
    check_replay(pipe)


def test_a_retried_amend_gets_the_first_answer_and_a_changed_one_conflicts() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.order(1, 10, BUY, 10, 100)
    for command, changed in (
        (ReduceOrder(1, 11, 0, 8, order_request_id=10), ReduceOrder(1, 11, 0, 7, order_request_id=10)),
        (ReplaceOrder(1, 12, 0, 99, order_request_id=10), ReplaceOrder(1, 12, 0, 99, 8, order_request_id=10)),
    ):
        first = pipe.run(command)
        assert isinstance(first, AmendRequested) and first.by_request
        count = len(pipe.outputs)
        retry = pipe.run(command)
        assert isinstance(retry, Rejected) and retry.reason == Reason.DUPLICATE_REQUEST
        assert retry.original_seq == first.seq and retry.original_reason == 0
        assert len(pipe.outputs) == count, "a retry never reaches the engine"
        conflict = pipe.run(changed)
        assert isinstance(conflict, Rejected) and conflict.reason == Reason.REQUEST_ID_CONFLICT
    assert (pipe.engine.book.orders[pipe.core.state.order_ids_by_request[(1 << 64) | 10]].remaining,
            pipe.engine.book.orders[pipe.core.state.order_ids_by_request[(1 << 64) | 10]].price) == (8, 99)
    # Replayed, the window answers the same.
    replayed = UBSCore()
    replayed.apply_all(pipe.events)
    assert replayed.state_hash() == pipe.core.state_hash()


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (ReduceOrder(1, 20, 0, 10, order_request_id=10), Reason.INVALID_QUANTITY),  # not lower
        (ReduceOrder(1, 20, 0, 0, order_request_id=10), Reason.INVALID_QUANTITY),
        (ReplaceOrder(1, 20, 0, 0, order_request_id=10), Reason.INVALID_PRICE),
        (ReplaceOrder(1, 20, 0, 100, -1, order_request_id=10), Reason.INVALID_QUANTITY),
        (ReplaceOrder(1, 20, 0, 2**62, 2**62, order_request_id=10), Reason.INVALID_QUANTITY),  # value beyond limits
        (ReduceOrder(1, 20, 0, 5, order_request_id=99), Reason.UNKNOWN_ORDER),
        (ReduceOrder(2, 20, 0, 5, order_request_id=10), Reason.UNKNOWN_ORDER),  # another user's request
        (ReduceOrder(1, 20, 999, 5, order_request_id=10), Reason.UNKNOWN_ORDER),  # named two ways
    ],
)
def test_invalid_amends_are_rejected_and_change_nothing(command: Command, reason: Reason) -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    pipe.order(1, 10, BUY, 10, 100)
    state_before = without_sequence(pipe.core.state, keep_requests=False)
    answer = pipe.run(command)
    assert isinstance(answer, Rejected) and answer.reason == reason
    assert without_sequence(pipe.core.state, keep_requests=False) == state_before


def test_amends_of_orders_that_never_rest_being_cancelled_or_of_others_are_refused() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    order_id = pipe.order(1, 10, BUY, 10, 100)
    answer = pipe.run(ReduceOrder(2, 20, order_id, 5))
    assert isinstance(answer, Rejected) and answer.reason == Reason.NOT_ORDER_OWNER
    pipe.command(CancelOrder(1, 21, order_id))
    answer = pipe.command(ReplaceOrder(1, 22, order_id, 101))
    assert isinstance(answer, Rejected) and answer.reason == Reason.CANCEL_PENDING
    pipe.drain()
    # An IOC order is open at UBSCore until the engine answers, but never rests.
    ioc = pipe.command(PlaceOrder(1, 23, SYMBOL.name, BUY, 2, 100, tif=TimeInForce.IOC))
    answer = pipe.command(ReduceOrder(1, 24, ioc.order_id, 1))
    assert isinstance(answer, Rejected) and answer.reason == Reason.INVALID_ORDER_TYPE
    pipe.drain()


def test_amends_waiting_for_the_engine_are_bounded() -> None:
    from ledger.protocol.limits import ORDER_AMENDS_PENDING_MAX

    pipe = Pipe()
    pipe.fund(1)
    order_id = pipe.order(1, 10, BUY, 40, 100)
    for i in range(ORDER_AMENDS_PENDING_MAX):
        assert isinstance(pipe.command(ReduceOrder(1, 11 + i, order_id, 39 - i)), AmendRequested)
    answer = pipe.command(ReduceOrder(1, 99, order_id, 20))
    assert isinstance(answer, Rejected) and answer.reason == Reason.AMENDS_PENDING_MAX
    pipe.drain()
    assert pipe.engine.book.orders[order_id].remaining == 40 - ORDER_AMENDS_PENDING_MAX
    check_replay(pipe)


def test_a_sell_replaced_to_a_larger_total_locks_the_extra_base() -> None:
    pipe = Pipe()
    pipe.fund(1)
    pipe.fund(2)
    order_id = pipe.order(2, 10, SELL, 4, 100)
    before = pipe.core.state.balance(2, "X")
    requested = pipe.run(ReplaceOrder(2, 11, order_id, 101, 7))
    assert isinstance(requested, AmendRequested) and requested.lock_amount == 3 * SYMBOL.lot
    assert pipe.core.state.balance(2, "X") == (before[0] - 300, before[1] + 300)
    pipe.order(1, 10, BUY, 7, 101)
    assert not pipe.core.state.orders and pipe.core.state.balance(2, "X")[1] == 0
    assert any(isinstance(e, TradeSettled) and e.qty == 7 for e in pipe.events)
    check_replay(pipe)


def test_the_engine_refuses_an_amend_output_that_does_not_fit_on_replay() -> None:
    pipe = Pipe()
    pipe.fund(1)
    order_id = pipe.order(1, 10, BUY, 10, 100)
    pipe.run(ReduceOrder(1, 11, order_id, 6))
    outputs = list(pipe.outputs)
    bad = outputs[-1]
    assert isinstance(bad, OrderAmended)
    rebuilt = MatchingEngine(SYMBOL.name)
    for output in outputs[:-1]:
        rebuilt.apply(output)
    with pytest.raises(BookError):
        rebuilt.apply(OrderAmended(bad.seq, bad.symbol, bad.input_seq, order_id, 1, BUY, 99, 6, 6, True))
    with pytest.raises(BookError):
        rebuilt.apply(AmendRejected(bad.seq, bad.symbol, bad.input_seq, order_id, 1, Reason.UNKNOWN_ORDER))
    rebuilt.apply(bad)
    assert rebuilt.state_hash() == pipe.engine.state_hash()
