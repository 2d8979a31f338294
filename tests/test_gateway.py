"""The gateway as it is deployed: ``ledger run gateway`` in its own process, in front of
``ledger run ubscore``, ``engine`` and ``project`` over the real Kafka into the real
Cassandra; every request signed by ``ledger.client``, with keys from ``ledger keys``.

One deployment is shared by the module (each test uses accounts of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway_support import Deployment, ledger, reply_of, signed_request
from ledger.client import Client, Reply
from ledger.client.signing import HEADER_KEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, generate_key
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


# -- refusals: a bad request is a 4xx naming the problem, and nothing is sent -----------

_DROP = object()
_BTC_USDT = "BTC-USDT"  # lot 0.01 BTC, price step 1 USDT; BTC has 8 decimals, USDT 6


def _order(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"symbol": _BTC_USDT, "side": "buy", "qty": "0.01", "price": "150"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _DROP}


def _funds(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"user": 5, "asset": "BTC", "amount": "1"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _DROP}


def _symbol(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": "BTC-USDT2", "base": "BTC", "quote": "USDT", "lot": "0.01", "price_step": "1"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not _DROP}


class Bad(msgspec.Struct, frozen=True):
    """A request the gateway must refuse before sending anything: who signs it
    (``trader`` or ``operator``), what is sent (``body`` bytes as they are, anything else
    as JSON, None for none), and the answer expected (``says``: words the message holds)."""

    who: str
    method: str
    path: str
    body: Any
    status: int
    error: str
    field: str | None = None
    headers: dict[str, str] = {}
    says: str = ""


def _bad(id: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Bad(*args, **kwargs), id=id)


_T, _O = "trader", "operator"
BAD_REQUESTS = [
    # Not a JSON object of the schema.
    _bad("truncated-json", _T, "POST", "/v1/orders", b'{"symbol": ', 400, "malformed_json"),
    _bad("form-encoded", _T, "POST", "/v1/orders", b"symbol=BTC-USDT&side=buy&qty=0.01", 400, "malformed_json",
         headers={"Content-Type": "application/x-www-form-urlencoded"}),
    _bad("not-utf8", _T, "POST", "/v1/orders", b"\xff\xfe{}", 400, "malformed_json"),
    _bad("empty-body", _T, "POST", "/v1/orders", b"", 400, "malformed_json"),
    _bad("list-body", _T, "POST", "/v1/orders", [_order()], 400, "invalid_field", says="array"),
    _bad("string-body", _O, "POST", "/v1/deposits", "deposit", 400, "invalid_field"),
    _bad("null-body", _O, "POST", "/v1/deposits", b"null", 400, "invalid_field"),
    _bad("oversized-body", _T, "POST", "/v1/orders", b'{"symbol": "' + b"X" * 5000 + b'"}', 413, "body_too_large",
         says="4096"),
    _bad("unknown-field", _T, "POST", "/v1/orders", _order(colour="red"), 400, "unknown_field", "$.colour"),
    _bad("missing-symbol", _T, "POST", "/v1/orders", _order(symbol=_DROP), 400, "missing_field", "$.symbol"),
    _bad("missing-qty", _T, "POST", "/v1/orders", _order(qty=_DROP), 400, "missing_field", "$.qty"),
    # Quantities and prices.
    _bad("negative-qty", _T, "POST", "/v1/orders", _order(qty="-0.01"), 400, "invalid_amount", "$.qty"),
    _bad("zero-qty", _T, "POST", "/v1/orders", _order(qty="0"), 400, "invalid_amount", "$.qty", says="more than zero"),
    _bad("zero-qty-with-point", _T, "POST", "/v1/orders", _order(qty="0.000"), 400, "invalid_amount", "$.qty"),
    _bad("huge-qty", _T, "POST", "/v1/orders", _order(qty="9" * 70), 400, "invalid_amount", "$.qty", says="lots"),
    _bad("too-long-qty", _T, "POST", "/v1/orders", _order(qty="1" * 81), 400, "invalid_field", "$.qty"),
    _bad("non-numeric-qty", _T, "POST", "/v1/orders", _order(qty="lots"), 400, "invalid_amount", "$.qty"),
    _bad("json-number-qty", _T, "POST", "/v1/orders", _order(qty=0.01), 400, "invalid_field", "$.qty"),
    _bad("json-integer-qty", _T, "POST", "/v1/orders", _order(qty=1), 400, "invalid_field", "$.qty"),
    _bad("exponent-qty", _T, "POST", "/v1/orders", _order(qty="1e-2"), 400, "invalid_amount", "$.qty"),
    _bad("unicode-digits-qty", _T, "POST", "/v1/orders", _order(qty="\u0661"), 400, "invalid_amount", "$.qty"),
    _bad("spaced-qty", _T, "POST", "/v1/orders", _order(qty=" 0.01"), 400, "invalid_amount", "$.qty"),
    _bad("underscored-qty", _T, "POST", "/v1/orders", _order(qty="1_0"), 400, "invalid_amount", "$.qty"),
    _bad("bare-point-qty", _T, "POST", "/v1/orders", _order(qty=".5"), 400, "invalid_amount", "$.qty"),
    _bad("qty-not-whole-lots", _T, "POST", "/v1/orders", _order(qty="0.015"), 400, "invalid_amount", "$.qty",
         says="lots of 0.01 BTC"),
    _bad("qty-over-precise", _T, "POST", "/v1/orders", _order(qty="0.000000001"), 400, "invalid_amount", "$.qty"),
    _bad("price-not-whole-ticks", _T, "POST", "/v1/orders", _order(price="150.5"), 400, "invalid_amount", "$.price",
         says="price steps of 1 USDT"),
    _bad("negative-price", _T, "POST", "/v1/orders", _order(price="-150"), 400, "invalid_amount", "$.price"),
    _bad("huge-price", _T, "POST", "/v1/orders", _order(price="9" * 40), 400, "invalid_amount", "$.price"),
    _bad("json-number-price", _T, "POST", "/v1/orders", _order(price=150), 400, "invalid_field", "$.price"),
    # The order's shape.
    _bad("unknown-symbol", _T, "POST", "/v1/orders", _order(symbol="ETH-USDT"), 400, "unknown_symbol", "$.symbol"),
    _bad("bool-side", _T, "POST", "/v1/orders", _order(side=True), 400, "invalid_field", "$.side"),
    _bad("unknown-side", _T, "POST", "/v1/orders", _order(side="long"), 400, "invalid_field", "$.side"),
    _bad("unknown-type", _T, "POST", "/v1/orders", _order(type="stop"), 400, "invalid_field", "$.type"),
    _bad("limit-without-price", _T, "POST", "/v1/orders", _order(price=_DROP), 400, "missing_field", "$.price"),
    _bad("limit-with-budget", _T, "POST", "/v1/orders", _order(quote_budget="10"), 400, "invalid_field",
         "$.quote_budget"),
    _bad("market-with-price", _T, "POST", "/v1/orders", _order(type="market", side="sell"), 400, "invalid_field",
         "$.price"),
    _bad("market-buy-without-budget", _T, "POST", "/v1/orders", _order(type="market", price=_DROP), 400,
         "missing_field", "$.quote_budget"),
    _bad("market-sell-with-budget", _T, "POST", "/v1/orders",
         _order(type="market", side="sell", price=_DROP, quote_budget="10"), 400, "invalid_field", "$.quote_budget"),
    _bad("market-budget-over-precise", _T, "POST", "/v1/orders",
         _order(type="market", price=_DROP, quote_budget="0.0000001"), 400, "invalid_amount", "$.quote_budget",
         says="6 decimals"),
    _bad("market-gtc", _T, "POST", "/v1/orders", _order(type="market", price=_DROP, quote_budget="10", tif="gtc"),
         400, "invalid_field", "$.tif"),
    _bad("unknown-tif", _T, "POST", "/v1/orders", _order(tif="day"), 400, "invalid_field", "$.tif"),
    _bad("unknown-stp", _T, "POST", "/v1/orders", _order(stp="allow"), 400, "invalid_field", "$.stp"),
    _bad("string-client-order-id", _T, "POST", "/v1/orders", _order(client_order_id="7"), 400, "invalid_field",
         "$.client_order_id"),
    _bad("zero-client-order-id", _T, "POST", "/v1/orders", _order(client_order_id=0), 400, "invalid_field",
         "$.client_order_id"),
    _bad("client-order-id-in-gateway-range", _T, "POST", "/v1/orders", _order(client_order_id=2**62), 400,
         "invalid_field", "$.client_order_id"),
    _bad("idempotency-key-too-long", _T, "POST", "/v1/orders", _order(), 400, "invalid_idempotency_key",
         headers={"Idempotency-Key": "k" * 65}),
    _bad("idempotency-key-empty", _T, "POST", "/v1/orders", _order(), 400, "invalid_idempotency_key",
         headers={"Idempotency-Key": ""}),
    _bad("idempotency-key-tab", _T, "POST", "/v1/orders", _order(), 400, "invalid_idempotency_key",
         headers={"Idempotency-Key": "a\tb"}),
    # Funds.
    _bad("deposit-to-user-0", _O, "POST", "/v1/deposits", _funds(user=0), 400, "invalid_field", "$.user"),
    _bad("deposit-to-negative-user", _O, "POST", "/v1/deposits", _funds(user=-5), 400, "invalid_field", "$.user"),
    _bad("deposit-to-string-user", _O, "POST", "/v1/deposits", _funds(user="5"), 400, "invalid_field", "$.user"),
    _bad("deposit-to-user-beyond-int64", _O, "POST", "/v1/deposits", _funds(user=2**63), 400, "invalid_field",
         "$.user"),
    _bad("deposit-over-precise", _O, "POST", "/v1/deposits", _funds(amount="0.000000001"), 400, "invalid_amount",
         "$.amount", says="8 decimals"),
    _bad("deposit-zero", _O, "POST", "/v1/deposits", _funds(amount="0"), 400, "invalid_amount", "$.amount"),
    _bad("deposit-negative", _O, "POST", "/v1/deposits", _funds(amount="-1"), 400, "invalid_amount", "$.amount"),
    _bad("deposit-huge", _O, "POST", "/v1/deposits", _funds(amount="9" * 60), 400, "invalid_amount", "$.amount",
         says="largest amount"),
    _bad("deposit-json-number", _O, "POST", "/v1/deposits", _funds(amount=1.5), 400, "invalid_field", "$.amount"),
    _bad("deposit-unknown-asset", _O, "POST", "/v1/deposits", _funds(asset="DOGE"), 400, "unknown_asset",
         "$.asset"),
    _bad("withdraw-exponent", _O, "POST", "/v1/withdrawals", _funds(amount="1e3"), 400, "invalid_amount",
         "$.amount"),
    _bad("withdraw-missing-user", _O, "POST", "/v1/withdrawals", _funds(user=_DROP), 400, "missing_field", "$.user"),
    # Listings.
    _bad("asset-decimals-too-many", _O, "POST", "/v1/assets", {"code": "ZZZ", "decimals": 99}, 400, "invalid_field",
         "$.decimals"),
    _bad("asset-decimals-string", _O, "POST", "/v1/assets", {"code": "ZZZ", "decimals": "8"}, 400, "invalid_field",
         "$.decimals"),
    _bad("asset-empty-code", _O, "POST", "/v1/assets", {"code": "", "decimals": 2}, 400, "invalid_field", "$.code"),
    _bad("symbol-lot-not-exact", _O, "POST", "/v1/symbols", _symbol(lot="0.000000001"), 400, "invalid_amount",
         "$.lot"),
    _bad("symbol-lot-zero", _O, "POST", "/v1/symbols", _symbol(lot="0"), 400, "invalid_amount", "$.lot"),
    _bad("symbol-price-step-not-exact", _O, "POST", "/v1/symbols", _symbol(price_step="0.0000001"), 400,
         "invalid_amount", "$.price_step"),
    _bad("symbol-unknown-base", _O, "POST", "/v1/symbols", _symbol(base="DOGE"), 400, "unknown_asset", "$.base"),
    _bad("symbol-negative-fee", _O, "POST", "/v1/symbols", _symbol(maker_fee_ppm=-1), 400, "invalid_field",
         "$.maker_fee_ppm"),
    # Reads, routes and path ids.
    _bad("min-seq-not-a-number", _T, "GET", "/v1/balances?min_seq=abc", None, 400, "invalid_field", "min_seq"),
    _bad("min-seq-negative", _T, "GET", "/v1/balances?min_seq=-1", None, 400, "invalid_field", "min_seq"),
    _bad("operator-read-without-user", _O, "GET", "/v1/balances", None, 400, "missing_field", "user"),
    _bad("ledger-of-unknown-asset", _T, "GET", "/v1/ledger/DOGE", None, 400, "unknown_asset", "path"),
    _bad("depth-of-unknown-symbol", _T, "GET", "/v1/symbols/ETH-USDT/depth", None, 404, "unknown_symbol"),
    _bad("depth-zero-levels", _T, "GET", "/v1/symbols/BTC-USDT/depth?levels=0", None, 400, "invalid_field",
         "levels"),
    _bad("trades-limit-too-big", _T, "GET", "/v1/trades?limit=100000", None, 400, "invalid_field", "limit"),
    _bad("no-such-route", _T, "GET", "/v1/nothing", None, 404, "not_found"),
    _bad("method-not-allowed", _T, "PUT", "/v1/orders", _order(), 405, "method_not_allowed"),
    _bad("cancel-order-0", _T, "DELETE", "/v1/orders/0", None, 400, "invalid_field", "path"),
    _bad("cancel-order-beyond-int64", _T, "DELETE", f"/v1/orders/{2**64}", None, 400, "invalid_field", "path"),
    _bad("cancel-client-id-in-gateway-range", _T, "DELETE", f"/v1/orders/by-client-id/{2**62}", None, 400,
         "invalid_field", "path"),
    _bad("request-0", _T, "GET", "/v1/requests/0", None, 400, "invalid_field", "path"),
]


@pytest.fixture(scope="module")
def signers(deployment: Deployment) -> dict[str, tuple[str, str]]:
    """A trader's and an operator's key (id, private), for raw signed requests."""
    return {_T: deployment.key(_user()), _O: deployment.key(operator=True)}


def _content(body: Any) -> bytes:
    if body is None:
        return b""
    return body if isinstance(body, bytes) else msgspec.json.encode(body)


def _assert_error(reply: Reply, status: int, error: str, field: str | None = None, says: str = "") -> None:
    assert reply.status == status, reply
    assert isinstance(reply.body, dict) and set(reply.body) <= {"error", "message", "field", "retry_after_s"}, reply
    assert reply.body["error"] == error, reply
    assert isinstance(reply.body["message"], str) and reply.body["message"], reply
    assert reply.body.get("field") == field, reply
    assert says in reply.body["message"], reply


@pytest.mark.parametrize("bad", BAD_REQUESTS)
def test_a_bad_request_is_refused_naming_the_problem_and_nothing_is_sent(
    deployment: Deployment, signers: dict[str, tuple[str, str]], bad: Bad
) -> None:
    end = deployment.commands_end()
    headers = {"Content-Type": "application/json", **bad.headers} if bad.body is not None else bad.headers
    reply = deployment.send(signers[bad.who], bad.method, bad.path, _content(bad.body), headers)
    _assert_error(reply, bad.status, bad.error, bad.field, bad.says)
    assert deployment.commands_end() == end


def test_the_table_of_bad_requests_sent_nothing_at_all(deployment: Deployment,
                                                      signers: dict[str, tuple[str, str]]) -> None:
    """Once more, the whole table at once and the end of balance.operations before and
    after (each case checks its own request too)."""
    end = deployment.commands_end()
    for param in BAD_REQUESTS:
        (bad,) = param.values
        headers = {"Content-Type": "application/json", **bad.headers} if bad.body is not None else bad.headers
        assert deployment.send(signers[bad.who], bad.method, bad.path, _content(bad.body), headers).status == bad.status
    assert deployment.commands_end() == end


def test_an_oversized_body_streamed_without_a_length_is_refused(deployment: Deployment,
                                                                signers: dict[str, tuple[str, str]]) -> None:
    end = deployment.commands_end()
    content = msgspec.json.encode(_order(symbol="X" * 5000))
    request = signed_request(deployment.url, signers[_T], "POST", "/v1/orders", content)
    chunked = httpx.Request("POST", request.url, headers={k: v for k, v in request.headers.items()
                                                          if k.lower() != "content-length"},
                            content=iter([content[:1000], content[1000:]]))
    assert "content-length" not in chunked.headers
    with httpx.Client(timeout=30) as http:
        reply = reply_of(http.send(chunked))
    _assert_error(reply, 413, "body_too_large")
    assert deployment.commands_end() == end


# -- attacks: 401 or 403, and nothing is sent --------------------------------------------

def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _deposit_body() -> bytes:
    return msgspec.json.encode({"user": _user(), "asset": "BTC", "amount": "1"})


def _no_headers(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    return httpx.Request("POST", d.url + "/v1/deposits", content=_deposit_body())


def _unknown_key(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    private, _ = generate_key()
    return signed_request(d.url, (f"k{uuid.uuid4().hex[:20]}", private), "POST", "/v1/deposits", _deposit_body())


def _key_id_of_another_form(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    request = signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body())
    request.headers[HEADER_KEY] = "operator"
    return request


def _signed_by_another_key(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    private, _ = generate_key()
    return signed_request(d.url, (key[0], private), "POST", "/v1/deposits", _deposit_body())


def _bad_signature(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    request = signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body())
    signature = request.headers[HEADER_SIGNATURE]
    request.headers[HEADER_SIGNATURE] = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    return request


def _signature_headers(request: httpx.Request) -> dict[str, str]:
    return {name: request.headers[name] for name in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_SIGNATURE)}


def _signature_of_another_body(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    signed = signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body())
    return httpx.Request("POST", signed.url, headers=_signature_headers(signed), content=_deposit_body())


def _signature_of_another_path(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    body = _deposit_body()
    signed = signed_request(d.url, key, "POST", "/v1/withdrawals", body)
    return httpx.Request("POST", d.url + "/v1/deposits", headers=_signature_headers(signed), content=body)


def _stale(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    # Past the 5 s receive window, yet after the gateway started (not "signed before start").
    time.sleep(max(0.0, d.gateway_ready_s + 5.7 - time.time()))
    return signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body(), timestamp_ms=_now_ms() - 5_500)


def _signed_before_start(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    return signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body(), timestamp_ms=_now_ms() - 3_600_000)


def _future(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    return signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body(), timestamp_ms=_now_ms() + 60_000)


def _malformed_timestamp(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    request = signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body())
    request.headers[HEADER_TIMESTAMP] = "0" + request.headers[HEADER_TIMESTAMP]
    return request


def _malformed_signature(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    request = signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body())
    request.headers[HEADER_SIGNATURE] = request.headers[HEADER_SIGNATURE].upper()
    return request


def _duplicate_key_header(d: Deployment, key: tuple[str, str]) -> httpx.Request:
    signed = signed_request(d.url, key, "POST", "/v1/deposits", _deposit_body())
    headers = [*signed.headers.multi_items(), (HEADER_KEY, key[0])]
    return httpx.Request("POST", signed.url, headers=headers, content=signed.content)


ATTACKS = [
    pytest.param(_no_headers, "missing_header", id="no-key-headers"),
    pytest.param(_unknown_key, "unknown_key", id="unknown-key-id"),
    pytest.param(_key_id_of_another_form, "unknown_key", id="key-id-of-another-form"),
    pytest.param(_signed_by_another_key, "bad_signature", id="signed-by-another-key"),
    pytest.param(_bad_signature, "bad_signature", id="bad-signature"),
    pytest.param(_signature_of_another_body, "bad_signature", id="signature-of-another-body"),
    pytest.param(_signature_of_another_path, "bad_signature", id="signature-of-another-path"),
    pytest.param(_stale, "stale_timestamp", id="stale-timestamp"),
    pytest.param(_signed_before_start, "signed_before_start", id="signed-before-the-gateway-started"),
    pytest.param(_future, "future_timestamp", id="future-timestamp"),
    pytest.param(_malformed_timestamp, "malformed_timestamp", id="timestamp-with-a-leading-zero"),
    pytest.param(_malformed_signature, "malformed_signature", id="upper-case-signature"),
    pytest.param(_duplicate_key_header, "duplicate_header", id="key-header-twice"),
]


@pytest.mark.parametrize(("attack", "code"), ATTACKS)
def test_a_request_not_signed_by_a_live_key_now_is_401_and_sends_nothing(
    deployment: Deployment, signers: dict[str, tuple[str, str]], attack: Callable[..., httpx.Request], code: str
) -> None:
    end = deployment.commands_end()
    request = attack(deployment, signers[_O])
    with httpx.Client(timeout=30) as http:
        reply = reply_of(http.send(request))
    _assert_error(reply, 401, code)
    assert deployment.commands_end() == end


def test_a_replayed_request_is_refused_and_has_one_effect(deployment: Deployment,
                                                        signers: dict[str, tuple[str, str]]) -> None:
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    user = _user()
    request = signed_request(deployment.url, signers[_O], "POST", "/v1/deposits",
                             msgspec.json.encode({"user": user, "asset": "BTC", "amount": "0.3"}),
                             {"Content-Type": "application/json"})
    with httpx.Client(timeout=30) as http:
        first = reply_of(http.send(request))
        assert first.status == 200, first
        end = deployment.commands_end()
        for _ in range(2):
            _assert_error(reply_of(http.send(request)), 401, "replayed")
    assert deployment.commands_end() == end
    balances = operator.balances(user=user, min_seq=first.body["seq"]).check()["balances"]
    assert balances == {"BTC": {"available": "0.3", "locked": "0"}}


def test_a_trader_acts_on_and_reads_only_its_own_account(deployment: Deployment) -> None:
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    a_user, b_user = _user(), _user()
    a, b = deployment.client(a_user), deployment.client(b_user)
    operator.deposit(b_user, "BTC", "1").check()
    rest = b.place_order(_BTC_USDT, "sell", "0.01", "90000", client_order_id=11).check()
    order_id = rest["order_id"]
    eventually(lambda: b.order(order_id, min_seq=rest["seq"]), lambda body: body["status"] == "open")

    end = deployment.commands_end()
    _assert_error(a.cancel(order_id), 403, "not_your_account")
    _assert_error(a.order(order_id), 403, "not_your_account")
    _assert_error(a.balances(user=b_user), 403, "not_your_account")
    _assert_error(a.open_orders(user=b_user), 403, "not_your_account")
    _assert_error(a.trades(user=b_user), 403, "not_your_account")
    _assert_error(a.ledger("BTC", user=b_user), 403, "not_your_account")
    assert deployment.commands_end() == end
    assert b.order(order_id).check()["status"] == "open"
    assert b.balances().check()["balances"]["BTC"] == {"available": "0.99", "locked": "0.01"}
    b.cancel(order_id).check()
    eventually(lambda: b.order(order_id), lambda body: body["status"] == "cancelled")


def test_a_trader_moves_no_funds_and_lists_nothing_an_operator_trades_not(deployment: Deployment) -> None:
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    user = _user()
    trader = deployment.client(user)
    end = deployment.commands_end()
    _assert_error(trader.deposit(user, "BTC", "1"), 403, "operator_only")
    _assert_error(trader.withdraw(user, "BTC", "1"), 403, "operator_only")
    _assert_error(trader.list_asset("ZZZ", 2), 403, "operator_only")
    _assert_error(trader.list_symbol("BTC-ZZZ", "BTC", "USDT", "0.01", "1"), 403, "operator_only")
    _assert_error(operator.place_order(_BTC_USDT, "buy", "0.01", "150"), 403, "trader_only")
    _assert_error(operator.cancel(1), 403, "trader_only")
    _assert_error(operator.cancel_by_client_id(1), 403, "trader_only")
    assert deployment.commands_end() == end


def test_a_revoked_key_is_refused_within_the_key_cache_time(deployment: Deployment) -> None:
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    user = _user()
    key_id, private = deployment.key(user)
    trader = Client(deployment.url, key_id, private)
    operator.deposit(user, "USDT", "100").check()
    assert trader.balances().status == 200
    done = ledger("keys", "revoke", "--db", str(deployment.db), key_id)
    assert done.returncode == 0, done.stderr
    time.sleep(1.2)  # the gateway re-reads a key after KEY_CACHE_S (1 s)
    end = deployment.commands_end()
    _assert_error(trader.balances(), 401, "revoked_key")
    _assert_error(trader.place_order(_BTC_USDT, "buy", "0.01", "150"), 401, "revoked_key")
    assert deployment.commands_end() == end
    assert operator.balances(user=user).check()["balances"]["USDT"] == {"available": "100", "locked": "0"}


# -- retries: one effect, the original answer -------------------------------------------

CONCURRENT_RETRIES = 20


def _send_all(requests: list[httpx.Request]) -> list[Reply | BaseException]:
    """Send every request at once; a reply, or the error a request met."""
    async def run() -> list[Reply | BaseException]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=len(requests))) as http:
            async def one(request: httpx.Request) -> Reply:
                return reply_of(await http.send(request))

            return await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)

    return asyncio.run(run())


def _same_requests(d: Deployment, key: tuple[str, str], path: str, body: dict[str, Any], idempotency_key: str,
                   copies: int) -> list[httpx.Request]:
    """``copies`` of one request under one idempotency key, each signed at its own
    millisecond (two signatures of the very same bytes would be one request replayed)."""
    now = _now_ms()
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    return [signed_request(d.url, key, "POST", path, msgspec.json.encode(body), headers, timestamp_ms=now + i)
            for i in range(copies)]


def _without_retry(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "retry"}


def test_one_idempotency_key_sent_at_once_and_again_is_one_deposit(
    deployment: Deployment, signers: dict[str, tuple[str, str]]
) -> None:
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    user, key = _user(), f"dep-{uuid.uuid4().hex}"
    body = {"user": user, "asset": "BTC", "amount": "0.7"}
    end = deployment.commands_end()
    replies = _send_all(_same_requests(deployment, signers[_O], "/v1/deposits", body, key, CONCURRENT_RETRIES))
    assert all(isinstance(r, Reply) and r.status == 200 for r in replies), replies
    answers = [r.body for r in replies if isinstance(r, Reply)]
    first = _without_retry(answers[0])
    assert (first["type"], first["user"], first["amount"], first["available"]) == ("deposit", user, "0.7", "0.7")
    assert all(_without_retry(a) == first for a in answers)
    assert sum(1 for a in answers if not a.get("retry")) == 1
    for _ in range(3):
        again = operator.deposit(user, "BTC", "0.7", idempotency_key=key).check()
        assert again.pop("retry") is True and again == first
    assert deployment.commands_end() == end + 1
    assert operator.balances(user=user, min_seq=first["seq"]).check()["balances"] == {
        "BTC": {"available": "0.7", "locked": "0"}}

    # The same key for anything else is a conflict, and sends nothing.
    for path, other in (("/v1/deposits", {**body, "amount": "0.8"}), ("/v1/withdrawals", body)):
        (request,) = _same_requests(deployment, signers[_O], path, other, key, 1)
        with httpx.Client(timeout=30) as http:
            _assert_error(reply_of(http.send(request)), 409, "idempotency_key_reused")
    assert deployment.commands_end() == end + 1


def test_a_client_order_id_sent_again_without_a_key_is_answered_with_the_original(deployment: Deployment) -> None:
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    user = _user()
    trader = deployment.client(user)
    operator.deposit(user, "USDT", "1000").check()
    placed = trader.place_order(_BTC_USDT, "buy", "0.01", "100", client_order_id=77).check()
    assert "retry" not in placed
    again = trader.place_order(_BTC_USDT, "buy", "0.01", "100", client_order_id=77).check()
    assert again["retry"] is True
    assert (again["order_id"], again["seq"], again["client_order_id"]) == (placed["order_id"], placed["seq"], 77)
    # The same id for another order is a conflict (rejected by UBSCore, nothing locked).
    other = trader.place_order(_BTC_USDT, "buy", "0.01", "101", client_order_id=77)
    assert other.status == 422 and other.body["reason_name"] == "REQUEST_ID_CONFLICT", other
    assert trader.balances(min_seq=other.body["seq"]).check()["balances"] == {
        "USDT": {"available": "999", "locked": "1"}}
    trader.cancel_by_client_id(77).check()
    eventually(lambda: trader.order(placed["order_id"], min_seq=placed["seq"]),
               lambda body: body["status"] == "cancelled")


def _wait_for_rows(d: Deployment, keys: list[str]) -> None:
    """Until the gateway's request table holds a row of one of ``keys``."""
    deadline = time.monotonic() + SETTLE_S_MAX
    marks = ", ".join("?" * len(keys))
    while time.monotonic() < deadline:
        with contextlib.closing(sqlite3.connect(f"file:{d.db}?mode=ro", uri=True, timeout=5)) as db:
            if db.execute(f"SELECT count(*) FROM requests WHERE idem_key IN ({marks})", keys).fetchone()[0]:
                return
        time.sleep(0.001)
    raise AssertionError("the gateway took none of the requests")


