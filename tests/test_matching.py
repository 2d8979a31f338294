"""The matching engine against a reference book that is obviously correct and slow.

The reference keeps resting orders in one list and scans it; the engine must produce
the same outputs, command for command, and its book must satisfy every invariant after
every command: levels sorted and never empty, quantities positive, not crossed, FIFO
within a level, filled + remaining == original, one terminal output per order.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import OUTPUTS, CancelRequested, OrderAccepted, Side, SymbolListed
from ledger.commands import OrderType, SelfTrade, TimeInForce
from ledger.market import Symbol
from ledger.reasons import Reason
from matching.book import R_ID, R_REMAINING, OrderBook
from matching.engine import EngineError, MatchingEngine
from matching.events import OrderCancelled, OrderExpired, OrderRejected, OrderRested, Trade

SYMBOL = Symbol("X-Y", "X", "Y", lot=100, tick=10)


class ReferenceBook:
    """Resting orders in arrival order in one list; every rule written out plainly."""

    def __init__(self) -> None:
        self.resting: list[dict[str, Any]] = []
        self.seq = 0
        self.seen: set[int] = set()

    def out(self, kind: type, *fields: Any) -> Any:
        self.seq += 1
        return kind(self.seq, SYMBOL.name, *fields)

    def makers_for(self, side: int) -> list[dict[str, Any]]:
        opposite = [r for r in self.resting if r["side"] != side]
        if side == Side.BUY:
            return sorted(opposite, key=lambda r: (r["price"], r["arrival"]))
        return sorted(opposite, key=lambda r: (-r["price"], r["arrival"]))

    def crosses(self, o: OrderAccepted, price: int) -> bool:
        if o.order_type == OrderType.MARKET:
            return True
        return price <= o.price if o.side == Side.BUY else price >= o.price

    def handle(self, e: Any) -> list[Any]:
        if type(e) is CancelRequested:
            for r in self.resting:
                if r["id"] == e.order_id and r["user"] == e.user:
                    self.resting.remove(r)
                    return [self.out(OrderCancelled, e.seq, r["id"], r["user"], r["qty"], Reason.CANCELLED_BY_USER)]
            return [self.out(OrderRejected, e.seq, e.order_id, e.user, Reason.UNKNOWN_ORDER)]
        o: OrderAccepted = e
        if o.order_id in self.seen:
            return [self.out(OrderRejected, o.seq, o.order_id, o.user, Reason.DUPLICATE_ORDER_ID)]
        self.seen.add(o.order_id)
        makers = [m for m in self.makers_for(o.side) if self.crosses(o, m["price"])]
        if o.tif == TimeInForce.POST_ONLY and makers:
            return [self.out(OrderRejected, o.seq, o.order_id, o.user, Reason.POST_ONLY_WOULD_TAKE)]
        market_buy = o.order_type == OrderType.MARKET and o.side == Side.BUY
        if o.tif == TimeInForce.FOK:
            need, budget = o.qty, o.quote_budget
            for m in makers:
                if m["user"] == o.user:
                    if o.stp == SelfTrade.CANCEL_MAKER:
                        continue
                    break
                take = min(need, m["qty"])
                if market_buy:
                    take = min(take, budget // (m["price"] * SYMBOL.tick))
                    if take == 0:
                        break
                    budget -= take * m["price"] * SYMBOL.tick
                need -= take
                if need == 0:
                    break
            if need:
                return [self.out(OrderExpired, o.seq, o.order_id, o.user, o.qty, Reason.FOK_NOT_FILLABLE)]
        outputs: list[Any] = []
        remaining, budget, ended = o.qty, o.quote_budget, 0
        for m in makers:
            if remaining == 0:
                break
            if m["user"] == o.user:
                if o.stp != SelfTrade.CANCEL_TAKER:
                    self.resting.remove(m)
                    outputs.append(self.out(OrderCancelled, o.seq, m["id"], m["user"], m["qty"],
                                            Reason.SELF_TRADE_PREVENTED))
                    if o.stp == SelfTrade.CANCEL_MAKER:
                        continue
                ended = Reason.SELF_TRADE_PREVENTED
                break
            wanted = min(remaining, m["qty"])
            take = wanted
            if market_buy:
                take = min(take, budget // (m["price"] * SYMBOL.tick))
                if take == 0:
                    ended = Reason.BUDGET_EXHAUSTED
                    break
                budget -= take * m["price"] * SYMBOL.tick
            m["qty"] -= take
            remaining -= take
            if m["qty"] == 0:
                self.resting.remove(m)
            self.seq += 1
            outputs.append(
                Trade(self.seq, SYMBOL.name, o.seq, self.seq, m["price"], take, Side(m["side"]), m["user"], m["id"],
                      o.user, o.order_id, 0 if o.order_type == OrderType.MARKET else o.price, m["qty"] == 0,
                      remaining == 0)
            )
            if take < wanted:  # the budget could not pay for another lot at this price
                ended = Reason.BUDGET_EXHAUSTED
                break
        if remaining == 0:
            return outputs
        if ended == Reason.SELF_TRADE_PREVENTED:
            outputs.append(self.out(OrderCancelled, o.seq, o.order_id, o.user, remaining, ended))
        elif o.order_type == OrderType.MARKET or o.tif in (TimeInForce.IOC, TimeInForce.FOK):
            reason = ended or (Reason.NO_LIQUIDITY if o.order_type == OrderType.MARKET else Reason.IOC_REMAINDER)
            outputs.append(self.out(OrderExpired, o.seq, o.order_id, o.user, remaining, reason))
        else:
            self.resting.append({"id": o.order_id, "user": o.user, "side": o.side, "price": o.price,
                                 "qty": remaining, "arrival": o.seq})
            outputs.append(self.out(OrderRested, o.seq, o.order_id, o.user, Side(o.side), o.price, remaining))
        return outputs


def order(seq: int, order_id: int, user: int, side: int, qty: int, price: int, order_type: int = 0, tif: int = 0,
          stp: int = 0, budget: int = 0) -> OrderAccepted:
    """An OrderAccepted as the engine sees it (lock fields do not matter to it)."""
    return OrderAccepted(seq, 0, user, seq, order_id, SYMBOL.name, Side(side), OrderType(order_type),
                         TimeInForce(tif), SelfTrade(stp), qty, price, budget, "Y", 1, 0, 1)


def make_engine() -> MatchingEngine:
    engine = MatchingEngine(SYMBOL.name)
    engine.handle(SymbolListed(1, 0, 1, SYMBOL))
    return engine


class Checker:
    """Tracks every order's original quantity and fills; checks the invariants."""

    def __init__(self) -> None:
        self.original: dict[int, int] = {}
        self.filled: dict[int, int] = {}
        self.terminal: dict[int, int] = {}

    def record(self, inputs: Any, outputs: list[Any]) -> None:
        if type(inputs) is OrderAccepted and inputs.order_id not in self.original:
            self.original[inputs.order_id] = inputs.qty
        for out in outputs:
            if type(out) is Trade:
                for oid, done in ((out.maker_order_id, out.maker_done), (out.taker_order_id, out.taker_done)):
                    self.filled[oid] = self.filled.get(oid, 0) + out.qty
                    if done:
                        self.terminal[oid] = self.terminal.get(oid, 0) + 1
                        assert self.filled[oid] == self.original[oid]
            elif type(out) in (OrderCancelled, OrderExpired):
                self.terminal[out.order_id] = self.terminal.get(out.order_id, 0) + 1
                assert self.filled.get(out.order_id, 0) + out.qty_remaining == self.original[out.order_id]
            elif type(out) is OrderRejected and out.reason not in (Reason.UNKNOWN_ORDER, Reason.DUPLICATE_ORDER_ID):
                self.terminal[out.order_id] = self.terminal.get(out.order_id, 0) + 1

    def check(self, book: OrderBook) -> None:
        book.check()
        for side in (Side.BUY, Side.SELL):
            for level in book.levels[side].values():
                ids = [o[R_ID] for o in level]
                assert ids == sorted(ids), "FIFO within a level"  # ids grow with arrival
        for oid, resting in book.orders.items():
            assert self.filled.get(oid, 0) + resting[R_REMAINING] == self.original[oid]
            assert oid not in self.terminal
        assert all(count == 1 for count in self.terminal.values()), "one terminal output per order"
        assert set(self.original) == set(self.terminal) | set(book.orders), "every order rests or has ended"


