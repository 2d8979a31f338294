"""The matching engine alone, against liquibook and lightmatchingengine, on one stream.

    pip install -e '.[bench]'   # liquibook and lightmatchingengine, the engines compared against
    python benchmarks/bench_matching.py [--commands 200000] [--json]

The stream (seed 42, one symbol): 70% limit orders at 10,000 +/- 50 ticks, quantity 1 to
100, buy or sell at random; 25% cancels of a resting order; 5% market orders (IOC). Each
order has its own user, so self-trade prevention never fires. The stream is fixed before
timing (cancel targets are chosen by simulating it once), then fed to each engine:

* ours: ``MatchingEngine.handle`` on ``OrderAccepted``/``CancelRequested`` events,
  emitting its full output events (trades with both users and orders, rests, expiries);
* liquibook (C++ through SWIG): ``DepthOrderBook.add`` / ``cancel`` with an order listener
  counting fills; market orders use price 0 with immediate-or-cancel;
* lightmatchingengine (pure Python): ``add_order`` / ``cancel_order``; a market order's
  remainder is cancelled at once (it would otherwise rest at price 0).

All three must report the same number of filled lots (and ours and lightmatchingengine
the same number of maker fills); the script exits non-zero otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from typing import Any

import msgspec

from ledger.gctune import relaxed_gc
from ledger.protocol.commands import OrderType, SelfTrade, Side, TimeInForce
from ledger.protocol.events import CancelRequested, OrderAccepted, SymbolListed
from ledger.protocol.market import Symbol
from ledger.protocol.outputs import Trade
from matching.engine import MatchingEngine

SYMBOL = Symbol("BENCH", "B", "Q", lot=1, tick=1)


def make_stream(count: int, seed: int = 42) -> list[tuple]:
    """Commands as plain tuples: ('L', id, is_buy, price, qty), ('M', id, is_buy, qty),
    ('C', id). Cancel targets are resting orders, found by simulating with our engine."""
    rng = random.Random(seed)
    engine = MatchingEngine(SYMBOL.name, SYMBOL)
    stream: list[tuple] = []
    resting: list[int] = []
    resting_set: set[int] = set()
    seq = 0
    while len(stream) < count:
        seq += 1
        roll = rng.random()
        if roll < 0.25 and resting:
            index = rng.randrange(len(resting))
            order_id = resting[index]
            resting[index] = resting[-1]
            resting.pop()
            if order_id not in engine.book.orders:
                resting_set.discard(order_id)
                continue
            resting_set.discard(order_id)
            stream.append(("C", order_id))
            engine.handle(CancelRequested(seq, 0, order_id, seq, order_id, SYMBOL.name))
            continue
        is_buy = rng.random() < 0.5
        qty = rng.randint(1, 100)
        if roll < 0.30:
            stream.append(("M", seq, is_buy, qty))
            event = _accepted(seq, is_buy, qty, 0, market=True)
        else:
            price = 10_000 + rng.randint(-50, 50)
            stream.append(("L", seq, is_buy, price, qty))
            event = _accepted(seq, is_buy, qty, price)
        engine.handle(event)
        if seq in engine.book.orders:
            resting.append(seq)
            resting_set.add(seq)
    return stream


def _accepted(order_id: int, is_buy: bool, qty: int, price: int, market: bool = False,
              seq: int | None = None) -> OrderAccepted:
    side = Side.BUY if is_buy else Side.SELL
    budget = 10**12 if market and is_buy else 0
    seq = order_id if seq is None else seq
    return OrderAccepted(
        seq, 0, order_id, seq, order_id, SYMBOL.name, side,
        OrderType.MARKET if market else OrderType.LIMIT,
        TimeInForce.IOC if market else TimeInForce.GTC, SelfTrade.CANCEL_TAKER, qty, price, budget, "Q", 1, 0, 1,
    )


def run_ours(stream: list[tuple]) -> dict[str, Any]:
    # The engine takes balance events in balance.events order: seq 1 is SymbolListed,
    # then one seq per command.
    events: list[Any] = []
    for seq, command in enumerate(stream, start=2):
        if command[0] == "C":
            order_id = command[1]
            events.append(CancelRequested(seq, 0, order_id, seq, order_id, SYMBOL.name))
        elif command[0] == "M":
            events.append(_accepted(command[1], command[2], command[3], 0, market=True, seq=seq))
        else:
            events.append(_accepted(command[1], command[2], command[4], command[3], seq=seq))
    engine = MatchingEngine(SYMBOL.name)
    engine.handle(SymbolListed(1, 0, 1, SYMBOL))
    handle = engine.handle
    maker_fills = filled = outputs = 0
    started = time.perf_counter()
    # Like the other two runners, count fills as they come and keep nothing.
    for event in events:
        batch = handle(event)
        outputs += len(batch)
        for output in batch:
            if type(output) is Trade:
                maker_fills += 1
                filled += output.qty
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "maker_fills": maker_fills, "filled_lots": filled, "outputs": outputs}


def run_lightmatchingengine(stream: list[tuple]) -> dict[str, Any]:
    from lightmatchingengine.lightmatchingengine import LightMatchingEngine
    from lightmatchingengine.lightmatchingengine import Side as LSide

    engine = LightMatchingEngine()
    ids: dict[int, int] = {}
    maker_fills = filled = 0
    started = time.perf_counter()
    for command in stream:
        kind = command[0]
        if kind == "C":
            engine.cancel_order(ids.pop(command[1]), "X")
            continue
        if kind == "M":
            order, trades = engine.add_order("X", 0.0, command[3], LSide.BUY if command[2] else LSide.SELL)
            if order.leaves_qty > 0:
                engine.cancel_order(order.order_id, "X")
        else:
            side = LSide.BUY if command[2] else LSide.SELL
            order, trades = engine.add_order("X", float(command[3]), command[4], side)
            if order.leaves_qty > 0:
                ids[command[1]] = order.order_id
        for trade in trades:
            if trade.order_id != order.order_id:  # passive executions: one per maker fill
                maker_fills += 1
                filled += trade.trade_qty
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "maker_fills": maker_fills, "filled_lots": filled}


def run_liquibook(stream: list[tuple]) -> dict[str, Any]:
    import liquibook as lb

    fills = {"count": 0, "qty": 0}

    class Listener(lb.OrderListener):  # type: ignore[misc]
        def on_fill(self, order: Any, matched: Any, qty: int, cost: int) -> None:
            fills["count"] += 1
            fills["qty"] += qty

        def on_accept(self, order: Any) -> None:
            pass

        def on_reject(self, order: Any, reason: Any) -> None:
            pass

        def on_cancel(self, order: Any) -> None:
            pass

        def on_cancel_reject(self, order: Any, reason: Any) -> None:
            pass

        def on_replace(self, order: Any, delta: int, price: int) -> None:
            pass

        def on_replace_reject(self, order: Any, reason: Any) -> None:
            pass

        def on_trigger_stop(self, order: Any) -> None:
            pass

    book = lb.DepthOrderBook()
    listener = Listener()
    book.set_order_listener(listener)
    orders: dict[int, Any] = {}
    add, cancel = book.add, book.cancel
    no_conditions, ioc = lb.oc_no_conditions, lb.oc_immediate_or_cancel
    # Its input objects are made before timing, as ours (OrderAccepted events) are.
    inputs: list[tuple[Any, Any]] = []
    for command in stream:
        kind = command[0]
        if kind == "C":
            inputs.append((None, orders[command[1]]))
        elif kind == "M":
            inputs.append((lb.SimpleOrder(command[2], 0, command[3]), ioc))
        else:
            order = orders[command[1]] = lb.SimpleOrder(command[2], command[3], command[4])
            inputs.append((order, no_conditions))
    started = time.perf_counter()
    for order, conditions in inputs:
        if order is None:
            cancel(conditions)
        else:
            add(order, conditions)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "fill_callbacks": fills["count"], "filled_lots": fills["qty"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="run all three engines at CPython's default collector settings instead of relaxed_gc()",
    )
    args = parser.parse_args()
    stream = make_stream(args.commands, args.seed)
    # All three engines run under the same collector settings: by default the relaxed
    # ones the ledger's own loops use (ledger.gctune), or CPython's with --default-gc.
    collector = contextlib.nullcontext() if args.default_gc else relaxed_gc()
    results: dict[str, Any] = {"commands": len(stream), "collector": "default" if args.default_gc else "relaxed"}
    with collector:
        results["ours"] = run_ours(stream)
        for name, runner in (("lightmatchingengine", run_lightmatchingengine), ("liquibook", run_liquibook)):
            try:
                results[name] = runner(stream)
            except ImportError as error:
                results[name] = {"error": f"not installed: {error}"}
    problems = []
    for name, result in results.items():
        if isinstance(result, dict) and "seconds" in result:
            result["commands_per_s"] = round(len(stream) / result["seconds"])
            result["seconds"] = round(result["seconds"], 3)
            if result["filled_lots"] != results["ours"]["filled_lots"]:
                problems.append(f"{name} filled {result['filled_lots']} lots, ours {results['ours']['filled_lots']}")
    lme = results.get("lightmatchingengine", {})
    if "maker_fills" in lme and lme["maker_fills"] != results["ours"]["maker_fills"]:
        ours_fills = results["ours"]["maker_fills"]
        problems.append(f"lightmatchingengine made {lme['maker_fills']} maker fills, ours {ours_fills}")
    ours = results["ours"]["commands_per_s"]
    for name in ("liquibook", "lightmatchingengine"):
        if "commands_per_s" in results[name]:
            results[f"ours_vs_{name}"] = round(ours / results[name]["commands_per_s"], 3)
    results["problems"] = problems
    if args.json:
        print(msgspec.json.encode(results).decode())
    else:
        print(f"stream: {len(stream):,} commands (seed {args.seed}), collector {results['collector']}")
        for name in ("ours", "liquibook", "lightmatchingengine"):
            r = results[name]
            if "error" in r:
                print(f"  {name:<20} {r['error']}")
            else:
                print(f"  {name:<20} {r['commands_per_s']:>10,} commands/s   filled lots {r['filled_lots']:,}")
        for name in ("liquibook", "lightmatchingengine"):
            if f"ours_vs_{name}" in results:
                print(f"  ours / {name}: {results[f'ours_vs_{name}']}x")
        for problem in problems:
            print(f"  MISMATCH: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
