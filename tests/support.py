"""Test support, shared by the test modules (which never import each other): the real
services' addresses, a deliberately naive matcher and a driver for UBSCore property
tests, the conservation check every test ends with, and whole-exchange workloads.

The naive matcher is not the product's engine: it exists so UBSCore's settlement can be
tested on its own, with outputs that are valid (trades at the maker's price, within the
taker's limit and budget, each order ending exactly once) but produced by the simplest
code possible. It ignores the taker's own orders instead of applying self-trade
prevention.
"""

from __future__ import annotations

import os
from typing import Any

from ledger.app.demo import Workload
from ledger.app.exchange import Exchange
from ledger.logs import layout
from ledger.logs.base import Log, MemoryLog, scan
from ledger.protocol.codec import COMMANDS, EVENTS, OUTPUTS, DecodeError
from ledger.protocol.commands import CancelOrder, Command, ListAsset, ListSymbol, OrderType, Side, TimeInForce
from ledger.protocol.events import (
    BalanceEvent,
    CancelRequested,
    FundsUnlocked,
    OrderAccepted,
    Rejected,
    SymbolListed,
    TradeSettled,
)
from ledger.protocol.market import Asset, Symbol
from ledger.protocol.outputs import EngineOutput, OrderCancelled, OrderExpired, OrderRejected, OrderRested, Trade
from ledger.protocol.reasons import Reason
from ledger.rebuild import replay
from ledger.ubscore import UBSCore
from matching.engine import MatchingEngine

# -- real services ----------------------------------------------------------------------
# Where the servers scripts/services.sh starts listen; conftest.py probes them.
KAFKA_BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}")
CASSANDRA_PORT = int(os.environ.get("CASSANDRA_PORT", "9042"))


