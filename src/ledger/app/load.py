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
"""

from __future__ import annotations

import random

from ledger.app.demo import ASSETS, SYMBOLS
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
from ledger.protocol.market import Symbol

# Open orders a user's cancels choose from (the most recent ones).
CANCEL_TARGETS_PER_USER = 8
# Sizes the planner accepts: a load for a test or a look at the pipeline, not a soak.
LOAD_USERS_MAX = 100_000
LOAD_COMMANDS_MAX = 10_000_000


def planned_workload(seed: int, commands: int, users: int = 200, symbols: int = 3) -> list[Command]:
    """About ``commands`` commands after the listings and deposits: limit orders of every
    time in force, market orders, cancels by client order id, deposits and withdrawals,
    from ``users`` users over the first ``symbols`` demo symbols. Deterministic for a
    seed."""
    if not 1 <= users <= LOAD_USERS_MAX:
        raise ValueError(f"users {users}: 1..{LOAD_USERS_MAX:,}")
    if not 0 <= commands <= LOAD_COMMANDS_MAX:
        raise ValueError(f"commands {commands}: 0..{LOAD_COMMANDS_MAX:,}")
    if not 1 <= symbols <= len(SYMBOLS):
        raise ValueError(f"symbols {symbols}: 1..{len(SYMBOLS)}")
    rng = random.Random(seed)
    chosen = SYMBOLS[:symbols]
    request_id = 0

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


__all__ = ["LOAD_COMMANDS_MAX", "LOAD_USERS_MAX", "planned_workload"]
