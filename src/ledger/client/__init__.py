"""A Python client of the HTTP gateway (``ledger run gateway``), on httpx.

Every request is signed with the key's Ed25519 private key (``ledger.client.signing``);
money goes as decimal strings. ``Client`` is synchronous, ``AsyncClient`` the same API
for asyncio. Each call returns a ``Reply``: the HTTP status and the JSON body, so a
caller sees a rejection's reason as readily as an acceptance.

>>> from ledger.client.signing import generate_key
>>> private, public = generate_key()
>>> client = Client("http://127.0.0.1:8080", "k-example", private)
>>> request = client.build("POST", "/v1/orders", {"symbol": "BTC-USDT", "side": "buy", "qty": "0.5", "price": "150"})
>>> sorted(h for h in request.headers if h.startswith("x-ledger"))
['x-ledger-key', 'x-ledger-signature', 'x-ledger-timestamp']
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx
import msgspec

from ledger.client.signing import sign_headers

# How long a call waits for the gateway by default (the gateway's own answer timeout is
# 5 s, after which it answers 202).
TIMEOUT_S_DEFAULT = 15.0
# A pooled connection idle this long is closed by the client, well before the gateway
# closes it (its KEEP_ALIVE_S), so a request never goes out on a connection the gateway
# is closing.
CONNECTION_IDLE_S = 4.0


class Reply(msgspec.Struct, frozen=True):
    """A gateway's answer: ``status`` (200 accepted, 202 pending, 422 rejected, 4xx
    refused) and the JSON ``body``."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def check(self) -> Any:
        """The body of a 2xx answer; anything else raises ``GatewayError``."""
        if not self.ok:
            raise GatewayError(self)
        return self.body


class GatewayError(Exception):
    """A reply other than 2xx, raised by ``Reply.check``."""

    def __init__(self, reply: Reply) -> None:
        body = reply.body if isinstance(reply.body, dict) else {}
        what = body.get("error") or body.get("reason_name") or "error"
        super().__init__(f"{reply.status} {what}: {body.get('message', reply.body)}")
        self.reply = reply


def _path(path: str, params: dict[str, Any] | None) -> str:
    if not params:
        return path
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return f"{path}?{query}" if query else path


def _order_body(
    symbol: str,
    side: str,
    qty: str,
    price: str | None,
    type: str,
    tif: str | None,
    stp: str | None,
    quote_budget: str | None,
    client_order_id: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"symbol": symbol, "side": side, "qty": qty, "type": type}
    for name, value in (("price", price), ("tif", tif), ("stp", stp), ("quote_budget", quote_budget),
                        ("client_order_id", client_order_id)):
        if value is not None:
            body[name] = value
    return body