def random_inputs(rng: random.Random, count: int, users: int = 3, cancel_share: float = 0.25) -> list[Any]:
    inputs: list[Any] = []
    placed: list[tuple[int, int]] = []
    for i in range(count):
        seq = i + 2
        if placed and rng.random() < cancel_share:
            user, oid = placed.pop(rng.randrange(len(placed)))
            inputs.append(CancelRequested(seq, 0, user, seq, oid, SYMBOL.name))
            continue
        user = rng.randint(1, users)
        side = rng.randint(0, 1)
        if rng.random() < 0.1:
            tif = rng.choice([TimeInForce.IOC, TimeInForce.FOK])
            budget = rng.randint(1, 50_000) if side == Side.BUY else 0
            inputs.append(order(seq, seq, user, side, rng.randint(1, 30), 0, OrderType.MARKET, tif,
                                rng.randint(0, 2), budget))
        else:
            tif = rng.choices([0, 1, 2, 3], weights=[70, 10, 10, 10])[0]
            inputs.append(order(seq, seq, user, side, rng.randint(1, 30), rng.randint(95, 105), 0, tif,
                                rng.choices([0, 1, 2], weights=[60, 20, 20])[0]))
        if rng.random() < 0.02 and placed:
            # A reused id: must be rejected, never matched.
            inputs[-1] = order(seq, placed[0][1], user, side, 5, 100)
        placed.append((user, seq))
    return inputs


