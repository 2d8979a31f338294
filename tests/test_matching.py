"""The matching engine's rules, one example each.

The engine against a reference book, command for command on random streams, and its
determinism, replay and snapshots, are in ``test_matching_reference.py``; this module
pins each rule (and each boundary between the engine and UBSCore) with a short example
that reads like the rule itself.
"""

from __future__ import annotations

import doctest
import importlib
from collections import deque
from typing import Any

import msgspec
import pytest

from ledger.protocol.commands import (
    CancelOrder,
    Deposit,
    ListAsset,
    ListSymbol,
    OrderType,
    PlaceOrder,
    SelfTrade,
    Side,
    TimeInForce,
)
from ledger.protocol.events import CancelRequested, Deposited, OrderAccepted, Rejected, SymbolListed
from ledger.protocol.market import Asset, Symbol
from ledger.protocol.outputs import BookOpened, OrderRejected, OrderRested, Trade
from ledger.protocol.reasons import Reason
from ledger.ubscore import UBSCore
from matching.book import BookError, OrderBook
from matching.engine import EngineError, MatchingEngine

SYMBOL = Symbol("X-Y", "X", "Y", lot=100, tick=10)
BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
GTC, IOC, FOK, POST_ONLY = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK, TimeInForce.POST_ONLY
CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH = SelfTrade.CANCEL_TAKER, SelfTrade.CANCEL_MAKER, SelfTrade.CANCEL_BOTH


