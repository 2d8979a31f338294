"""Workloads planned in advance, for the services (``ledger load``) and for comparing two
runs of the same commands.

Every command is fixed before the first is sent, so nothing depends on how a run
interleaves settlement with commands: each user's deposits, all made first, cover every
lock its orders take and every withdrawal it makes, so no command's fate depends on trade
proceeds or on when a lock is released. Cancels name their order by the placing command's
``(user, request_id)`` (the order id UBSCore gives differs between runs). Two runs of
such a workload (the services, the in-process exchange) end with the same balances,
trades, order outcomes and books, up to which component refuses a cancel that meets an
order already filled.

Request ids run ``request_id_base + 1`` .. ``request_id_base + len(workload)``, one per
command. A second workload sent onto the same deployment must start above the first's
ids: UBSCore answers a repeated ``(user, request_id)`` as a retry (``DUPLICATE_REQUEST``
if the command is the same, ``REQUEST_ID_CONFLICT`` if not), and an id older than the
request window as a new request. ``request_id_base_after(log)`` gives such a base for
workloads sent by ``send_workload`` alone: the command log's end offset, which is at
least the number of commands in it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence

import msgspec

from ledger.app.demo import ASSETS, SYMBOLS
from ledger.app.producer import CommandProducer
from ledger.logs.base import Log
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
from ledger.protocol.limits import REQUEST_ID_MAX
from ledger.protocol.market import Symbol

# Open orders a user's cancels choose from (the most recent ones).
CANCEL_TARGETS_PER_USER = 8
# Sizes the planner accepts: a load for a test or a look at the pipeline, not a soak.
LOAD_USERS_MAX = 100_000
LOAD_COMMANDS_MAX = 10_000_000
# Commands per append when sending as fast as possible: one producer flush (one fsync on
# a file log) per chunk.
LOAD_CHUNK_COMMANDS = 5_000
# A paced send appends what falls due in this long at once, so a high rate is not one
# append per command.
LOAD_PACE_TICK_S = 0.02
# The fastest pace ``send_workload`` accepts (commands/s); beyond it, send unpaced.
LOAD_RATE_MAX = 1_000_000


def planned_ids(commands: int, users: int, symbols: int) -> int:
    """How many request ids ``planned_workload`` uses (one per command it returns)."""
    return len(ASSETS) + symbols + users * (1 + symbols) + commands


def planned_workload(
    seed: int, commands: int, users: int = 200, symbols: int = 3, request_id_base: int = 0
) -> list[Command]:
    """``commands`` commands after the listings and deposits: limit orders of every
    time in force, market orders, cancels by client order id, deposits and withdrawals,
    from ``users`` users over the first ``symbols`` demo symbols. Deterministic for a
    seed. Request ids are ``request_id_base + 1`` onwards, one per command."""
    if not 1 <= users <= LOAD_USERS_MAX:
        raise ValueError(f"users {users}: 1..{LOAD_USERS_MAX:,}")
    if not 0 <= commands <= LOAD_COMMANDS_MAX:
        raise ValueError(f"commands {commands}: 0..{LOAD_COMMANDS_MAX:,}")
    if not 1 <= symbols <= len(SYMBOLS):
        raise ValueError(f"symbols {symbols}: 1..{len(SYMBOLS)}")
    ids_max = REQUEST_ID_MAX - planned_ids(commands, users, symbols)
    if not 0 <= request_id_base <= ids_max:
        raise ValueError(f"request id base {request_id_base}: 0..{ids_max:,} for this workload")
    rng = random.Random(seed)
    chosen = SYMBOLS[:symbols]
    request_id = request_id_base

    def next_id() -> int:
        nonlocal request_id
        request_id += 1
        return request_id

    setup: list[Command] = [ListAsset(next_id(), asset) for asset in ASSETS]
    for name, base, lot, tick, _mid in chosen:
        setup.append(
            ListSymbol(next_id(), Symbol(name, base, "USDT", lot, tick, maker_fee_ppm=500, taker_fee_ppm=1_000))
        )
    # What each user needs, per asset: every lock and withdrawal of the plan.
    needs: dict[tuple[int, str], int] = {}
    plan: list[Command] = []
    placed: dict[int, list[int]] = {}  # user -> request ids of its orders that may rest
    # The up-front deposits' request ids come first; the plan's follow them.
    deposit_first = request_id
    request_id += users * (1 + len(chosen))
    for i in range(commands):
        user = rng.randint(1, users)
        name, base, lot, tick, mid = chosen[rng.randrange(len(chosen))]
        roll = rng.random()
        ts_ms = i
        if roll < 0.12 and placed.get(user):
            targets = placed[user]
            order_request = targets.pop(rng.randrange(len(targets)))
            plan.append(CancelOrder(user, next_id(), 0, ts_ms, order_request_id=order_request))
            continue
        if roll < 0.17:
            asset = rng.choice(["USDT", base])
            amount = rng.randint(1, 50) * (lot if asset == base else 10**6)
            if rng.random() < 0.5:
                plan.append(Deposit(user, next_id(), asset, amount, ts_ms))
            else:
                plan.append(Withdraw(user, next_id(), asset, amount, ts_ms))
                needs[(user, asset)] = needs.get((user, asset), 0) + amount
            continue
        side = Side(rng.randint(0, 1))
        qty = rng.randint(1, 20)
        rid = next_id()
        if roll < 0.23:
            budget = rng.randint(1, 20) * mid * tick if side == Side.BUY else 0
            plan.append(
                PlaceOrder(
                    user,
                    rid,
                    name,
                    side,
                    qty,
                    0,
                    OrderType.MARKET,
                    TimeInForce.IOC,
                    budget,
                    SelfTrade.CANCEL_TAKER,
                    ts_ms,
                )
            )
            lock = (budget, "USDT") if side == Side.BUY else (qty * lot, base)
        else:
            offset = rng.randint(-15, 15)
            price = mid + (offset if side == Side.SELL else -offset)
            tif = TimeInForce(rng.choices([0, 1, 2, 3], weights=[80, 8, 4, 8])[0])
            stp = SelfTrade(rng.choices([0, 1, 2], weights=[90, 5, 5])[0])
            plan.append(PlaceOrder(user, rid, name, side, qty, price, OrderType.LIMIT, tif, 0, stp, ts_ms))
            lock = (qty * price * tick, "USDT") if side == Side.BUY else (qty * lot, base)
            if tif == TimeInForce.GTC:
                targets = placed.setdefault(user, [])
                targets.append(rid)
                if len(targets) > CANCEL_TARGETS_PER_USER:
                    del targets[0]
        needs[(user, lock[1])] = needs.get((user, lock[1]), 0) + lock[0]
    deposits: list[Command] = []
    for user in range(1, users + 1):
        for asset in ["USDT", *[c[1] for c in chosen]]:
            # A margin over the plan's needs, so a lock never waits for anything.
            deposit_first += 1
            deposits.append(Deposit(user, deposit_first, asset, needs.get((user, asset), 0) * 2 + 10**9))
    return setup + deposits + plan


class LoadReport(msgspec.Struct, frozen=True):
    """What ``send_workload`` did: commands appended, offsets of the first and last, and
    how long it took."""

    commands: int
    first_offset: int
    last_offset: int
    appends: int
    seconds: float


def request_id_base_after(log: Log) -> int:
    """A request id base above every id of the workloads already on ``log`` when each
    was sent with the base this returned: the log's end offset (one command per offset,
    offsets never below the count of records)."""
    return log.end_offset()


def send_workload(
    log: Log,
    commands: Sequence[Command],
    rate_per_s: float | None = None,
    chunk_commands: int = LOAD_CHUNK_COMMANDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> LoadReport:
    """Append ``commands`` to ``log`` (balance.operations) in order through a
    ``CommandProducer``: in chunks of ``chunk_commands`` as fast as the log takes them,
    or paced at ``rate_per_s`` (command i is due ``i / rate_per_s`` seconds after the
    start; what falls due within ``LOAD_PACE_TICK_S`` goes in one append)."""
    if rate_per_s is not None and not 0 < rate_per_s <= LOAD_RATE_MAX:
        raise ValueError(f"rate {rate_per_s}: more than 0, at most {LOAD_RATE_MAX:,} commands/s")
    if chunk_commands < 1:
        raise ValueError(f"chunk of {chunk_commands} commands: at least 1")
    chunk = chunk_commands
    if rate_per_s is not None:
        chunk = max(1, min(chunk_commands, math.ceil(rate_per_s * LOAD_PACE_TICK_S)))
    producer = CommandProducer(log)
    started = clock()
    first = last = -1
    appends = 0
    for start in range(0, len(commands), chunk):
        if rate_per_s is not None:
            wait_s = started + start / rate_per_s - clock()
            if wait_s > 0:
                sleep(wait_s)
        part = commands[start : start + chunk]
        offset = producer.send(part)
        appends += 1
        if first < 0:
            first = offset
        last = offset + len(part) - 1
    return LoadReport(len(commands), first, last, appends, clock() - started)


__all__ = [
    "LOAD_CHUNK_COMMANDS",
    "LOAD_COMMANDS_MAX",
    "LOAD_PACE_TICK_S",
    "LOAD_RATE_MAX",
    "LOAD_USERS_MAX",
    "LoadReport",
    "planned_ids",
    "planned_workload",
    "request_id_base_after",
    "send_workload",
]