def test_a_gateway_killed_with_requests_in_flight_answers_their_retries_with_one_effect_each(
    deployment: Deployment, signers: dict[str, tuple[str, str]]
) -> None:
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    end = deployment.commands_end()
    answered_user, answered_key = _user(), f"crash-{uuid.uuid4().hex}"
    answered = operator.deposit(answered_user, "BTC", "0.25", idempotency_key=answered_key).check()
    users = [_user() for _ in range(CONCURRENT_RETRIES)]
    keys = [f"crash-{uuid.uuid4().hex}" for _ in users]

    def requests() -> list[httpx.Request]:
        now = _now_ms()
        return [signed_request(deployment.url, signers[_O], "POST", "/v1/deposits",
                               msgspec.json.encode({"user": u, "asset": "USDT", "amount": "12.5"}),
                               {"Content-Type": "application/json", "Idempotency-Key": k}, timestamp_ms=now)
                for u, k in zip(users, keys, strict=True)]

    in_flight: list[list[Reply | BaseException]] = []
    sender = threading.Thread(target=lambda: in_flight.append(_send_all(requests())))
    sender.start()
    _wait_for_rows(deployment, keys)  # the gateway has taken some: kill it now
    deployment.stop_gateway(kill=True)
    sender.join(timeout=60)
    deployment.start_gateway()

    retried = operator.deposit(answered_user, "BTC", "0.25", idempotency_key=answered_key).check()
    assert retried.pop("retry") is True and retried == answered
    replies = _send_all(requests())
    assert all(isinstance(r, Reply) and r.status == 200 for r in replies), replies
    seq = max(r.body["seq"] for r in replies if isinstance(r, Reply))
    for user, reply in zip(users, replies, strict=True):
        assert isinstance(reply, Reply) and (reply.body["user"], reply.body["amount"]) == (user, "12.5")
        assert operator.balances(user=user, min_seq=seq).check()["balances"] == {
            "USDT": {"available": "12.5", "locked": "0"}}
    for before in in_flight[0]:  # what was answered before the kill is what the retry answered
        if isinstance(before, Reply):
            assert before.status == 200, before
            (after,) = (r for r in replies if isinstance(r, Reply) and r.body["user"] == before.body["user"])
            assert _without_retry(after.body) == _without_retry(before.body)
    assert deployment.commands_end() == end + 1 + CONCURRENT_RETRIES