def fast_levels(book: OrderBook, side: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Levels of ``side`` best first, each with (id, user, qty) oldest first."""
    prices = list(book.prices[side])
    if side == BUY:
        prices.reverse()
    return [(p, [(o.order_id, o.user, o.remaining) for o in book.levels[side][p]]) for p in prices]


# The first output of every stream: the engine took in SymbolListed (input 1).
OPENED = BookOpened(1, SYMBOL.name, 1, SYMBOL)


def new_engine() -> MatchingEngine:
    engine = MatchingEngine(SYMBOL.name)
    assert engine.handle(SymbolListed(1, 0, 1, SYMBOL)) == [OPENED]
    return engine


def accepted(seq: int, user: int, side: int, qty: int, price: int, tif: int = GTC, stp: int = CANCEL_TAKER,
             order_type: int = LIMIT, budget: int = 0, order_id: int | None = None) -> OrderAccepted:
    return OrderAccepted(seq, 0, user, seq, seq if order_id is None else order_id, SYMBOL.name, Side(side),
                         OrderType(order_type), TimeInForce(tif), SelfTrade(stp), qty, price, budget, "Y", 1, 0, 1)


def shape(outputs: list[Any]) -> list[tuple[Any, ...]]:
    """Outputs as (type, order ids, qty or reason) for short assertions."""
    rows: list[tuple[Any, ...]] = []
    for o in outputs:
        if type(o) is Trade:
            rows.append(("Trade", o.maker_order_id, o.taker_order_id, o.qty, o.maker_done, o.taker_done))
        elif type(o) is OrderRested:
            rows.append(("Rested", o.order_id, o.qty_remaining))
        else:
            rows.append((type(o).__name__[5:], o.order_id, Reason(o.reason).name))
    return rows


def test_duplicate_order_ids_are_rejected_never_matched() -> None:
    engine = new_engine()
    engine.handle(accepted(2, 1, SELL, 10, 100))
    assert shape(engine.handle(accepted(3, 2, BUY, 10, 100, order_id=2))) == [
        ("Rejected", 2, "DUPLICATE_ORDER_ID")]
    assert engine.book.orders[2].remaining == 10  # the live order is untouched
    engine.handle(accepted(4, 2, BUY, 10, 100))  # fills order 2: now it has ended
    assert shape(engine.handle(accepted(5, 3, SELL, 1, 100, order_id=2))) == [("Rejected", 2, "DUPLICATE_ORDER_ID")]
    assert not engine.book.orders


def test_the_finished_window_is_bounded() -> None:
    engine = MatchingEngine(SYMBOL.name, SYMBOL, finished_ids_max=2)
    for seq in (2, 3, 4):
        engine.handle(accepted(seq, 1, BUY, 1, 100, tif=IOC))  # each expires at once
    assert list(engine.book.finished_order) == [3, 4]
    # Id 2 fell out of the window: it is taken as a new order (the window's documented cost).
    assert shape(engine.handle(accepted(5, 1, BUY, 1, 100, order_id=2))) == [("Rested", 2, 1)]
    assert shape(engine.handle(accepted(6, 1, BUY, 1, 100, order_id=4))) == [("Rejected", 4, "DUPLICATE_ORDER_ID")]


def test_fok_fills_whole_or_changes_nothing() -> None:
    engine = new_engine()
    engine.handle(accepted(2, 1, SELL, 5, 100))
    engine.handle(accepted(3, 1, SELL, 5, 101))
    book_before = fast_levels(engine.book, SELL)
    assert shape(engine.handle(accepted(4, 2, BUY, 11, 101, tif=FOK))) == [("Expired", 4, "FOK_NOT_FILLABLE")]
    assert fast_levels(engine.book, SELL) == book_before
    assert shape(engine.handle(accepted(5, 2, BUY, 10, 101, tif=FOK))) == [
        ("Trade", 2, 5, 5, True, False), ("Trade", 3, 5, 5, True, True)]


@pytest.mark.parametrize(
    ("stp", "expected"),
    [
        # An own order in the path is a barrier: the FOK cannot fill past it.
        (CANCEL_TAKER, [("Expired", 5, "FOK_NOT_FILLABLE")]),
        (CANCEL_BOTH, [("Expired", 5, "FOK_NOT_FILLABLE")]),
        # Under CANCEL_MAKER it is absent: cancelled, and the FOK fills behind it.
        (CANCEL_MAKER, [("Trade", 2, 5, 4, True, False), ("Cancelled", 3, "SELF_TRADE_PREVENTED"),
                        ("Trade", 4, 5, 4, False, True)]),
    ],
)
def test_fok_and_self_trade_prevention(stp: int, expected: list[tuple[Any, ...]]) -> None:
    engine = new_engine()
    engine.handle(accepted(2, 1, SELL, 4, 100))
    engine.handle(accepted(3, 2, SELL, 4, 100))  # the taker's own
    engine.handle(accepted(4, 3, SELL, 9, 101))
    before = fast_levels(engine.book, SELL)
    assert shape(engine.handle(accepted(5, 2, BUY, 8, 101, tif=FOK, stp=stp))) == expected
    if expected[0][0] == "Expired":
        assert fast_levels(engine.book, SELL) == before  # no maker touched, none cancelled


@pytest.mark.parametrize(
    ("stp", "expected"),
    [
        (CANCEL_TAKER, [("Trade", 2, 4, 2, True, False), ("Cancelled", 4, "SELF_TRADE_PREVENTED")]),
        (CANCEL_MAKER, [("Trade", 2, 4, 2, True, False), ("Cancelled", 3, "SELF_TRADE_PREVENTED"),
                        ("Rested", 4, 8)]),
        (CANCEL_BOTH, [("Trade", 2, 4, 2, True, False), ("Cancelled", 3, "SELF_TRADE_PREVENTED"),
                       ("Cancelled", 4, "SELF_TRADE_PREVENTED")]),
    ],
)
def test_self_trade_prevention_modes(stp: int, expected: list[tuple[Any, ...]]) -> None:
    engine = new_engine()
    engine.handle(accepted(2, 1, SELL, 2, 100))
    engine.handle(accepted(3, 7, SELL, 5, 100))
    assert shape(engine.handle(accepted(4, 7, BUY, 10, 100, stp=stp))) == expected


def test_market_buy_ends_when_the_next_lot_is_unaffordable() -> None:
    engine = new_engine()
    engine.handle(accepted(2, 1, SELL, 10, 100))
    # A lot costs 100 * tick 10 = 1,000: a budget of 3,500 buys 3 lots. The last trade is
    # not the taker's end (taker_done False); the expiry is, and UBSCore unlocks on it.
    outputs = engine.handle(accepted(3, 2, BUY, 10, 0, tif=IOC, order_type=MARKET, budget=3_500))
    assert shape(outputs) == [("Trade", 2, 3, 3, False, False), ("Expired", 3, "BUDGET_EXHAUSTED")]
    assert outputs[1].qty_remaining == 7 and outputs[0].taker_limit_price == 0
    # Enough budget for all of it: the trade itself ends the order.
    assert shape(engine.handle(accepted(4, 2, BUY, 7, 0, tif=IOC, order_type=MARKET, budget=10**6))) == [
        ("Trade", 2, 4, 7, True, True)]


def test_an_unaffordable_own_order_is_left_alone() -> None:
    engine = new_engine()
    engine.handle(accepted(2, 5, SELL, 3, 100))
    outputs = engine.handle(accepted(3, 5, BUY, 1, 0, tif=IOC, stp=CANCEL_MAKER, order_type=MARKET, budget=999))
    assert shape(outputs) == [("Expired", 3, "BUDGET_EXHAUSTED")]
    assert 2 in engine.book.orders


def test_time_in_force_ends() -> None:
    engine = new_engine()
    assert shape(engine.handle(accepted(2, 1, BUY, 5, 100, tif=IOC))) == [("Expired", 2, "IOC_REMAINDER")]
    assert shape(engine.handle(accepted(3, 1, SELL, 5, 0, tif=IOC, order_type=MARKET))) == [
        ("Expired", 3, "NO_LIQUIDITY")]
    assert shape(engine.handle(accepted(4, 1, SELL, 5, 100, tif=POST_ONLY))) == [("Rested", 4, 5)]
    assert shape(engine.handle(accepted(5, 2, BUY, 5, 100, tif=POST_ONLY))) == [
        ("Rejected", 5, "POST_ONLY_WOULD_TAKE")]
    assert shape(engine.handle(accepted(6, 2, BUY, 2, 101, tif=IOC))) == [("Trade", 4, 6, 2, False, True)]
    assert shape(engine.handle(accepted(7, 2, BUY, 5, 101))) == [("Trade", 4, 7, 3, True, False), ("Rested", 7, 2)]


def test_cancel_and_the_race_with_a_fill() -> None:
    engine = new_engine()
    engine.handle(accepted(2, 1, SELL, 5, 100))
    assert shape(engine.handle(CancelRequested(3, 0, 1, 3, 2, SYMBOL.name))) == [("Cancelled", 2, "CANCELLED_BY_USER")]
    assert shape(engine.handle(CancelRequested(4, 0, 1, 4, 2, SYMBOL.name))) == [("Rejected", 2, "UNKNOWN_ORDER")]


def test_amend_qty_keeps_priority_and_amend_price_loses_it() -> None:
    engine = new_engine()
    outputs = engine.handle(accepted(2, 1, SELL, 10, 100)) + engine.handle(accepted(3, 2, SELL, 10, 100))
    outputs += engine.amend_qty(4, 2, 1, 4)
    assert shape(outputs[-1:]) == [("Rested", 2, 4)]
    assert [o.order_id for o in engine.book.levels[SELL][100]] == [2, 3]
    outputs += engine.amend_price(5, 2, 1, 101) + engine.amend_price(6, 2, 1, 100)
    assert [o.order_id for o in engine.book.levels[SELL][100]] == [3, 2]
    # A price that crosses trades first (the amended order is the taker), then rests.
    outputs += engine.handle(accepted(7, 3, BUY, 3, 99))
    outputs += engine.amend_price(8, 3, 2, 99)
    assert shape(outputs[-2:]) == [("Trade", 7, 3, 3, True, False), ("Rested", 3, 7)]
    assert engine.book.best_price(SELL) == 99 and engine.book.best_price(BUY) is None
    assert shape(engine.amend_qty(9, 7, 3, 1)) == [("Rejected", 7, "UNKNOWN_ORDER")]
    with pytest.raises(BookError, match="reduce to 9"):
        engine.amend_qty(10, 3, 2, 9)
    # The amends replay from their outputs like everything else.
    rebuilt = MatchingEngine(SYMBOL.name)
    for output in [OPENED, *outputs]:
        rebuilt.apply(output)
    rebuilt.apply(OrderRejected(rebuilt.seq + 1, SYMBOL.name, 9, 7, 3, Reason.UNKNOWN_ORDER))
    assert rebuilt.state_hash() == engine.state_hash()


def test_other_symbols_and_other_events_are_ignored() -> None:
    engine = new_engine()
    other = OrderAccepted(2, 0, 1, 2, 2, "OTHER", BUY, LIMIT, GTC, CANCEL_TAKER, 1, 100, 0, "Y", 1, 0, 1)
    assert engine.handle(other) == []
    assert engine.handle(CancelRequested(3, 0, 1, 3, 2, "OTHER")) == []
    assert engine.handle(Deposited(4, 0, 1, 4, "Y", 10, 10, 0)) == []
    assert engine.handle(SymbolListed(5, 0, 5, Symbol("OTHER", "A", "B", 1, 1))) == []
    assert engine.handle(SymbolListed(6, 0, 6, SYMBOL)) == []  # the same definition again
    # Only its own listing made an output: the stream's opening.
    assert engine.seq == 1 and engine.last_input_seq == 1


def test_inputs_a_correct_ubscore_cannot_send_raise() -> None:
    engine = new_engine()
    engine.handle(accepted(2, 1, SELL, 5, 100))
    with pytest.raises(BookError, match="owns it"):
        engine.handle(CancelRequested(3, 0, 9, 3, 2, SYMBOL.name))
    with pytest.raises(EngineError, match="not after"):
        engine.handle(accepted(2, 1, SELL, 5, 100, order_id=77))
    with pytest.raises(BookError, match="market order needs price 0"):
        engine.handle(accepted(4, 1, SELL, 5, 100, tif=IOC, order_type=MARKET))
    with pytest.raises(BookError, match="not a valid limit"):
        engine.handle(accepted(5, 1, SELL, 5, 0))
    with pytest.raises(BookError, match="positive int"):
        engine.handle(accepted(6, 1, SELL, 0, 100))
    with pytest.raises(EngineError, match="listed again"):
        engine.handle(SymbolListed(7, 0, 7, Symbol(SYMBOL.name, "X", "Y", lot=100, tick=20)))
    with pytest.raises(EngineError, match="before SymbolListed"):
        MatchingEngine(SYMBOL.name).handle(accepted(8, 1, SELL, 5, 100))
    # None of those changed anything.
    assert engine.seq == 2 and list(engine.book.orders) == [2]
    engine.book.check()


def test_replay_refuses_outputs_that_do_not_fit() -> None:
    engine = new_engine()
    outputs = engine.handle(accepted(2, 1, SELL, 5, 100)) + engine.handle(accepted(3, 2, BUY, 2, 100))
    rebuilt = MatchingEngine(SYMBOL.name)
    with pytest.raises(BookError, match="expected"):
        rebuilt.apply(outputs[0])  # before the stream's opening
    rebuilt.apply(OPENED)
    with pytest.raises(BookError, match="opens once"):
        rebuilt.apply(msgspec.structs.replace(OPENED, seq=2))
    with pytest.raises(BookError, match="expected"):
        rebuilt.apply(outputs[1])
    rebuilt.apply(outputs[0])
    trade = outputs[1]
    for wrong in ({"qty": 6}, {"maker_order_id": 9}, {"maker_done": True}, {"price": 101}, {"symbol": "OTHER"}):
        with pytest.raises(BookError):
            rebuilt.apply(msgspec.structs.replace(trade, **wrong))
    rebuilt.apply(trade)
    assert rebuilt.state_hash() == engine.state_hash()


def test_a_budget_that_runs_out_ends_a_market_buy_before_an_own_order_is_reached() -> None:
    # Not a self-trade: the taker cannot pay for the own order's lot, so it could never
    # trade with it. The budget is what ended it, and cancelling (or, under CANCEL_MAKER,
    # removing) the own order would be a side effect of a trade that was never possible.
    for stp in (CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH):
        engine = new_engine()
        engine.handle(accepted(2, 1, SELL, 2, 100))
        engine.handle(accepted(3, 5, SELL, 4, 100))  # the taker's own
        outputs = engine.handle(accepted(4, 5, BUY, 6, 0, tif=IOC, stp=stp, order_type=MARKET, budget=2_500))
        assert shape(outputs) == [("Trade", 2, 4, 2, True, False), ("Expired", 4, "BUDGET_EXHAUSTED")]
        assert 3 in engine.book.orders


def test_book_primitives_reduce_keeps_and_reprice_loses_priority() -> None:
    book = OrderBook()
    book.add(1, 1, SELL, 100, 10)
    book.add(2, 2, SELL, 100, 10)
    book.reduce(1, 4)  # keeps its place at the front
    assert [o.order_id for o in book.levels[SELL][100]] == [1, 2]
    book.reprice(1, 101)
    book.reprice(1, 100)  # back at 100, now behind order 2
    assert [o.order_id for o in book.levels[SELL][100]] == [2, 1]
    book.check()


# -- the boundary with UBSCore ---------------------------------------------------------------


def listed_core() -> UBSCore:
    core = UBSCore()
    for offset, command in enumerate((
        ListAsset(1, Asset("X", 2)),
        ListAsset(2, Asset("Y", 2)),
        ListSymbol(3, SYMBOL),
        Deposit(1, 4, "X", 10**6),
        Deposit(2, 5, "Y", 10**6),
        Deposit(3, 6, "Y", 10**6),
    )):
        core.execute(command, offset)
    return core


def test_a_cancel_of_someone_elses_order_never_reaches_the_engine() -> None:
    core, engine = listed_core(), MatchingEngine(SYMBOL.name, SYMBOL)
    (placed,) = core.execute(PlaceOrder(1, 10, SYMBOL.name, SELL, 5, 100), 10)
    assert type(placed) is OrderAccepted and shape(engine.handle(placed)) == [("Rested", placed.order_id, 5)]
    (answer,) = core.execute(CancelOrder(2, 11, placed.order_id), 11)
    # UBSCore answers the non-owner itself; so a non-owner cancel reaching the engine is a
    # programmer error there (BookError), not a case it answers.
    assert type(answer) is Rejected and answer.reason == Reason.NOT_ORDER_OWNER


def test_a_cancel_that_loses_the_race_with_a_fill_is_an_output_not_an_error() -> None:
    core, engine = listed_core(), MatchingEngine(SYMBOL.name, SYMBOL)
    (sell,) = core.execute(PlaceOrder(1, 10, SYMBOL.name, SELL, 5, 100), 10)
    for output in engine.handle(sell):
        core.settle(output)
    # The fill happens at the engine, but its outputs reach UBSCore only after UBSCore has
    # already forwarded the owner's cancel (the two stages run apart in production).
    (buy,) = core.execute(PlaceOrder(2, 11, SYMBOL.name, BUY, 5, 100), 11)
    pending = deque(engine.handle(buy))
    (cancel,) = core.execute(CancelOrder(1, 12, sell.order_id), 12)
    assert type(cancel) is CancelRequested
    answer = engine.handle(cancel)
    assert shape(answer) == [("Rejected", sell.order_id, "UNKNOWN_ORDER")]
    pending.extend(answer)
    while pending:
        for event in core.settle(pending.popleft()):
            assert not isinstance(event, Rejected)
    assert not core.state.orders and not engine.book.orders
    assert all(locked == 0 for _, locked in core.state.totals().values())
    assert not core.state.conservation_problems()


# -- the package -----------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["matching.book", "matching.engine"])
def test_module_doctests(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0