class NaiveMatcher:
    """All symbols, open orders in one list each, scanned linearly."""

    def __init__(self) -> None:
        self.symbols: dict[str, Any] = {}
        self.book: dict[str, list[list[Any]]] = {}  # symbol -> [[order_id, user, side, price, qty]]
        self.seq: dict[str, int] = {}

    def _out(self, symbol: str, kind: type, *fields: Any) -> EngineOutput:
        self.seq[symbol] = self.seq.get(symbol, 0) + 1
        return kind(self.seq[symbol], symbol, *fields)  # type: ignore[no-any-return]

    def handle(self, event: BalanceEvent) -> list[EngineOutput]:
        if type(event) is SymbolListed:
            self.symbols[event.symbol.name] = event.symbol
            self.book[event.symbol.name] = []
            return []
        if type(event) is CancelRequested:
            book = self.book[event.symbol]
            for row in book:
                if row[0] == event.order_id:
                    book.remove(row)
                    return [
                        self._out(
                            event.symbol, OrderCancelled, event.seq, row[0], row[1], row[4],
                            int(Reason.CANCELLED_BY_USER),
                        )
                    ]
            return [self._out(event.symbol, OrderRejected, event.seq, event.order_id, event.user,
                              int(Reason.UNKNOWN_ORDER))]
        if type(event) is not OrderAccepted:
            return []
        return self._place(event)

    def _place(self, o: OrderAccepted) -> list[EngineOutput]:
        symbol = self.symbols[o.symbol]
        book = self.book[o.symbol]
        buy = o.side == Side.BUY
        market = o.order_type == OrderType.MARKET

        def crosses(row: list[Any]) -> bool:
            if row[2] == o.side or row[1] == o.user:
                return False
            return market or (row[3] <= o.price if buy else row[3] >= o.price)

        makers = sorted(
            (r for r in book if crosses(r)),
            key=lambda r: (r[3] if buy else -r[3], book.index(r)),
        )
        if o.tif == TimeInForce.POST_ONLY and makers:
            return [self._out(o.symbol, OrderRejected, o.seq, o.order_id, o.user,
                              int(Reason.POST_ONLY_WOULD_TAKE))]
        qty, budget = o.qty, o.quote_budget
        fills: list[tuple[list[Any], int]] = []
        for row in makers:
            if qty == 0:
                break
            take = min(qty, row[4])
            if market and buy:
                take = min(take, budget // (row[3] * symbol.tick))
                if take == 0:
                    break
                budget -= take * row[3] * symbol.tick
            fills.append((row, take))
            qty -= take
        if o.tif == TimeInForce.FOK and qty > 0:
            return [self._out(o.symbol, OrderExpired, o.seq, o.order_id, o.user, o.qty,
                              int(Reason.FOK_NOT_FILLABLE))]
        outputs: list[EngineOutput] = []
        remaining = o.qty
        for row, take in fills:
            row[4] -= take
            remaining -= take
            if row[4] == 0:
                book.remove(row)
            outputs.append(
                self._out(
                    o.symbol, Trade, o.seq, self.seq.get(o.symbol, 0) + 1, row[3], take, Side(row[2]),
                    row[1], row[0], o.user, o.order_id, 0 if market else o.price, row[4] == 0,
                    remaining == 0,
                )
            )
        if remaining > 0:
            if o.tif in (TimeInForce.GTC, TimeInForce.POST_ONLY) and not market:
                book.append([o.order_id, o.user, o.side, o.price, remaining])
                outputs.append(self._out(o.symbol, OrderRested, o.seq, o.order_id, o.user, o.side,
                                         o.price, remaining))
            else:
                outputs.append(self._out(o.symbol, OrderExpired, o.seq, o.order_id, o.user, remaining,
                                         int(Reason.IOC_REMAINDER)))
        return outputs


def run_exchange(commands: list[Command]) -> tuple[UBSCore, list[BalanceEvent]]:
    """Run commands through UBSCore and the naive matcher until both are quiet."""
    core = UBSCore()
    matcher = NaiveMatcher()
    events: list[BalanceEvent] = []
    for offset, command in enumerate(commands):
        pending = core.execute(command, offset)
        while pending:
            event = pending.pop(0)
            events.append(event)
            for output in matcher.handle(event):
                pending.extend(core.settle(output))
    return core, events


def seeded_commands(seed: int, count: int, users: int = 20) -> list[Command]:
    """A long, valid-heavy random stream (deterministic for a seed) for soak-style tests."""
    import random

    from ledger.protocol.commands import CancelOrder, Deposit, PlaceOrder, Withdraw
    from ledger.strategies import DEFAULT_MARKET, listing_commands

    rng = random.Random(seed)
    commands: list[Command] = listing_commands(DEFAULT_MARKET)
    symbols = sorted(DEFAULT_MARKET.symbols)
    assets = sorted(DEFAULT_MARKET.assets)
    request_id = 0
    placed = 0
    limit_requests: list[tuple[int, int]] = []
    for user in range(1, users + 1):
        for asset in assets:
            request_id += 1
            commands.append(Deposit(user, request_id, asset, 10**13))
    for _ in range(count):
        request_id += 1
        user = rng.randint(1, users)
        roll = rng.random()
        if roll < 0.05:
            commands.append(Deposit(user, request_id, rng.choice(assets), rng.randint(1, 10**10)))
        elif roll < 0.08:
            commands.append(Withdraw(user, request_id, rng.choice(assets), rng.randint(1, 10**10)))
        elif roll < 0.20 and placed:
            # Order ids are the seq of the OrderAccepted; aim near recent ones.
            commands.append(CancelOrder(user, request_id, rng.randint(1, len(commands) * 3)))
        elif roll < 0.25 and placed:
            # By client order id: a recent limit order's placing request (open or not).
            owner, placing = rng.choice(limit_requests[-100:])
            commands.append(CancelOrder(owner, request_id, 0, order_request_id=placing))
        elif roll < 0.30:
            commands.append(
                PlaceOrder(user, request_id, rng.choice(symbols), Side(rng.randint(0, 1)), rng.randint(1, 50),
                           order_type=OrderType.MARKET, tif=TimeInForce.IOC,
                           quote_budget=rng.randint(10**5, 10**8) if rng.random() < 0.5 else 0)
            )
        else:
            placed += 1
            limit_requests.append((user, request_id))
            commands.append(
                PlaceOrder(user, request_id, rng.choice(symbols), Side(rng.randint(0, 1)), rng.randint(1, 50),
                           rng.randint(95, 105), tif=TimeInForce(rng.choice([0, 0, 0, 1, 2, 3])))
            )
    return commands


# -- conservation -----------------------------------------------------------------------


def assert_conserved(core: UBSCore) -> None:
    """Money is never created, destroyed or overdrawn, and every lock belongs to an order."""
    assert core.state.conservation_problems() == []
    for user, account in core.state.accounts.items():
        assert all(value >= 0 for value in account), (user, account)
    # Every open order's lock is inside its owner's locked balance, and the locked
    # balances are exactly the sum of the open orders' locks (nothing locked for nobody).
    locked: dict[tuple[int, int], int] = {}
    for order in core.state.orders.values():
        key = (order[0], order[5])
        locked[key] = locked.get(key, 0) + order[6]
    for user, account in core.state.accounts.items():
        for index in range(len(account) // 2):
            assert account[2 * index + 1] == locked.get((user, index), 0), (user, index)
    # The open orders by placing request are exactly the open orders: an ended order
    # leaves no entry behind, so the map is bounded by the open orders.
    named = {order[8]: order_id for order_id, order in core.state.orders.items()}
    assert all(key >> 64 == core.state.orders[order_id][0] for key, order_id in named.items())
    assert core.state.order_ids_by_request == named


# -- whole-exchange workloads -----------------------------------------------------------

BTC = 10**8  # satoshi per BTC
USDT = 10**6  # minor units per USDT
# lot 0.01 BTC; price in whole USDT per BTC, so one price step of one lot is 0.01 USDT.
BTC_USDT = Symbol("BTC-USDT", "BTC", "USDT", lot=10**6, tick=10**4, maker_fee_ppm=1_000, taker_fee_ppm=2_000)


def _memory_exchange(commands_name: str, events_name: str) -> tuple[Exchange, dict[str, MemoryLog]]:
    outputs: dict[str, MemoryLog] = {}

    def output_log(symbol: str) -> MemoryLog:
        outputs[symbol] = MemoryLog(f"engine.outputs/{symbol}")
        return outputs[symbol]

    return Exchange(MemoryLog(commands_name), MemoryLog(events_name), output_log), outputs


def new_exchange() -> tuple[Exchange, dict[str, MemoryLog]]:
    """An in-memory exchange listing BTC, USDT and BTC_USDT; the engines' output logs by symbol."""
    exchange, outputs = _memory_exchange("balance.operations", "balance.events")
    exchange.submit([ListAsset(1, Asset("BTC", 8)), ListAsset(2, Asset("USDT", 6)), ListSymbol(3, BTC_USDT)])
    return exchange, outputs


def run_workload(seed: int, orders: int, users: int = 12, symbols: int = 2) -> tuple[Exchange, dict[str, MemoryLog]]:
    """The demo's random workload (deterministic for a seed) through an in-memory exchange."""
    exchange, outputs = _memory_exchange("ops", "events")
    workload = Workload(seed, users, symbols)
    workload.observe(exchange.submit(workload.setup()))
    for start in range(0, orders, 250):
        batch = [workload.next(ts_ms=start + i) for i in range(min(250, orders - start))]
        workload.observe(exchange.submit(batch))
    return exchange, outputs


# -- outcomes of two runs of the same commands, keyed by client request ------------------


def records(log: Log) -> list[bytes]:
    return [bytes(v) for batch in scan(log) for v in batch.values]


def outcome(commands: Log, events: Log, outputs: dict[str, Log]) -> dict[str, Any]:
    """Everything two runs of the same commands must agree on, keyed by request."""
    core = replay(events)
    state = core.state
    by_order: dict[int, tuple[int, int]] = {}
    answers: dict[tuple[int, int], tuple[str, int]] = {}
    trades: dict[str, list[tuple[Any, ...]]] = {}
    ends: dict[tuple[int, int], int] = {}
    filled: dict[tuple[int, int], int] = {}
    command_at: dict[int, Any] = {}
    for batch in scan(commands):
        for offset, raw in zip(batch.offsets, batch.values, strict=True):
            try:
                command_at[offset] = COMMANDS.decode(raw)
            except DecodeError:
                command_at[offset] = None  # answered MALFORMED_COMMAND
    for raw in records(events):
        event = EVENTS.decode(raw)
        kind = type(event)
        if kind is OrderAccepted:
            by_order[event.order_id] = (event.user, event.request_id)
        if getattr(event, "input_offset", -1) >= 0:
            command = command_at[event.input_offset]
            if command is not None and type(command) is not CancelOrder and hasattr(command, "user"):
                reason = event.reason if kind is Rejected else 0
                answers[(command.user, command.request_id)] = (kind.__name__, reason)
        elif kind is TradeSettled:
            maker, taker = by_order[event.maker_order_id], by_order[event.taker_order_id]
            trades.setdefault(event.symbol, []).append(
                (maker, taker, event.price, event.qty, event.maker_fee, event.taker_fee, event.taker_refund)
            )
            filled[maker] = filled.get(maker, 0) + event.qty
            filled[taker] = filled.get(taker, 0) + event.qty
        elif kind is FundsUnlocked:
            ends[by_order[event.order_id]] = event.reason
    books = {}
    for symbol, log in sorted(outputs.items()):
        engine = MatchingEngine(symbol)
        for raw in records(log):
            engine.apply(OUTPUTS.decode(raw))
        canonical = engine.canonical()
        books[symbol] = [
            [(by_order[o], price, remaining) for o, _user, price, remaining in canonical[side]]
            for side in ("bids", "asks")
        ]
    balances = {
        (user, asset.code): state.balance(user, asset.code) for user in sorted(state.accounts) for asset in state.assets
    }
    open_orders = sorted(by_order[o] for o in state.orders)
    return {
        "balances": balances,
        "trades": trades,
        "ends": ends,
        "filled": filled,
        "books": books,
        "answers": answers,
        "open": open_orders,
        "conservation": state.conservation_problems(),
    }


def in_process(commands: list[Any], batch: int = 1_000) -> tuple[Exchange, dict[str, MemoryLog]]:
    outputs: dict[str, MemoryLog] = {}

    def output_log(symbol: str) -> MemoryLog:
        outputs[symbol] = MemoryLog(layout.output_stream(symbol))
        return outputs[symbol]

    exchange = Exchange(MemoryLog(layout.OPERATIONS), MemoryLog(layout.EVENTS), output_log)
    for start in range(0, len(commands), batch):
        exchange.submit(commands[start : start + batch])
    return exchange, outputs


def exchange_outcome(commands: list[Any]) -> dict[str, Any]:
    exchange, outputs = in_process(commands)
    return outcome(exchange.operations, exchange.events, outputs)


def answer_commands(commands: Log, events: Log, batch: int = 500) -> tuple[int, UBSCore]:
    """Run the UBSCore service over ``commands`` into ``events`` until it is idle (no
    engine runs: only commands are answered); return how many inputs it handled and the
    state replayed from ``events``."""
    from ledger.app.services import Stopper, UBSCoreService, run_services
    from ledger.app.streams import MemoryStreams

    service = UBSCoreService(MemoryStreams.of(commands, events), batch, 0)
    run_services([service], Stopper(), idle_exit_s=0.05, summary_every_s=0)
    return service.counters.inputs, replay(events)
