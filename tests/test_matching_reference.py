"""The fast order book against a reference that is obviously correct and slow.

The reference keeps resting orders in one list in arrival order and finds makers by
sorting a copy of it; it plans a taker's walk without changing anything, so a fill-or-
kill order is "fillable" exactly when that plan fills it. The engine must produce the
same outputs command for command, and after every command its book must hold what the
reference holds, level by level in FIFO order, and satisfy the invariants: levels sorted
and never empty, quantities positive, not crossed, filled + remaining == original, one
terminal output per order.

The same streams drive the determinism, replay and snapshot tests and a round through the
real UBSCore. Each rule's own short example is in ``test_matching.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import OUTPUTS
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
from ledger.protocol.events import CancelRequested, OrderAccepted, SymbolListed
from ledger.protocol.market import Asset, Symbol
from ledger.protocol.outputs import (
    ENGINE_OUTPUT_TYPES,
    AmendRejected,
    BookOpened,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)
from ledger.protocol.reasons import Reason
from ledger.ubscore import UBSCore
from matching.book import OrderBook
from matching.engine import EngineError, MatchingEngine

SYMBOL = Symbol("X-Y", "X", "Y", lot=100, tick=10)
PRICE_LOW, PRICE_HIGH = 95, 105
BUY, SELL = Side.BUY, Side.SELL
LIMIT, MARKET = OrderType.LIMIT, OrderType.MARKET
GTC, IOC, FOK, POST_ONLY = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK, TimeInForce.POST_ONLY
CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH = SelfTrade.CANCEL_TAKER, SelfTrade.CANCEL_MAKER, SelfTrade.CANCEL_BOTH


# -- the reference ------------------------------------------------------------------------


class Reference:
    """Every rule written out plainly; nothing is fast."""

    def __init__(self, window: int) -> None:
        self.resting: list[dict[str, Any]] = []  # in arrival order; "time" orders a level
        self.ended: list[int] = []  # ids in the order they ended
        self.window = window
        self.seq = 0
        self.clock = 0

    def emit(self, kind: type, *fields: Any) -> Any:
        self.seq += 1
        if kind is Trade:
            return Trade(self.seq, SYMBOL.name, fields[0], self.seq, *fields[1:])
        return kind(self.seq, SYMBOL.name, *fields)

    def find(self, order_id: int) -> dict[str, Any] | None:
        for r in self.resting:
            if r["id"] == order_id:
                return r
        return None

    def rest(self, order_id: int, user: int, side: int, price: int, qty: int) -> None:
        self.clock += 1
        self.resting.append({"id": order_id, "user": user, "side": side, "price": price, "qty": qty,
                             "time": self.clock})

    def end(self, order_id: int) -> None:
        self.ended.append(order_id)

    def makers(self, side: int, limit: int | None) -> list[dict[str, Any]]:
        """Opposite resting orders the taker's limit reaches, best price first, then oldest."""
        found = [r for r in self.resting if r["side"] != side
                 and (limit is None or (r["price"] <= limit if side == BUY else r["price"] >= limit))]
        return sorted(found, key=lambda r: (r["price"] if side == BUY else -r["price"], r["time"]))

    def plan(self, user: int, side: int, stp: int, qty: int, limit: int | None,
             budget: int | None) -> tuple[list[tuple[Any, ...]], int, int]:
        """The steps matching would take, without taking them: (steps, left, why it stopped)."""
        steps: list[tuple[Any, ...]] = []
        left = qty
        for m in self.makers(side, limit):
            if left == 0:
                break
            cost = m["price"] * SYMBOL.tick
            if budget is not None and budget < cost:
                return steps, left, Reason.BUDGET_EXHAUSTED
            if m["user"] == user:
                if stp == CANCEL_TAKER:
                    return steps, left, Reason.SELF_TRADE_PREVENTED
                steps.append(("cancel", m))
                if stp == CANCEL_BOTH:
                    return steps, left, Reason.SELF_TRADE_PREVENTED
                continue
            fill = min(left, m["qty"])
            if budget is not None and budget // cost < fill:
                # The budget pays for part of this fill only: the next lot, of this maker
                # or a dearer one, is unaffordable, so matching ends here.
                fill = budget // cost
                steps.append(("fill", m, fill))
                return steps, left - fill, Reason.BUDGET_EXHAUSTED
            if budget is not None:
                budget -= fill * cost
            steps.append(("fill", m, fill))
            left -= fill
        return steps, left, 0

    def take(self, input_seq: int, order_id: int, user: int, limit_price: int, steps: list[tuple[Any, ...]],
             qty: int) -> list[Any]:
        outputs = []
        left = qty
        for step in steps:
            m = step[1]
            if step[0] == "cancel":
                self.resting.remove(m)
                self.end(m["id"])
                outputs.append(self.emit(OrderCancelled, input_seq, m["id"], m["user"], m["qty"],
                                         Reason.SELF_TRADE_PREVENTED))
                continue
            fill = step[2]
            m["qty"] -= fill
            left -= fill
            if m["qty"] == 0:
                self.resting.remove(m)
                self.end(m["id"])
            if left == 0:
                self.end(order_id)
            outputs.append(self.emit(Trade, input_seq, m["price"], fill, Side(m["side"]), m["user"], m["id"], user,
                                     order_id, limit_price, m["qty"] == 0, left == 0))
        return outputs

    def place(self, o: OrderAccepted) -> list[Any]:
        if self.find(o.order_id) or o.order_id in self.ended[-self.window:]:
            return [self.emit(OrderRejected, o.seq, o.order_id, o.user, Reason.DUPLICATE_ORDER_ID)]
        market = o.order_type == MARKET
        limit = None if market else o.price
        budget = o.quote_budget if market and o.side == BUY else None
        if o.tif == POST_ONLY and self.makers(o.side, limit):
            self.end(o.order_id)
            return [self.emit(OrderRejected, o.seq, o.order_id, o.user, Reason.POST_ONLY_WOULD_TAKE)]
        steps, left, stopped = self.plan(o.user, o.side, o.stp, o.qty, limit, budget)
        if o.tif == FOK and left:
            self.end(o.order_id)
            return [self.emit(OrderExpired, o.seq, o.order_id, o.user, o.qty, Reason.FOK_NOT_FILLABLE)]
        outputs = self.take(o.seq, o.order_id, o.user, 0 if market else o.price, steps, o.qty)
        if left == 0:
            return outputs
        if stopped == Reason.SELF_TRADE_PREVENTED:
            self.end(o.order_id)
            outputs.append(self.emit(OrderCancelled, o.seq, o.order_id, o.user, left, stopped))
        elif market:
            self.end(o.order_id)
            outputs.append(self.emit(OrderExpired, o.seq, o.order_id, o.user, left, stopped or Reason.NO_LIQUIDITY))
        elif o.tif == IOC:
            self.end(o.order_id)
            outputs.append(self.emit(OrderExpired, o.seq, o.order_id, o.user, left, Reason.IOC_REMAINDER))
        else:
            self.rest(o.order_id, o.user, o.side, o.price, left)
            outputs.append(self.emit(OrderRested, o.seq, o.order_id, o.user, Side(o.side), o.price, left))
        return outputs

    def cancel(self, input_seq: int, order_id: int, user: int) -> list[Any]:
        r = self.find(order_id)
        if r is None:
            return [self.emit(OrderRejected, input_seq, order_id, user, Reason.UNKNOWN_ORDER)]
        self.resting.remove(r)
        self.end(order_id)
        return [self.emit(OrderCancelled, input_seq, order_id, user, r["qty"], Reason.CANCELLED_BY_USER)]

    def amend_qty(self, input_seq: int, order_id: int, user: int, qty: int) -> list[Any]:
        r = self.find(order_id)
        if r is None:
            return [self.emit(OrderRejected, input_seq, order_id, user, Reason.UNKNOWN_ORDER)]
        r["qty"] = qty
        return [self.emit(OrderRested, input_seq, order_id, user, Side(r["side"]), r["price"], qty)]

    def amend_price(self, input_seq: int, order_id: int, user: int, price: int, stp: int) -> list[Any]:
        r = self.find(order_id)
        if r is None:
            return [self.emit(OrderRejected, input_seq, order_id, user, Reason.UNKNOWN_ORDER)]
        self.resting.remove(r)
        steps, left, stopped = self.plan(user, r["side"], stp, r["qty"], price, None)
        outputs = self.take(input_seq, order_id, user, price, steps, r["qty"])
        if left and stopped == Reason.SELF_TRADE_PREVENTED:
            self.end(order_id)
            outputs.append(self.emit(OrderCancelled, input_seq, order_id, user, left, stopped))
        elif left:
            self.rest(order_id, user, r["side"], price, left)
            outputs.append(self.emit(OrderRested, input_seq, order_id, user, Side(r["side"]), price, left))
        return outputs

    def levels(self, side: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
        """Levels of ``side`` best first, each with (id, user, qty) oldest first."""
        by_price: dict[int, list[dict[str, Any]]] = {}
        for r in self.resting:
            if r["side"] == side:
                by_price.setdefault(r["price"], []).append(r)
        prices = sorted(by_price, reverse=side == BUY)
        return [(p, [(r["id"], r["user"], r["qty"]) for r in sorted(by_price[p], key=lambda r: r["time"])])
                for p in prices]


def fast_levels(book: OrderBook, side: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    prices = list(book.prices[side])
    if side == BUY:
        prices.reverse()
    return [(p, [(o.order_id, o.user, o.remaining) for o in book.levels[side][p]]) for p in prices]


# -- commands: one description drives both books ------------------------------------------


def place_command(rng: Any, users: int) -> tuple[Any, ...]:
    """("place", user, side, type, tif, stp, qty, price, budget) drawn from ``rng``."""
    side = rng.choice((BUY, SELL))
    stp = rng.choice((CANCEL_TAKER, CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH))
    if rng.random() < 0.08:
        budget = rng.randint(1, 60_000) if side == BUY else 0
        return ("place", rng.randint(1, users), side, MARKET, rng.choice((IOC, FOK)), stp, rng.randint(1, 40), 0,
                budget)
    tif = rng.choice((GTC, GTC, GTC, GTC, IOC, FOK, POST_ONLY))
    return ("place", rng.randint(1, users), side, LIMIT, tif, stp, rng.randint(1, 40),
            rng.randint(PRICE_LOW, PRICE_HIGH), 0)


def random_commands(rng: random.Random, count: int, users: int = 4) -> list[tuple[Any, ...]]:
    """A stream of commands: orders, cancels, amends and reused ids."""
    commands: list[tuple[Any, ...]] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.25:
            commands.append(("cancel", rng.randrange(1 << 30)))
        elif roll < 0.28:
            commands.append(("amend_qty", rng.randrange(1 << 30), rng.randint(1, 40)))
        elif roll < 0.31:
            commands.append(("amend_price", rng.randrange(1 << 30), rng.randint(PRICE_LOW, PRICE_HIGH),
                             rng.choice((CANCEL_TAKER, CANCEL_MAKER, CANCEL_BOTH))))
        elif roll < 0.32:
            commands.append(("reuse", rng.randrange(1 << 30)))
        else:
            commands.append(place_command(rng, users))
    return commands


class _DrawRandom:
    """``random.Random``'s few methods used above, drawing from hypothesis instead, so a
    failing stream shrinks."""

    def __init__(self, draw: Any) -> None:
        self.draw = draw

    def choice(self, options: tuple[Any, ...]) -> Any:
        return self.draw(st.sampled_from(options))

    def randint(self, low: int, high: int) -> int:
        return int(self.draw(st.integers(low, high)))

    def random(self) -> float:
        return float(self.draw(st.integers(0, 99))) / 100

    def randrange(self, stop: int) -> int:
        return int(self.draw(st.integers(0, stop - 1)))


@st.composite
def command_streams(draw: Any, max_size: int = 80) -> list[tuple[Any, ...]]:
    count = draw(st.integers(1, max_size))
    return random_commands(_DrawRandom(draw), count, users=draw(st.integers(1, 4)))  # type: ignore[arg-type]


class Checker:
    """Tracks each order's quantities and terminal outputs; checks the invariants."""

    def __init__(self) -> None:
        self.original: dict[int, int] = {}  # order id -> accepted quantity
        self.filled: dict[int, int] = {}
        self.reduced: dict[int, int] = {}  # quantity taken off by amend_qty
        self.terminals: dict[int, int] = {}

    def accounted(self, order_id: int) -> int:
        return self.filled.get(order_id, 0) + self.reduced.get(order_id, 0)

    def ended(self, order_id: int) -> None:
        assert order_id in self.original, f"order {order_id} ended but was never accepted"
        assert order_id not in self.terminals, f"order {order_id} has a second terminal output"
        self.terminals[order_id] = 1

    def record(self, outputs: list[Any]) -> None:
        for out in outputs:
            kind = type(out)
            if kind is Trade:
                for oid, done in ((out.maker_order_id, out.maker_done), (out.taker_order_id, out.taker_done)):
                    assert oid not in self.terminals, f"trade for ended order {oid}"
                    self.filled[oid] = self.filled.get(oid, 0) + out.qty
                    assert self.accounted(oid) <= self.original[oid]
                    if done:
                        assert self.accounted(oid) == self.original[oid], "done but not filled"
                        self.ended(oid)
            elif kind is OrderCancelled or kind is OrderExpired:
                assert self.accounted(out.order_id) + out.qty_remaining == self.original[out.order_id]
                self.ended(out.order_id)
            elif kind is OrderRejected:
                if out.reason in (Reason.POST_ONLY_WOULD_TAKE,):
                    self.ended(out.order_id)
                else:
                    assert out.reason in (Reason.UNKNOWN_ORDER, Reason.DUPLICATE_ORDER_ID)

    def check(self, engine: MatchingEngine, reference: Reference) -> None:
        book = engine.book
        book.check()
        for side in (BUY, SELL):
            levels = fast_levels(book, side)
            assert levels == reference.levels(side), f"side {side.name} differs from the reference"
            prices = [price for price, _ in levels]
            assert prices == sorted(set(prices), reverse=side == BUY), "levels sorted, one per price"
            for _, orders in levels:
                assert orders, "a level is never empty"
                for order_id, _, qty in orders:
                    assert qty > 0
                    assert self.accounted(order_id) + qty == self.original[order_id], "filled + remaining"
                    assert order_id not in self.terminals
        bids, asks = book.prices[BUY], book.prices[SELL]
        assert not bids or not asks or bids[-1] < asks[0], "book crossed after matching"


class Driver:
    """Turns command descriptions into engine inputs, runs engine and reference, checks."""

    def __init__(self, window: int = 100_000, check_every: int = 1) -> None:
        self.engine = MatchingEngine(SYMBOL.name, finished_ids_max=window)
        opened = self.engine.handle(SymbolListed(1, 0, 1, SYMBOL))
        # Every stream opens with the listing's definition, as output 1.
        assert opened == [BookOpened(1, SYMBOL.name, 1, SYMBOL)]
        self.reference = Reference(window)
        self.reference.seq = 1
        self.checker = Checker()
        self.seq = 1
        self.owners: list[tuple[int, int]] = []  # (order id, user) of every accepted order
        self.inputs: list[Any] = [SymbolListed(1, 0, 1, SYMBOL)]
        self.outputs: list[Any] = list(opened)
        self.check_every = check_every
        self.count = 0

    def pick(self, index: int) -> tuple[int, int] | None:
        """The (order id, user) a cancel or amend names: for an even ``index`` an order
        still resting (so the book stays thin and amends act), for an odd one any order
        ever accepted (mostly ended ones: the cancel that lost the race)."""
        resting = self.reference.resting
        if index % 2 == 0 and resting:
            r = resting[index // 2 % len(resting)]
            return r["id"], r["user"]
        return self.owners[index // 2 % len(self.owners)] if self.owners else None

    def run(self, command: tuple[Any, ...]) -> list[Any]:
        self.seq += 1
        seq, kind = self.seq, command[0]
        engine, reference = self.engine, self.reference
        if kind == "place" or (kind == "reuse" and self.owners):
            if kind == "reuse":
                reused = self.owners[command[1] % len(self.owners)]
                event = OrderAccepted(seq, 0, reused[1], seq, reused[0], SYMBOL.name, BUY, LIMIT, GTC, CANCEL_TAKER,
                                      5, 100, 0, "Y", 1, 0, 1)
            else:
                _, user, side, order_type, tif, stp, qty, price, budget = command
                event = OrderAccepted(seq, 0, user, seq, seq, SYMBOL.name, side, order_type, tif, stp, qty, price,
                                      budget, "Y", 1, 0, 1)
                self.owners.append((seq, user))
                self.checker.original[seq] = qty
            got, expected = engine.handle(event), reference.place(event)
            if kind == "reuse" and got == expected and type(got[0]) is not OrderRejected:
                # The old id had left the finished window: this is a new order now.
                for ledger_of_id in (self.checker.filled, self.checker.reduced, self.checker.terminals):
                    ledger_of_id.pop(event.order_id, None)
                self.checker.original[event.order_id] = event.qty
        elif kind == "cancel" and self.owners:
            order_id, user = self.pick(command[1])  # type: ignore[misc]
            event = CancelRequested(seq, 0, user, seq, order_id, SYMBOL.name)
            got, expected = engine.handle(event), reference.cancel(seq, order_id, user)
        elif kind == "amend_qty" and self.owners:
            order_id, user = self.pick(command[1])  # type: ignore[misc]
            resting = reference.find(order_id)
            if resting is not None and resting["qty"] == 1:
                self.seq -= 1
                return []  # nothing left to reduce: not a valid amend
            qty = 1 + command[2] % (resting["qty"] - 1) if resting else command[2]
            event = ("amend_qty", seq, order_id, user, qty)
            before = resting["qty"] if resting else 0
            got, expected = engine.amend_qty(seq, order_id, user, qty), reference.amend_qty(seq, order_id, user, qty)
            if resting:
                self.checker.reduced[order_id] = self.checker.reduced.get(order_id, 0) + before - qty
        elif kind == "amend_price" and self.owners:
            order_id, user = self.pick(command[1])  # type: ignore[misc]
            _, _, price, stp = command
            event = ("amend_price", seq, order_id, user, price, stp)
            got = engine.amend_price(seq, order_id, user, price, stp)
            expected = reference.amend_price(seq, order_id, user, price, stp)
        else:
            self.seq -= 1
            return []
        assert got == expected, f"input {seq} {event}:\n  engine    {got}\n  reference {expected}"
        assert engine.last_input_seq == seq and engine.seq == reference.seq
        self.inputs.append(event)
        self.outputs.extend(got)
        self.checker.record(got)
        self.count += 1
        if self.count % self.check_every == 0:
            self.checker.check(engine, reference)
        return got

    def drain(self) -> None:
        """Cancel everything still resting: afterwards every accepted order has ended."""
        for order_id, user in list(self.owners):
            if order_id in self.engine.book.orders:
                self.run(("cancel", 2 * self.owners.index((order_id, user)) + 1))
        self.checker.check(self.engine, self.reference)
        assert not self.engine.book.orders
        assert set(self.checker.terminals) == set(self.checker.original), "every accepted order ended once"


def run_stream(commands: list[tuple[Any, ...]], **options: Any) -> Driver:
    driver = Driver(**options)
    for command in commands:
        driver.run(command)
    return driver


def replay_inputs(engine: MatchingEngine, inputs: list[Any]) -> list[Any]:
    """Feed recorded inputs (balance events and amend tuples) to ``engine``."""
    outputs: list[Any] = []
    for item in inputs:
        if type(item) is tuple:
            method = getattr(engine, item[0])
            outputs.extend(method(*item[1:]))
        else:
            outputs.extend(engine.handle(item))
    return outputs


# -- the fast book reproduces the reference -----------------------------------------------


@settings(max_examples=200, deadline=None)
@given(command_streams())
def test_engine_matches_reference_on_random_streams(commands: list[tuple[Any, ...]]) -> None:
    driver = run_stream(commands)
    driver.drain()


@settings(max_examples=50, deadline=None)
@given(command_streams(max_size=60))
def test_engine_matches_reference_with_a_tiny_finished_window(commands: list[tuple[Any, ...]]) -> None:
    # A window of 3 makes old ids fall out of memory within a stream, so a reused id is
    # sometimes a duplicate and sometimes a new order; both books must agree which.
    run_stream(commands, window=3).drain()


@pytest.mark.slow
def test_engine_matches_reference_on_a_seeded_100000_command_stream() -> None:
    commands = random_commands(random.Random(42), 100_000, users=5)
    driver = run_stream(commands)
    driver.drain()
    kinds: dict[str, int] = {}
    for out in driver.outputs:
        name = type(out).__name__ if type(out) in (Trade, OrderRested, BookOpened) else \
            f"{type(out).__name__}:{Reason(out.reason).name}"
        kinds[name] = kinds.get(name, 0) + 1
    # The stream must exercise every rule, not just pass.
    for name in ("Trade", "OrderRested", "OrderCancelled:SELF_TRADE_PREVENTED", "OrderCancelled:CANCELLED_BY_USER",
                 "OrderExpired:IOC_REMAINDER", "OrderExpired:NO_LIQUIDITY", "OrderExpired:BUDGET_EXHAUSTED",
                 "OrderExpired:FOK_NOT_FILLABLE", "OrderRejected:POST_ONLY_WOULD_TAKE",
                 "OrderRejected:DUPLICATE_ORDER_ID", "OrderRejected:UNKNOWN_ORDER"):
        assert kinds.get(name, 0) > 100, f"{name}: {kinds.get(name, 0)}"
    assert kinds["BookOpened"] == 1 and type(driver.outputs[0]) is BookOpened


# -- determinism, replay, snapshots, encoding ---------------------------------------------


def encoded(outputs: list[Any]) -> bytes:
    return b"".join(OUTPUTS.encode(o) for o in outputs)


def test_same_inputs_give_byte_identical_outputs() -> None:
    driver = run_stream(random_commands(random.Random(9), 3_000))
    again = MatchingEngine(SYMBOL.name)
    assert encoded(replay_inputs(again, driver.inputs)) == encoded(driver.outputs)
    assert again.state_hash() == driver.engine.state_hash()


def test_outputs_and_hash_are_the_same_in_other_processes() -> None:
    # Different PYTHONHASHSEEDs change set and dict-of-str orders; nothing may depend on them.
    driver = run_stream(random_commands(random.Random(11), 2_000))
    here = [hashlib.blake2b(encoded(driver.outputs)).hexdigest(), driver.engine.state_hash()]
    script = (
        "import random, hashlib, json, ledger, test_matching_reference as t\n"
        "d = t.run_stream(t.random_commands(random.Random(11), 2_000))\n"
        "print(json.dumps([hashlib.blake2b(t.encoded(d.outputs)).hexdigest(), d.engine.state_hash()]))\n"
    )
    tests = str(Path(__file__).parent)
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed,
               "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        assert json.loads(done.stdout) == here


def test_replay_of_outputs_rebuilds_the_same_state() -> None:
    driver = run_stream(random_commands(random.Random(5), 5_000))
    rebuilt = MatchingEngine(SYMBOL.name)
    for output in driver.outputs:
        rebuilt.apply(OUTPUTS.decode(OUTPUTS.encode(output)))
    assert rebuilt.state_hash() == driver.engine.state_hash()
    assert rebuilt.last_input_seq == driver.engine.last_input_seq
    rebuilt.book.check()


@settings(max_examples=30, deadline=None)
@given(command_streams(), st.floats(0, 1))
def test_snapshot_at_k_plus_the_rest_equals_the_whole(commands: list[tuple[Any, ...]], where: float) -> None:
    driver = run_stream(commands)
    outputs = driver.outputs
    k = int(len(outputs) * where)
    # By outputs: snapshot the replayed engine at any output, even inside a command.
    first = MatchingEngine(SYMBOL.name)
    for output in outputs[:k]:
        first.apply(output)
    resumed = MatchingEngine.from_snapshot(first.snapshot())
    for output in outputs[k:]:
        resumed.apply(output)
    assert resumed.state_hash() == driver.engine.state_hash()
    # By inputs: a live engine snapshotted after input j continues like the original.
    j = int(len(driver.inputs) * where)
    live = MatchingEngine(SYMBOL.name)
    head = replay_inputs(live, driver.inputs[:j])
    restarted = MatchingEngine.from_snapshot(live.snapshot())
    # The definition travels in the snapshot once SymbolListed (input 0) has been seen.
    assert restarted.spec == (SYMBOL if j else None)
    tail = replay_inputs(restarted, driver.inputs[j:])
    assert encoded(head + tail) == encoded(outputs)
    assert restarted.state_hash() == driver.engine.state_hash()


def test_a_tampered_snapshot_is_refused() -> None:
    driver = run_stream(random_commands(random.Random(3), 500))
    good = json.loads(driver.engine.snapshot())
    for path, change in ((("state", "last_input_seq"), 1), (("state", "seq"), 1), (("spec", 4), 1)):
        bad = json.loads(json.dumps(good))
        bad[path[0]][path[1]] += change
        with pytest.raises(EngineError, match="does not match its hash"):
            MatchingEngine.from_snapshot(json.dumps(bad).encode())
    bad = json.loads(json.dumps(good))
    side = "asks" if bad["state"]["asks"] else "bids"
    bad["state"][side][0][3] += 1  # a resting quantity
    with pytest.raises(EngineError, match="does not match its hash"):
        MatchingEngine.from_snapshot(json.dumps(bad).encode())
    with pytest.raises(EngineError, match="not a matching snapshot"):
        MatchingEngine.from_snapshot(b"{}")


def test_every_output_type_survives_encode_and_decode() -> None:
    driver = run_stream(random_commands(random.Random(8), 3_000))
    seen = set()
    for output in driver.outputs:
        again = OUTPUTS.decode(OUTPUTS.encode(output))
        assert again == output and type(again) is type(output)
        seen.add(type(output))
    # The reference streams amend with the book's own primitives (amend_qty, amend_price),
    # not UBSCore's AmendRequested, so the amend outputs come from tests/test_amends.py.
    assert seen == set(ENGINE_OUTPUT_TYPES) - {OrderAmended, AmendRejected}


# -- with the real UBSCore: every lock is released exactly once ---------------------------


def ubscore_round(rng: random.Random, count: int) -> None:
    core = UBSCore()
    engine = MatchingEngine(SYMBOL.name)
    offset = 0
    accepted_ids: list[tuple[int, int]] = []

    def execute(command: Any) -> None:
        nonlocal offset
        pending = deque(core.execute(command, offset))
        offset += 1
        while pending:
            event = pending.popleft()
            if type(event) is OrderAccepted:
                accepted_ids.append((event.order_id, event.user))
            for output in engine.handle(event):
                pending.extend(core.settle(output))

    execute(ListAsset(1, Asset("X", 2)))
    execute(ListAsset(2, Asset("Y", 2)))
    execute(ListSymbol(3, Symbol(SYMBOL.name, "X", "Y", lot=100, tick=10, maker_fee_ppm=1_000, taker_fee_ppm=2_000)))
    for user in range(1, 5):
        execute(Deposit(user, 1, "X", 10**9))
        execute(Deposit(user, 2, "Y", 10**9))
    for request_id in range(10, 10 + count):
        if accepted_ids and rng.random() < 0.25:
            order_id, user = rng.choice(accepted_ids)
            execute(CancelOrder(user, request_id, order_id))
            continue
        _, user, side, order_type, tif, stp, qty, price, budget = place_command(rng, 4)
        execute(PlaceOrder(user, request_id, SYMBOL.name, side, qty, price, order_type, tif, budget, stp))
    for order_id, user in list(accepted_ids):
        if order_id in engine.book.orders:
            execute(CancelOrder(user, 10**6 + order_id, order_id))
    state = core.state
    assert not state.orders, "an order still holds a lock at UBSCore"
    assert all(locked == 0 for _, locked in state.totals().values())
    assert not state.conservation_problems()
    assert not engine.book.orders


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32))
def test_ubscore_settles_every_output_and_releases_every_lock(seed: int) -> None:
    ubscore_round(random.Random(seed), 150)
