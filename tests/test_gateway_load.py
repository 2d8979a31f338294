"""The gateway under load, bounded: ``CLIENTS`` concurrent clients, each its own user and
key, trade through HTTP for ``LOAD_S`` seconds (resting and crossing limit orders,
market orders, cancels, balance reads) while ``GREEDY_CLIENTS`` of them send in bursts
above their key's rate limit. Every answer must be a 2xx or a documented 4xx (429 for
the greedy, 422 for a rejection such as INSUFFICIENT_FUNDS); none a 5xx, none a client
timeout. At the end, with every order closed and the projection caught up:

* conservation: per asset, every user's available + locked, plus the fee account
  (user 0), equals what was deposited;
* nothing stays locked;
* each user's balances are their deposits plus what their trades (GET /v1/trades) moved,
  fees included;
* each order accepted is readable (GET /v1/orders/{id}) as the user's, and closed.

The counts per status are printed (run with ``-s`` to see them)."""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway_support import Deployment
from ledger.app.gateway.keys import KeyStore
from ledger.client import AsyncClient, Client, Reply
from support import CASSANDRA_PORT, KAFKA_BOOTSTRAP

pytestmark = [pytest.mark.kafka, pytest.mark.cassandra]

CLIENTS = 100
GREEDY_CLIENTS = 2
LOAD_S = 30.0
# A steady client's pause between requests: about 2 requests/s each, well under the
# key's limit, so only the greedy ones are refused.
PACE_S = 0.5
# The key's limit: low, so a greedy client's burst (GREEDY_BURST requests at once) is
# partly refused; high enough for a steady client's reads at the end.
RATE_PER_S = 10
BURST = 20
GREEDY_BURST = 30
GREEDY_EVERY_S = 4.0
# Operator keys for the deposits: each deposits for a share of the users within its burst.
OPERATOR_KEYS = 12
DEPOSIT = {"BTC": Decimal("10"), "USDT": Decimal("100000")}
# Bounds that only turn a hang into a failure.
SETTLE_S_MAX = 40.0
CLIENT_TIMEOUT_S = 30.0
RETRY_AFTER_S_MAX = 5.0

# Statuses a client may see: the documented answers to a well-formed request.
EXPECTED = {200, 202, 422, 429}
# The reads at the end wait for the projection (min_seq): past the gateway's read wait,
# a 504 (the documented "ask again") while the projector catches up on a busy machine.
READS_AT_THE_END = ("open", "final")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("gwload"), KAFKA_BOOTSTRAP, CASSANDRA_PORT,
                   rate_per_s=str(RATE_PER_S), burst=str(BURST)).start()
    try:
        yield d
    finally:
        d.stop()