class _Base:
    def __init__(self, base_url: str, key_id: str, private_key: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.key_id = key_id
        self._private_key = private_key

    def build(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Request:
        """The signed request (not sent)."""
        full = _path(path, params)
        data = b"" if body is None else msgspec.json.encode(body)
        headers = sign_headers(self.key_id, self._private_key, method, full, data)
        if data:
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return httpx.Request(method, self.base_url + full, content=data, headers=headers)

    @staticmethod
    def _reply(response: httpx.Response) -> Reply:
        try:
            body = msgspec.json.decode(response.content) if response.content else None
        except msgspec.DecodeError:
            body = response.text
        return Reply(response.status_code, body)


class Client(_Base):
    """A synchronous client. ``Client(url, key_id, private_key_hex)``."""

    def __init__(self, base_url: str, key_id: str, private_key: str, timeout_s: float = TIMEOUT_S_DEFAULT) -> None:
        super().__init__(base_url, key_id, private_key)
        self._http = httpx.Client(timeout=timeout_s, limits=httpx.Limits(
            max_connections=100, max_keepalive_connections=20, keepalive_expiry=CONNECTION_IDLE_S))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
             idempotency_key: str | None = None) -> Reply:
        """Send one signed request."""
        return self._reply(self._http.send(self.build(method, path, body, params, idempotency_key)))

    def place_order(self, symbol: str, side: str, qty: str, price: str | None = None, type: str = "limit",
                    tif: str | None = None, stp: str | None = None, quote_budget: str | None = None,
                    client_order_id: int | None = None, idempotency_key: str | None = None) -> Reply:
        body = _order_body(symbol, side, qty, price, type, tif, stp, quote_budget, client_order_id)
        return self.call("POST", "/v1/orders", body, idempotency_key=idempotency_key)

    def cancel(self, order_id: int, idempotency_key: str | None = None) -> Reply:
        return self.call("DELETE", f"/v1/orders/{order_id}", idempotency_key=idempotency_key)

    def cancel_by_client_id(self, client_order_id: int, idempotency_key: str | None = None) -> Reply:
        return self.call("DELETE", f"/v1/orders/by-client-id/{client_order_id}", idempotency_key=idempotency_key)

    def deposit(self, user: int, asset: str, amount: str, idempotency_key: str | None = None) -> Reply:
        return self.call("POST", "/v1/deposits", {"user": user, "asset": asset, "amount": amount},
                         idempotency_key=idempotency_key)

    def withdraw(self, user: int, asset: str, amount: str, idempotency_key: str | None = None) -> Reply:
        return self.call("POST", "/v1/withdrawals", {"user": user, "asset": asset, "amount": amount},
                         idempotency_key=idempotency_key)

    def list_asset(self, code: str, decimals: int) -> Reply:
        return self.call("POST", "/v1/assets", {"code": code, "decimals": decimals}, idempotency_key=f"asset-{code}")

    def list_symbol(self, name: str, base: str, quote: str, lot: str, price_step: str, maker_fee_ppm: int = 0,
                    taker_fee_ppm: int = 0) -> Reply:
        body = {"name": name, "base": base, "quote": quote, "lot": lot, "price_step": price_step,
                "maker_fee_ppm": maker_fee_ppm, "taker_fee_ppm": taker_fee_ppm}
        return self.call("POST", "/v1/symbols", body, idempotency_key=f"symbol-{name}")

    def balances(self, min_seq: int | None = None, user: int | None = None) -> Reply:
        return self.call("GET", "/v1/balances", params={"user": user, "min_seq": min_seq})

    def order(self, order_id: int, min_seq: int | None = None) -> Reply:
        return self.call("GET", f"/v1/orders/{order_id}", params={"min_seq": min_seq})

    def open_orders(self, min_seq: int | None = None, user: int | None = None) -> Reply:
        return self.call("GET", "/v1/orders", params={"user": user, "min_seq": min_seq})

    def ledger(self, asset: str, limit: int | None = None, before_seq: int | None = None,
               min_seq: int | None = None, user: int | None = None) -> Reply:
        params = {"user": user, "limit": limit, "before_seq": before_seq, "min_seq": min_seq}
        return self.call("GET", f"/v1/ledger/{asset}", params=params)

    def trades(self, min_seq: int | None = None, user: int | None = None) -> Reply:
        return self.call("GET", "/v1/trades", params={"user": user, "min_seq": min_seq})

    def symbol_trades(self, symbol: str, min_seq: int | None = None) -> Reply:
        return self.call("GET", f"/v1/symbols/{symbol}/trades", params={"min_seq": min_seq})

    def depth(self, symbol: str, levels: int | None = None, min_seq: int | None = None) -> Reply:
        return self.call("GET", f"/v1/symbols/{symbol}/depth", params={"levels": levels, "min_seq": min_seq})

    def request(self, ref: int) -> Reply:
        """A command's answer after a 202 (``ref`` from that reply)."""
        return self.call("GET", f"/v1/requests/{ref}")

    def health(self) -> Reply:
        return self._reply(self._http.get(self.base_url + "/v1/health"))


class AsyncClient(_Base):
    """The same calls for asyncio: ``await client.call(...)``, ``await client.place_order(...)``."""

    def __init__(self, base_url: str, key_id: str, private_key: str, timeout_s: float = TIMEOUT_S_DEFAULT,
                 max_connections: int = 100) -> None:
        super().__init__(base_url, key_id, private_key)
        self._http = httpx.AsyncClient(
            timeout=timeout_s, limits=httpx.Limits(max_connections=max_connections, keepalive_expiry=CONNECTION_IDLE_S)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None,
                   idempotency_key: str | None = None) -> Reply:
        return self._reply(await self._http.send(self.build(method, path, body, params, idempotency_key)))

    async def place_order(self, symbol: str, side: str, qty: str, price: str | None = None, type: str = "limit",
                          tif: str | None = None, stp: str | None = None, quote_budget: str | None = None,
                          client_order_id: int | None = None, idempotency_key: str | None = None) -> Reply:
        body = _order_body(symbol, side, qty, price, type, tif, stp, quote_budget, client_order_id)
        return await self.call("POST", "/v1/orders", body, idempotency_key=idempotency_key)

    async def cancel(self, order_id: int, idempotency_key: str | None = None) -> Reply:
        return await self.call("DELETE", f"/v1/orders/{order_id}", idempotency_key=idempotency_key)

    async def balances(self, min_seq: int | None = None, user: int | None = None) -> Reply:
        return await self.call("GET", "/v1/balances", params={"user": user, "min_seq": min_seq})
