"""``ledger demo``: a whole exchange on the embedded file logs, then proof from the logs.

It generates a deterministic workload (same options, same seed: same commands, same
events, same hashes), runs it through the in-process exchange, then rebuilds every state
from the logs alone and checks it against the live one: UBSCore's hash, each engine's
hash, the engines' outputs byte for byte when re-run, and conservation of every asset.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import msgspec

from ledger.app.exchange import Exchange, verify
from ledger.logs import layout
from ledger.logs.file import FileLog, FsyncPolicy
from ledger.progress import Progress
from ledger.protocol.commands import (
    CancelOrder,
    Command,
    Deposit,
    ListAsset,
    ListSymbol,
    OrderType,
    PlaceOrder,
    SelfTrade,
    Side,
    TimeInForce,
    Withdraw,
)
from ledger.protocol.events import OrderAccepted, Rejected, TradeSettled
from ledger.protocol.market import Asset, Symbol

MARKER = "LEDGER_DEMO"
# Commands handed to the exchange at a time: one append (and one fsync) per log per batch.
BATCH_COMMANDS = 1_000
# Open orders the workload remembers as cancel targets; older ones are forgotten.
CANCEL_TARGETS_MAX = 2_000
# The setup deposits of every user are one list in memory (about 1 KiB a user with four
# symbols), and the whole run is checked again from the logs: a demo, not a load test.
USERS_MAX = 100_000
# Orders run in batches, so memory stays flat; this bounds the time (minutes, not days).
ORDERS_MAX = 10_000_000

ASSETS = [Asset("USDT", 6), Asset("BTC", 8), Asset("ETH", 18), Asset("SOL", 9), Asset("XRP", 6)]
# name, base, lot (base units per lot), tick (quote units per lot per price step), mid price
SYMBOLS = [
    ("BTC-USDT", "BTC", 10**5, 10, 60_000),  # lot 0.001 BTC, price step 0.01 USDT/BTC... per lot
    ("ETH-USDT", "ETH", 10**16, 10, 3_000),
    ("SOL-USDT", "SOL", 10**8, 1, 1_500),
    ("XRP-USDT", "XRP", 10**7, 1, 6_000),
]


# The workload's draws, written the way Random computes them anyway (randint(a, b) is
# randrange(a, b + 1); choices turns weights into these cumulative weights; members by
# position instead of through the enum call), so the commands stay the same for a seed
# while making them takes about half the time (measured: 0.23 to 0.30 s against 0.46 to
# 0.58 s for 50,000).
_SIDES = tuple(Side)
_TIFS = tuple(TimeInForce(i) for i in range(4))  # GTC, IOC, FOK, POST_ONLY
_TIF_CUM_WEIGHTS = (85, 92, 95, 100)  # weights 85, 7, 3, 5
_STPS = tuple(SelfTrade(i) for i in range(3))
_STP_CUM_WEIGHTS = (90, 95, 100)  # weights 90, 5, 5


class DemoSummary(msgspec.Struct):
    """What ``ledger demo`` prints (and ``--json`` emits).

    ``seconds`` is the run (``commands_per_second`` its rate, workload generator
    included); it splits into ``exchange_seconds``, inside ``Exchange.submit`` with the
    logs written, and ``generator_seconds``, the rest (making the commands, watching the
    events for orders to cancel). ``check_seconds`` is everything after the run: the live
    hashes, opening the logs again and ``verify``."""

    directory: str
    seed: int
    users: int
    symbols: list[str]
    commands: int
    events: int
    engine_outputs: int
    trades: int
    orders_accepted: int
    rejections: int
    seconds: float
    commands_per_second: float
    exchange_seconds: float
    exchange_commands_per_second: float
    generator_seconds: float
    generator_commands_per_second: float
    check_seconds: float
    totals: dict[str, dict[str, int]]
    state_hashes: dict[str, str]
    replayed_hashes: dict[str, str]
    checks_ok: bool
    problems: list[str]


class Workload:
    """Deterministic commands for ``seed``; it watches accepted orders to cancel some."""

    def __init__(self, seed: int, users: int, symbols: int) -> None:
        self.rng = random.Random(seed)
        self.users = users
        self.symbols = SYMBOLS[:symbols]
        self.request_id = 0
        self.open_orders: list[tuple[int, int]] = []  # (user, order_id)

    def _next_id(self) -> int:
        self.request_id += 1
        return self.request_id

    def setup(self) -> list[Command]:
        commands: list[Command] = [ListAsset(self._next_id(), asset) for asset in ASSETS]
        for name, base, lot, tick, _mid in self.symbols:
            symbol = Symbol(name, base, "USDT", lot, tick, maker_fee_ppm=500, taker_fee_ppm=1_000)
            commands.append(ListSymbol(self._next_id(), symbol))
        for user in range(1, self.users + 1):
            commands.append(Deposit(user, self._next_id(), "USDT", 10**12))
            for _name, base, lot, _tick, _mid in self.symbols:
                commands.append(Deposit(user, self._next_id(), base, 5_000 * lot))
        return commands

    def observe(self, events: list) -> None:
        for event in events:
            if type(event) is OrderAccepted and event.tif == TimeInForce.GTC:
                self.open_orders.append((event.user, event.order_id))
        if len(self.open_orders) > CANCEL_TARGETS_MAX:
            del self.open_orders[: len(self.open_orders) - CANCEL_TARGETS_MAX]

    def next(self, ts_ms: int) -> Command:
        rng = self.rng
        roll = rng.random()
        if roll < 0.20 and self.open_orders:
            user, order_id = self.open_orders.pop(rng.randrange(len(self.open_orders)))
            return CancelOrder(user, self._next_id(), order_id, ts_ms)
        user = rng.randrange(1, self.users + 1)
        name, base, lot, _tick, mid = self.symbols[rng.randrange(len(self.symbols))]
        side = _SIDES[rng.randrange(2)]
        if roll < 0.24:
            asset = rng.choice(["USDT", base])
            amount = rng.randrange(1, 101) * (lot if asset == base else 10**6)
            if rng.random() < 0.5:
                return Deposit(user, self._next_id(), asset, amount, ts_ms)
            return Withdraw(user, self._next_id(), asset, amount, ts_ms)
        if roll < 0.29:
            budget = rng.randrange(1, 21) * mid * 10 if side == Side.BUY else 0
            return PlaceOrder(
                user,
                self._next_id(),
                name,
                side,
                rng.randrange(1, 21),
                0,
                OrderType.MARKET,
                TimeInForce.IOC,
                budget,
                SelfTrade.CANCEL_TAKER,
                ts_ms,
            )
        offset = rng.randrange(-20, 21)
        price = mid + (offset if side == Side.SELL else -offset)
        tif = rng.choices(_TIFS, cum_weights=_TIF_CUM_WEIGHTS)[0]
        stp = rng.choices(_STPS, cum_weights=_STP_CUM_WEIGHTS)[0]
        return PlaceOrder(
            user, self._next_id(), name, side, rng.randrange(1, 21), price, OrderType.LIMIT, tif, 0, stp, ts_ms
        )


class _Run(msgspec.Struct):
    """What the run leaves for the summary once the live exchange is gone."""

    symbols: list[str]
    commands: int
    events: int
    engine_outputs: int
    trades: int
    orders_accepted: int
    rejections: int
    seconds: float
    exchange_seconds: float
    generator_seconds: float
    # time.perf_counter() when the last command was done: the checks start there.
    finished: float
    totals: dict[str, dict[str, int]]
    state_hashes: dict[str, str]


def run_demo(
    directory: str | Path,
    users: int = 1_000,
    symbols: int = 2,
    orders: int = 50_000,
    seed: int = 42,
    progress: bool | None = None,
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
) -> DemoSummary:
    """Run the demo in ``directory`` (created; a previous demo there is replaced)."""
    if not 1 <= symbols <= len(SYMBOLS):
        raise ValueError(f"symbols must be 1..{len(SYMBOLS)}")
    if not 2 <= users <= USERS_MAX:
        raise ValueError(f"users must be 2..{USERS_MAX:,}")
    if not 0 <= orders <= ORDERS_MAX:
        raise ValueError(f"orders must be 0..{ORDERS_MAX:,}")
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a directory; choose another")
    if root.exists():
        if not (root / MARKER).exists() and any(root.iterdir()):
            raise ValueError(f"{root} exists and is not a ledger demo directory; choose another")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("created by ledger demo; safe to delete\n")
    # The live exchange is gone before the checks start, so they never hold two copies
    # of every state at once.
    run = _run(root, Workload(seed, users, symbols), orders, progress, fsync)
    with FileLog(layout.events_dir(root), readonly=True) as events_read:
        readers = {s: FileLog(layout.output_dir(root, s), readonly=True) for s in run.symbols}
        try:
            report = verify(events_read, dict(readers), run.state_hashes)
        finally:
            for reader in readers.values():
                reader.close()
    check_seconds = time.perf_counter() - run.finished
    return DemoSummary(
        directory=str(root),
        seed=seed,
        users=users,
        symbols=run.symbols,
        commands=run.commands,
        events=run.events,
        engine_outputs=run.engine_outputs,
        trades=run.trades,
        orders_accepted=run.orders_accepted,
        rejections=run.rejections,
        seconds=round(run.seconds, 3),
        commands_per_second=_rate(run.commands, run.seconds),
        exchange_seconds=round(run.exchange_seconds, 3),
        exchange_commands_per_second=_rate(run.commands, run.exchange_seconds),
        generator_seconds=round(run.generator_seconds, 3),
        generator_commands_per_second=_rate(run.commands, run.generator_seconds),
        check_seconds=round(check_seconds, 3),
        totals=run.totals,
        state_hashes=run.state_hashes,
        replayed_hashes=report.replayed_hashes,
        checks_ok=report.ok,
        problems=report.problems,
    )


def _run(root: Path, workload: Workload, orders: int, progress: bool | None, fsync: FsyncPolicy) -> _Run:
    """The workload through an exchange on file logs under ``root``; the logs closed."""
    operations = FileLog(layout.operations_dir(root), fsync=fsync)
    events_log = FileLog(layout.events_dir(root), fsync=fsync)
    output_logs: dict[str, FileLog] = {}

    def output_log(symbol: str) -> FileLog:
        output_logs[symbol] = FileLog(layout.output_dir(root, symbol), fsync=fsync)
        return output_logs[symbol]

    exchange = Exchange(operations, events_log, output_log)
    counts = {TradeSettled: 0, OrderAccepted: 0, Rejected: 0}
    clock = time.perf_counter
    in_exchange = 0.0

    def submit(commands: list[Command]) -> None:
        nonlocal in_exchange
        submitted = clock()
        events = exchange.submit(commands)
        in_exchange += clock() - submitted
        for event in events:
            kind = type(event)
            if kind in counts:
                counts[kind] += 1
        workload.observe(events)

    started = clock()
    setup = workload.setup()
    submit(setup)
    bar = Progress("demo", orders, enabled=progress)
    done = 0
    while done < orders:
        size = min(BATCH_COMMANDS, orders - done)
        submit([workload.next(ts_ms=1_700_000_000_000 + done + i) for i in range(size)])
        done += size
        bar.advance(size)
    bar.close()
    finished = clock()
    seconds = finished - started
    for log in (operations, events_log, *output_logs.values()):
        log.close()
    return _Run(
        symbols=sorted(output_logs),
        commands=len(setup) + orders,
        events=exchange.event_count,
        engine_outputs=exchange.output_count,
        trades=counts[TradeSettled],
        orders_accepted=counts[OrderAccepted],
        rejections=counts[Rejected],
        seconds=seconds,
        exchange_seconds=in_exchange,
        # Everything of the run that is not the exchange: making the commands, watching
        # the events for orders to cancel, counting them, the progress line.
        generator_seconds=seconds - in_exchange,
        finished=finished,
        totals=exchange.core.state.asset_totals(),
        state_hashes=exchange.state_hashes(),
    )


def _rate(commands: int, seconds: float) -> float:
    return round(commands / seconds, 1) if seconds > 0 else 0.0
