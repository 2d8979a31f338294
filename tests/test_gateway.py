"""The gateway as it is deployed: ``ledger run gateway`` in its own process, in front of
``ledger run ubscore``, ``engine`` and ``project`` over the real Kafka into the real
Cassandra; every request signed by ``ledger.client``, with keys from ``ledger keys``.

One deployment is shared by the module (each test uses accounts of its own)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_support import Deployment
from ledger.client import Client, Reply
from support import CASSANDRA_PORT, KAFKA_BOOTSTRAP

pytestmark = [pytest.mark.kafka, pytest.mark.cassandra]

# Bounds that only turn a hang into a failure.
SETTLE_S_MAX = 30


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("gateway"), KAFKA_BOOTSTRAP, CASSANDRA_PORT).start()
    try:
        operator = d.client(operator=True)
        for code, decimals in (("BTC", 8), ("USDT", 6)):
            assert operator.list_asset(code, decimals).status == 200
        reply = operator.list_symbol("BTC-USDT", "BTC", "USDT", lot="0.01", price_step="1", maker_fee_ppm=1_000,
                                     taker_fee_ppm=2_000)
        assert reply.status == 200, reply
        d.operator = operator  # type: ignore[attr-defined]
        eventually(operator.health, lambda body: body["ok"] and body["projected_seq"] >= 3)
        yield d
    finally:
        d.stop()


def eventually(read: Callable[[], Reply], done: Callable[[Any], bool]) -> Any:
    """Read until ``done(body)`` holds (the engine's outcomes follow an acceptance)."""
    deadline = time.monotonic() + SETTLE_S_MAX
    while True:
        reply = read()
        assert reply.status in (200, 503), reply
        if reply.status == 200 and done(reply.body):
            return reply.body
        assert time.monotonic() < deadline, reply.body
        time.sleep(0.05)


def _user() -> int:
    return 10_000 + uuid.uuid4().int % 10**9


def test_the_reference_scenarios_through_http_with_decimal_strings(deployment: Deployment) -> None:
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    seller, buyer, self_trader = _user(), _user(), _user()
    a, b, c = (deployment.client(u) for u in (seller, buyer, self_trader))
    assert operator.deposit(seller, "BTC", "1").status == 200
    assert operator.deposit(buyer, "USDT", "20000.000000").status == 200

    depth_before = a.depth("BTC-USDT").check()
    sell = a.place_order("BTC-USDT", "sell", "0.5", "150").check()
    assert (sell["status"], sell["qty"], sell["price"], sell["locked"]) == (
        "accepted", "0.5", "150", {"asset": "BTC", "amount": "0.5"})
    depth = eventually(lambda: a.depth("BTC-USDT"),
                       lambda body: any(level["price"] == "150" for level in body["asks"]))
    before = {lv["price"]: lv for lv in depth_before["asks"]}
    level = next(lv for lv in depth["asks"] if lv["price"] == "150")
    assert level["qty"] == _add(before.get("150", {}).get("qty", "0"), "0.5")

    buy = b.place_order("BTC-USDT", "buy", "0.5", "150").check()
    assert buy["locked"] == {"asset": "USDT", "amount": "75"}
    done = eventually(lambda: b.order(buy["order_id"], min_seq=buy["seq"]), lambda body: body["status"] == "filled")
    assert done["filled_qty"] == "0.5"
    (fill,) = done["fills"]
    assert (fill["price"], fill["qty"], fill["role"], fill["fee"]) == ("150", "0.5", "taker", "0.001")
    maker = eventually(lambda: a.order(sell["order_id"], min_seq=sell["seq"]), lambda body: body["status"] == "filled")
    assert [(f["role"], f["fee"]) for f in maker["fills"]] == [("maker", "0.075")]

    assert a.balances(min_seq=done["seq"]).check()["balances"] == {
        "BTC": {"available": "0.5", "locked": "0"}, "USDT": {"available": "74.925", "locked": "0"}}
    assert b.balances().check()["balances"] == {
        "BTC": {"available": "0.499", "locked": "0"}, "USDT": {"available": "19925", "locked": "0"}}
    trades = b.trades().check()["trades"]
    assert [(t["price"], t["qty"], t["role"], t["fee"], t["fee_asset"]) for t in trades] == [
        ("150", "0.5", "taker", "0.001", "BTC")]
    recent = a.symbol_trades("BTC-USDT").check()["trades"]
    assert any(t["trade_id"] == trades[0]["trade_id"] for t in recent)
    after = a.depth("BTC-USDT").check()
    assert after["asks"] == depth_before["asks"] and after["bids"] == depth_before["bids"]

    # A self-trade: the book refuses the buy; the sell rests until cancelled by its
    # client order id; every lock is released.
    assert operator.deposit(self_trader, "BTC", "1").status == 200
    assert operator.deposit(self_trader, "USDT", "1000").status == 200
    rest = c.place_order("BTC-USDT", "sell", "0.01", "50000", client_order_id=3).check()
    assert rest["client_order_id"] == 3
    cross = c.place_order("BTC-USDT", "buy", "0.01", "50000", client_order_id=4).check()
    eventually(lambda: c.order(cross["order_id"], min_seq=cross["seq"]), lambda body: body["status"] != "open")
    cancel = c.cancel_by_client_id(3).check()
    assert cancel["order_id"] == rest["order_id"]
    for order_id in (rest["order_id"], cross["order_id"]):
        final = eventually(lambda o=order_id: c.order(o, min_seq=cancel["seq"]), lambda body: body["status"] != "open")
        assert (final["status"], final["filled_qty"], final["fills"]) == ("cancelled", "0", [])
    eventually(lambda: c.open_orders(), lambda body: body["open_orders"] == [])
    assert c.balances().check()["balances"] == {
        "BTC": {"available": "1", "locked": "0"}, "USDT": {"available": "1000", "locked": "0"}}
    ledger_rows = c.ledger("USDT").check()["entries"]
    assert [e["kind"] for e in ledger_rows][-1] == "deposit"


def _add(x: str, y: str) -> str:
    from fractions import Fraction

    from ledger.app.gateway.money import format_step, parse_decimal

    total: Fraction = parse_decimal(x, "x") + parse_decimal(y, "y")
    return format_step(total)


def test_the_example_session_runs_against_the_gateway(deployment: Deployment) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    from gateway_quickstart import quickstart

    user = _user()
    operator, trader = deployment.key(operator=True), deployment.key(user)
    seen = quickstart(deployment.url, operator, trader, user)
    assert seen["deposit"]["amount"] == "1000.5"
    assert seen["order"]["locked"] == {"asset": "USDT", "amount": "500"}
    assert seen["balances"] == {"USDT": {"available": "500.5", "locked": "500"}}
    assert seen["status"]["status"] == "open" and seen["cancel"]["order_id"] == seen["order"]["order_id"]