def _keys(db: Path, users: list[int], operators: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Keys made in this process (a ``ledger keys`` process per key would take minutes)."""
    with KeyStore(db) as keys:
        traders = [(k.key_id, private) for k, private in (keys.create(u, "trader") for u in users)]
        ops = [(k.key_id, private) for k, private in (keys.create(0, "operator") for _ in range(operators))]
    return traders, ops


class Tally:
    """Every answer's status, and what the checks at the end need."""

    def __init__(self) -> None:
        self.statuses: collections.Counter[int] = collections.Counter()
        self.by_kind: collections.Counter[tuple[str, int]] = collections.Counter()
        self.unexpected: list[tuple[str, Reply]] = []
        self.stale_bursts = 0
        self.seq_max = 0
        self.limited_users: set[int] = set()
        self.latencies_s: list[float] = []
        self.phases_s: dict[str, float] = {}

    def note(self, kind: str, user: int, reply: Reply) -> Reply:
        self.statuses[reply.status] += 1
        self.by_kind[(kind, reply.status)] += 1
        if kind == "burst" and reply.status == 401 and reply.body.get("error") == "stale_timestamp":
            # A burst overloads on purpose: on a slow machine a request of it can wait in
            # the queues past the receive window, and is refused as stale, by design
            # (seen once in CI, 2 of 30). The steady clients' requests may not be.
            self.stale_bursts += 1
        elif reply.status not in EXPECTED and not (reply.status == 504 and kind in READS_AT_THE_END):
            self.unexpected.append((kind, reply))
        if reply.status == 429:
            self.limited_users.add(user)
        if isinstance(reply.body, dict) and isinstance(reply.body.get("seq"), int):
            self.seq_max = max(self.seq_max, reply.body["seq"])
        return reply


class Trader:
    def __init__(self, user: int, client: AsyncClient, tally: Tally, seed: int) -> None:
        self.user = user
        self.client = client
        self.tally = tally
        self.rng = random.Random(seed)
        self.accepted: list[int] = []  # order ids
        self.open_guess: list[int] = []

    async def call(self, kind: str, method: str, path: str, body: Any = None, params: Any = None) -> Reply:
        sent = time.monotonic()
        reply = await self.client.call(method, path, body, params)
        self.tally.latencies_s.append(time.monotonic() - sent)
        if reply.status == 202:  # past the gateway's answer timeout: ask until it is known
            reply = await self._resolve(kind, reply)
        return self.tally.note(kind, self.user, reply)

    async def _resolve(self, kind: str, pending: Reply) -> Reply:
        self.tally.note(kind, self.user, pending)
        deadline = time.monotonic() + SETTLE_S_MAX
        while True:
            reply = await self.client.call("GET", pending.body["poll"])
            if reply.status != 202:
                return reply
            assert time.monotonic() < deadline, pending
            await asyncio.sleep(0.2)

    async def order(self, body: dict[str, Any]) -> Reply:
        reply = await self.call("order", "POST", "/v1/orders", body)
        if reply.status == 200:
            self.accepted.append(reply.body["order_id"])
            if body.get("type", "limit") == "limit":
                self.open_guess.append(reply.body["order_id"])
        return reply

    async def step(self) -> None:
        rng = self.rng
        action = rng.random()
        side = rng.choice(("buy", "sell"))
        qty = f"0.{rng.randint(1, 20):02d}"
        if action < 0.35:  # rests: far from the other side
            price = str(rng.randint(100, 400) if side == "buy" else rng.randint(600, 900))
            await self.order({"symbol": "BTC-USDT", "side": side, "qty": qty, "price": price, "type": "limit"})
        elif action < 0.6:  # crosses whatever rests on the other side
            price = str(rng.randint(600, 950) if side == "buy" else rng.randint(50, 400))
            await self.order({"symbol": "BTC-USDT", "side": side, "qty": qty, "price": price, "type": "limit"})
        elif action < 0.7:
            body: dict[str, Any] = {"symbol": "BTC-USDT", "side": side, "qty": qty, "type": "market"}
            if side == "buy":
                body["quote_budget"] = str(rng.randint(10, 500))
            await self.order(body)
        elif action < 0.9 and self.open_guess:
            order_id = self.open_guess.pop(rng.randrange(len(self.open_guess)))
            await self.call("cancel", "DELETE", f"/v1/orders/{order_id}")
        else:
            await self.call("balances", "GET", "/v1/balances")

    async def steady(self, until: float) -> None:
        while time.monotonic() < until:
            await self.step()
            await asyncio.sleep(PACE_S * (0.5 + self.rng.random()))

    async def greedy(self, until: float) -> None:
        """Steady steps, and every ``GREEDY_EVERY_S`` a burst of reads above the key's
        limit, sent at once (each its own query: an identical request signed in the same
        millisecond would be a replay); after a 429, the wait it names."""
        burst_at = time.monotonic()
        while time.monotonic() < until:
            if time.monotonic() >= burst_at:
                replies = await asyncio.gather(*(self.call("burst", "GET", "/v1/balances", params={"min_seq": i})
                                                 for i in range(GREEDY_BURST)))
                waits = [float(r.body["retry_after_s"]) for r in replies if r.status == 429]
                await asyncio.sleep(min(RETRY_AFTER_S_MAX, max(waits, default=0.0)))
                burst_at = time.monotonic() + GREEDY_EVERY_S
            await self.step()
            await asyncio.sleep(PACE_S * (0.5 + self.rng.random()))

    async def read(self, kind: str, path: str, params: Any = None) -> Reply:
        """A read at the end: waits out a 429 (the greedy keys' budget may be spent) and
        a 504 (the projection behind the seq asked for), within ``SETTLE_S_MAX``."""
        deadline = time.monotonic() + SETTLE_S_MAX
        while True:
            reply = await self.call(kind, "GET", path, params=params)
            if reply.status not in (429, 504) or time.monotonic() > deadline:
                return reply
            wait = float(reply.body["retry_after_s"]) if reply.status == 429 else 0.5
            await asyncio.sleep(min(RETRY_AFTER_S_MAX, wait))

    async def close_all(self, min_seq: int) -> None:
        """Cancel every order still open, then wait until none is (the book decides)."""
        deadline = time.monotonic() + SETTLE_S_MAX
        cancelled: set[int] = set()
        while True:
            reply = await self.read("open", "/v1/orders", {"min_seq": min_seq})
            assert reply.status == 200, reply
            still = [o["order_id"] for o in reply.body["open_orders"]]
            if not still:
                return
            for order_id in still:
                if order_id not in cancelled:
                    while True:
                        reply = await self.call("cancel", "DELETE", f"/v1/orders/{order_id}")
                        if reply.status != 429:
                            break
                        await asyncio.sleep(min(RETRY_AFTER_S_MAX, float(reply.body["retry_after_s"])))
                    cancelled.add(order_id)
            assert time.monotonic() < deadline, (self.user, still)
            await asyncio.sleep(0.2)


def _money(text: str) -> Decimal:
    return Decimal(text)


async def _deposit_all(url: str, operators: list[tuple[str, str]], users: list[int], tally: Tally) -> None:
    async def share(key: tuple[str, str], mine: list[int]) -> None:
        client = AsyncClient(url, *key, timeout_s=CLIENT_TIMEOUT_S)
        try:
            for user in mine:
                for asset, amount in DEPOSIT.items():
                    body = {"user": user, "asset": asset, "amount": str(amount)}
                    reply = tally.note("deposit", 0, await client.call("POST", "/v1/deposits", body))
                    assert reply.status == 200, reply
        finally:
            await client.aclose()

    await asyncio.gather(*(share(key, users[i::len(operators)]) for i, key in enumerate(operators)))


async def _run(deployment: Deployment, users: list[int], traders_keys: list[tuple[str, str]],
               operators: list[tuple[str, str]]) -> tuple[Tally, list[Trader], dict[int, dict[str, Any]]]:
    """Deposits, the load, every order closed, then each user's balances, trades and
    accepted orders as the projection has them."""
    tally = Tally()
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        tally.phases_s[name], mark = time.monotonic() - mark, time.monotonic()

    await _deposit_all(deployment.url, operators, users, tally)
    phase("deposits")
    traders = [Trader(u, AsyncClient(deployment.url, *key, timeout_s=CLIENT_TIMEOUT_S, max_connections=GREEDY_BURST),
                      tally, seed=i) for i, (u, key) in enumerate(zip(users, traders_keys, strict=True))]
    try:
        until = time.monotonic() + LOAD_S
        await asyncio.gather(*(t.greedy(until) if i < GREEDY_CLIENTS else t.steady(until)
                               for i, t in enumerate(traders)))
        phase("load")
        answered_seq = tally.seq_max
        await asyncio.gather(*(t.close_all(answered_seq) for t in traders))
        final_seq = tally.seq_max
        phase("closing")

        async def one(t: Trader) -> dict[str, Any]:
            balances = await t.read("final", "/v1/balances", {"min_seq": final_seq})
            trades = await t.read("final", "/v1/trades", {"min_seq": final_seq, "limit": 1000})
            orders = [await t.read("final", f"/v1/orders/{o}", {"min_seq": final_seq}) for o in t.accepted]
            return {"balances": balances, "trades": trades, "orders": orders}

        results = await asyncio.gather(*(one(t) for t in traders))
        phase("final reads")
    finally:
        await asyncio.gather(*(t.client.aclose() for t in traders))
    return tally, traders, {t.user: r for t, r in zip(traders, results, strict=True)}


def _user_change(trades: list[dict[str, Any]]) -> dict[str, Decimal]:
    """What a user's trades moved, per asset, fees included (a buyer pays its fee in the
    base it receives, a seller in the quote)."""
    change = {"BTC": Decimal(0), "USDT": Decimal(0)}
    for t in trades:
        assert t["fee_asset"] == ("BTC" if t["side"] == "buy" else "USDT"), t
        base, quote, fee = _money(t["base_amount"]), _money(t["quote_amount"]), _money(t["fee"])
        if t["side"] == "buy":
            change["BTC"] += base - fee
            change["USDT"] -= quote
        else:
            change["BTC"] -= base
            change["USDT"] += quote - fee
    return change


def test_many_clients_through_the_gateway_and_every_answer_agrees_with_the_balances(deployment: Deployment) -> None:
    operator = deployment.client(operator=True)
    for code, decimals in (("BTC", 8), ("USDT", 6)):
        assert operator.list_asset(code, decimals).status == 200
    assert operator.list_symbol("BTC-USDT", "BTC", "USDT", lot="0.01", price_step="1", maker_fee_ppm=1_000,
                                taker_fee_ppm=2_000).status == 200
    base = 10_000 + uuid.uuid4().int % 10**9
    users = [base + i for i in range(CLIENTS)]
    traders_keys, operators = _keys(deployment.db, users, OPERATOR_KEYS)

    started = time.monotonic()
    tally, traders, final = asyncio.run(_run(deployment, users, traders_keys, operators))
    total_s = time.monotonic() - started

    print(f"\ngateway load: {CLIENTS} clients ({GREEDY_CLIENTS} greedy), {LOAD_S:g} s of load, "
          f"{total_s:.1f} s with the deposits, the closing and the final reads")
    print(f"  requests: {sum(tally.statuses.values()):,}; per status: {dict(sorted(tally.statuses.items()))}")
    print(f"  per kind and status: {dict(sorted(tally.by_kind.items()))}")
    latencies = sorted(tally.latencies_s)
    print("  phases: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in tally.phases_s.items()))
    print(f"  latency of the traders' requests: p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
          f"p99 {latencies[len(latencies) * 99 // 100] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    print(f"  users refused with 429: {len(tally.limited_users)}; highest seq answered: {tally.seq_max:,}; "
          f"burst requests refused as stale: {tally.stale_bursts}")

    assert not tally.unexpected, tally.unexpected[:5]
    bursts = sum(n for (kind, _), n in tally.by_kind.items() if kind == "burst")
    assert tally.stale_bursts * 4 <= bursts, (tally.stale_bursts, bursts)  # an exception, not the rule
    assert tally.statuses[429] > 0 and tally.limited_users, "the rate limit was never reached"
    assert not any(status >= 500 for status in tally.statuses)

    fees = Client(deployment.url, *operators[0]).balances(min_seq=tally.seq_max, user=0).check()["balances"]
    totals = {asset: Decimal(0) for asset in DEPOSIT}
    for asset, row in fees.items():
        assert row["locked"] == "0", fees
        totals[asset] += _money(row["available"])
    for t in traders:
        seen = final[t.user]
        balances = seen["balances"].check()["balances"]
        trades = seen["trades"].check()["trades"]
        assert len(trades) < 1000, "more trades than one page: read them in pages"
        change = _user_change(trades)
        for asset, deposited in DEPOSIT.items():
            row = balances[asset]
            assert row["locked"] == "0", (t.user, balances)
            assert _money(row["available"]) == deposited + change[asset], (t.user, asset, balances, trades)
            totals[asset] += _money(row["available"])
        orders = [r.check() for r in seen["orders"]]
        assert [o["order_id"] for o in orders] == t.accepted
        assert all(o["user"] == t.user and o["status"] != "open" for o in orders), orders
        assert {tr["order_id"] for tr in trades} <= set(t.accepted), (t.user, trades)
    assert totals == {asset: amount * CLIENTS for asset, amount in DEPOSIT.items()}, totals