def _restart_gateway(d: Deployment, **options: str) -> None:
    d.stop_gateway()
    d.gateway_options = options
    d.start_gateway()


def test_an_answer_later_than_the_timeout_is_a_202_and_then_at_its_ref(deployment: Deployment) -> None:
    """With a 1 ms answer timeout, no answer can come in time over Kafka: every command
    is a 202 naming its ref, and GET /v1/requests/{ref} answers it later (to its key's
    account only)."""
    operator: Client = deployment.operator  # type: ignore[attr-defined]
    user, key = _user(), f"late-{uuid.uuid4().hex}"
    stranger = deployment.client(_user())
    _restart_gateway(deployment, answer_timeout_s="0.001")
    try:
        pending = operator.deposit(user, "USDT", "3.5", idempotency_key=key)
        assert pending.status == 202, pending
        ref = pending.body["ref"]
        assert (pending.body["status"], pending.body["poll"]) == ("pending", f"/v1/requests/{ref}")
        deadline = time.monotonic() + SETTLE_S_MAX
        while (later := operator.request(ref)).status == 202:
            assert later.body["status"] == "pending" and time.monotonic() < deadline, later
            time.sleep(0.05)
        assert later.status == 200, later
        assert (later.body["ref"], later.body["type"], later.body["user"], later.body["amount"]) == (
            ref, "deposit", user, "3.5")
        _assert_error(stranger.request(ref), 404, "not_found")
        retried = operator.deposit(user, "USDT", "3.5", idempotency_key=key).check()
        assert retried.pop("retry") is True and retried == later.body
    finally:
        _restart_gateway(deployment)
    assert operator.balances(user=user, min_seq=later.body["seq"]).check()["balances"] == {
        "USDT": {"available": "3.5", "locked": "0"}}