def compare(inputs: list[Any]) -> tuple[MatchingEngine, list[Any]]:
    engine, reference, checker = make_engine(), ReferenceBook(), Checker()
    everything: list[Any] = []
    for event in inputs:
        got = engine.handle(event)
        expected = reference.handle(event)
        assert got == expected, f"input seq {event.seq}: {got} != {expected}"
        checker.record(event, got)
        checker.check(engine.book)
        everything.extend(got)
    return engine, everything


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 120))
def test_engine_matches_reference_on_random_streams(seed: int, count: int) -> None:
    compare(random_inputs(random.Random(seed), count))


@pytest.mark.slow
def test_engine_matches_reference_on_a_seeded_100000_command_stream() -> None:
    # Cancels at 45% keep the book at a realistic depth (the reference scans all of it).
    inputs = random_inputs(random.Random(42), 100_000, users=50, cancel_share=0.45)
    engine, reference = make_engine(), ReferenceBook()
    checker = Checker()
    trades = 0
    for i, event in enumerate(inputs):
        got = engine.handle(event)
        assert got == reference.handle(event), f"input {i}"
        checker.record(event, got)
        trades += sum(1 for o in got if type(o) is Trade)
        if i % 1000 == 0:
            checker.check(engine.book)
    checker.check(engine.book)
    assert trades > 10_000


def test_replay_of_outputs_and_snapshots_rebuild_the_same_state() -> None:
    engine, outputs = compare(random_inputs(random.Random(5), 3_000))
    rebuilt = MatchingEngine(SYMBOL.name)
    for output in outputs:
        rebuilt.apply(OUTPUTS.decode(OUTPUTS.encode(output)))
    assert rebuilt.state_hash() == engine.state_hash()
    half = MatchingEngine(SYMBOL.name)
    for output in outputs[: len(outputs) // 2]:
        half.apply(output)
    resumed = MatchingEngine.from_snapshot(half.snapshot())
    for output in outputs[len(outputs) // 2 :]:
        resumed.apply(output)
    assert resumed.state_hash() == engine.state_hash()
    import json

    tampered = json.loads(half.snapshot())
    tampered["state"]["last_input_seq"] += 1
    with pytest.raises(EngineError, match="does not match its hash"):
        MatchingEngine.from_snapshot(json.dumps(tampered).encode())


def test_rerun_reproduces_outputs_byte_for_byte() -> None:
    inputs = random_inputs(random.Random(9), 2_000)
    runs = []
    for _ in range(2):
        engine = make_engine()
        runs.append(b"".join(OUTPUTS.encode(o) for e in inputs for o in engine.handle(e)))
    assert runs[0] == runs[1]


def test_fok_fills_whole_or_touches_nothing() -> None:
    engine = make_engine()
    engine.handle(order(2, 2, 1, Side.SELL, 5, 100))
    before = engine.state_hash()
    (expired,) = engine.handle(order(3, 3, 2, Side.BUY, 6, 100, tif=TimeInForce.FOK))
    assert type(expired) is OrderExpired and expired.reason == Reason.FOK_NOT_FILLABLE
    # Only the finished-id memory changed: the book and its orders are untouched.
    assert engine.book.orders[2][R_REMAINING] == 5 and before != engine.state_hash()
    outputs = engine.handle(order(4, 4, 2, Side.BUY, 5, 100, tif=TimeInForce.FOK))
    assert [type(o) for o in outputs] == [Trade] and outputs[0].taker_done and outputs[0].maker_done


def test_market_buy_stops_at_its_budget() -> None:
    engine = make_engine()
    engine.handle(order(2, 2, 1, Side.SELL, 10, 100))
    # Each lot costs 100 * tick 10 = 1,000; a budget of 3,500 buys 3 lots.
    outputs = engine.handle(order(3, 3, 2, Side.BUY, 10, 0, OrderType.MARKET, TimeInForce.IOC, budget=3_500))
    assert [type(o) for o in outputs] == [Trade, OrderExpired]
    assert outputs[0].qty == 3 and outputs[1].reason == Reason.BUDGET_EXHAUSTED and outputs[1].qty_remaining == 7


def test_duplicate_order_id_is_rejected_never_matched() -> None:
    engine = make_engine()
    engine.handle(order(2, 2, 1, Side.SELL, 10, 100))
    outputs = engine.handle(order(3, 2, 2, Side.BUY, 10, 100))
    assert [(type(o), o.reason) for o in outputs] == [(OrderRejected, Reason.DUPLICATE_ORDER_ID)]
    assert engine.book.orders[2][R_REMAINING] == 10


def test_amend_keeps_or_loses_priority() -> None:
    book = OrderBook()
    book.add(1, 1, Side.SELL, 100, 10)
    book.add(2, 2, Side.SELL, 100, 10)
    book.reduce(1, 4)  # keeps its place at the front
    assert [o[R_ID] for o in book.levels[Side.SELL][100]] == [1, 2]
    book.reprice(1, 101)
    book.reprice(1, 100)  # back at 100, now behind order 2
    assert [o[R_ID] for o in book.levels[Side.SELL][100]] == [2, 1]
    book.check()
