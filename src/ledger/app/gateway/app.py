"""The gateway's HTTP API (Starlette): authenticated, exact, idempotent.

A command request is authenticated, decoded strictly, converted to integers exactly and
checked against the schema before anything is sent; then it is sent through the
``Bridge`` and answered with UBSCore's answer (200 accepted, 422 rejected with the reason)
or, past ``answer_timeout_s``, 202 with where to ask again. A read is served from the
projection, after it has reached the ``min_seq`` the request names (bounded by
``read_wait_s``). See ``docs/gateway.md`` for every route and status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.app.gateway import money
from ledger.app.gateway.bridge import (
    GATEWAY_REQUEST_ID_BASE,
    Bridge,
    BridgeError,
    OutcomeUnknown,
    is_duplicate,
    request_digest,
)
from ledger.app.gateway.limits import ANSWER_TIMEOUT_S_DEFAULT, HEALTH_LAG_MAX_DEFAULT, READ_WAIT_S_DEFAULT
from ledger.app.gateway.schema import AssetBody, ErrorBody, FundsBody, OrderBody, SymbolBody, to_json
from ledger.logs import layout
from ledger.protocol.codec import EVENTS, CommandError, check_command
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
    Withdraw,
)
from ledger.protocol.events import (
    AssetListed,
    CancelRequested,
    Deposited,
    OrderAccepted,
    Rejected,
    SymbolListed,
    Withdrawn,
)
from ledger.protocol.market import Asset, DefinitionError, Symbol
from ledger.protocol.reasons import Reason, describe

# A request body larger than this is refused (413) before it is read further. Commands
# are tiny (COMMAND_BYTES_MAX is 4 KiB once encoded).
BODY_BYTES_MAX = 4096
READ_POLL_S = 0.02
# An idempotency key: 1..64 visible ASCII characters.
IDEMPOTENCY_KEY_CHARS_MAX = 64
# Rows a page of a read returns at most.
PAGE_LIMIT_MAX = 1000
# Threads that read the projection (each holds its own connection).
READ_THREADS = 4
# How often at most a miss in the market cache re-reads the projection's listings.
MARKET_REFRESH_S_MIN = 0.5

HEADER_IDEMPOTENCY = "Idempotency-Key"

log = logging.getLogger("ledger.gateway")

_SIDES = {"buy": Side.BUY, "sell": Side.SELL}
_SIDE_NAMES = {Side.BUY: "buy", Side.SELL: "sell"}
_TIFS = {"gtc": TimeInForce.GTC, "ioc": TimeInForce.IOC, "fok": TimeInForce.FOK, "post_only": TimeInForce.POST_ONLY}
_TIF_NAMES = {v: k for k, v in _TIFS.items()}
_STPS = {"cancel_taker": SelfTrade.CANCEL_TAKER, "cancel_maker": SelfTrade.CANCEL_MAKER,
         "cancel_both": SelfTrade.CANCEL_BOTH}
_STP_NAMES = {v: k for k, v in _STPS.items()}
_TYPE_NAMES = {OrderType.LIMIT: "limit", OrderType.MARKET: "market"}


class HttpError(Exception):
    """An answer other than success: ``status`` and the JSON ``ErrorBody``."""

    def __init__(
        self, status: int, error: str, message: str, field: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error, message, field, retry_after_s)


class GatewayConfig(msgspec.Struct, frozen=True):
    """The gateway's named limits (every one has a command-line option)."""

    answer_timeout_s: float = ANSWER_TIMEOUT_S_DEFAULT
    read_wait_s: float = READ_WAIT_S_DEFAULT
    health_lag_max: int = HEALTH_LAG_MAX_DEFAULT


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(value), status_code=status, media_type="application/json", headers=headers)


def _error(error: HttpError) -> Response:
    headers = None
    if error.body.retry_after_s is not None:
        headers = {"Retry-After": str(max(1, int(error.body.retry_after_s + 0.999)))}
    return _json(error.status, error.body, headers)


class MarketCache:
    """Assets and symbols, for converting decimals: read from the projection, and kept up
    to date by every listing the bridge's tailer meets."""

    def __init__(self) -> None:
        self.assets: dict[str, int] = {}
        self.symbols: dict[str, Symbol] = {}
        self._refreshed = 0.0

    def listed(self, event: Any) -> None:
        if type(event) is AssetListed:
            self.assets = {**self.assets, event.asset.code: event.asset.decimals}
        elif type(event) is SymbolListed:
            self.symbols = {**self.symbols, event.symbol.name: event.symbol}

    def load(self, store: Any) -> None:
        self._refreshed = time.monotonic()
        assets = {row["code"]: row["decimals"] for row in store.scan("assets")}
        symbols = {
            row["name"]: Symbol(row["name"], row["base"], row["quote"], row["lot"], row["tick"], row["maker_fee_ppm"],
                                row["taker_fee_ppm"])
            for row in store.scan("symbols")
        }
        # Whole dicts replaced, never changed in place under a reader.
        self.assets = {**self.assets, **assets}
        self.symbols = {**self.symbols, **symbols}

    def may_refresh(self) -> bool:
        return time.monotonic() - self._refreshed >= MARKET_REFRESH_S_MIN


class Gateway:
    """The application: ``bridge`` to the logs, ``open_store`` to make a store of the
    projection (called once per read thread), ``auth`` an authenticator
    (``ledger.app.gateway.auth.Authenticator``)."""

    def __init__(self, bridge: Bridge, open_store: Callable[[], Any], auth: Any, config: GatewayConfig) -> None:
        self.bridge = bridge
        self.auth = auth
        self.config = config
        self.market = MarketCache()
        bridge.on_listing = self.market.listed
        self._open_store = open_store
        self._local = threading.local()
        self._readers = concurrent.futures.ThreadPoolExecutor(READ_THREADS, thread_name_prefix="gateway-read")
        routes = [
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/openapi.json", self.openapi, methods=["GET"]),
            Route("/v1/market", self.public(self.market_view), methods=["GET"]),
            Route("/v1/orders", self.signed(self.place_order), methods=["POST"]),
            Route("/v1/orders", self.signed(self.list_orders), methods=["GET"]),
            Route("/v1/orders/{order_id:int}", self.signed(self.get_order), methods=["GET"]),
            Route("/v1/orders/{order_id:int}", self.signed(self.cancel_order), methods=["DELETE"]),
            Route("/v1/orders/by-client-id/{client_id:int}", self.signed(self.cancel_by_client_id),
                  methods=["DELETE"]),
            Route("/v1/deposits", self.signed(self.deposit), methods=["POST"]),
            Route("/v1/withdrawals", self.signed(self.withdraw), methods=["POST"]),
            Route("/v1/assets", self.signed(self.list_asset), methods=["POST"]),
            Route("/v1/symbols", self.signed(self.list_symbol), methods=["POST"]),
            Route("/v1/balances", self.signed(self.balances), methods=["GET"]),
            Route("/v1/ledger/{asset}", self.signed(self.ledger), methods=["GET"]),
            Route("/v1/trades", self.signed(self.user_trades), methods=["GET"]),
            Route("/v1/symbols/{symbol}/trades", self.signed(self.symbol_trades), methods=["GET"]),
            Route("/v1/symbols/{symbol}/depth", self.signed(self.depth), methods=["GET"]),
            Route("/v1/requests/{ref:int}", self.signed(self.request_status), methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan,
                             exception_handlers={404: self._not_found, 405: self._not_allowed})

    # -- plumbing ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            await self.read(self.market.load)
        except Exception as error:  # noqa: BLE001 (the projection may not exist yet: read again on a miss)
            log.warning("gateway: the listings are not readable from the projection yet: %s", error)
        yield
        self._readers.shutdown(wait=False, cancel_futures=True)

    async def _not_found(self, request: Request, exc: Exception) -> Response:
        return _error(HttpError(404, "not_found", f"no route {request.method} {request.url.path}"))

    async def _not_allowed(self, request: Request, exc: Exception) -> Response:
        return _error(HttpError(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}"))

    def _store(self) -> Any:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._open_store()
        return store

    def _read(self, work: Callable[[Any], Any]) -> Any:
        from settlement.store import StoreError

        try:
            return work(self._store())
        except StoreError as error:
            # The projection is not there yet, or its connection broke: open it again
            # on the next read.
            store, self._local.store = getattr(self._local, "store", None), None
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()
            raise HttpError(503, "projection_unavailable", f"the projection cannot be read: {error}",
                            retry_after_s=1.0) from None

    async def read(self, work: Callable[[Any], Any]) -> Any:
        """Run ``work(store)`` on a read thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read, work)

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > BODY_BYTES_MAX):
            raise HttpError(413, "body_too_large", f"a request body is at most {BODY_BYTES_MAX} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > BODY_BYTES_MAX:
                raise HttpError(413, "body_too_large", f"a request body is at most {BODY_BYTES_MAX} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def public(self, handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except HttpError as error:
                return _error(error)

        return run

    def signed(
        self, handler: Callable[[Request, Any, bytes], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Authenticate (the signature covers method, path with query, and body), then
        run ``handler(request, principal, body)``; every failure is a JSON error."""
        from ledger.app.gateway.auth import AuthError, request_target

        async def run(request: Request) -> Response:
            try:
                body = await self._body(request)
                path = request_target(request.scope.get("raw_path") or request.url.path.encode(),
                                      request.scope.get("query_string", b""))
                try:
                    principal = self.auth.authenticate(request.method, path, request.headers, body)
                except AuthError as error:
                    raise HttpError(error.status, error.code, error.message,
                                    retry_after_s=getattr(error, "retry_after_s", None)) from None
                return await handler(request, principal, body)
            except AuthError as error:  # a role check in the handler
                return _error(HttpError(error.status, error.code, error.message))
            except HttpError as error:
                return _error(error)
            except OutcomeUnknown as error:
                return _error(HttpError(503, "outcome_unknown", str(error), retry_after_s=1.0))
            except BridgeError as error:
                return _error(HttpError(503, "unavailable", str(error), retry_after_s=1.0))
            except Exception as error:  # noqa: BLE001 (answered as JSON and logged, never a bare 500 page)
                log.exception("gateway: %s %s failed", request.method, request.url.path)
                return _error(HttpError(500, "internal", f"the gateway failed on this request: {type(error).__name__}"))

        return run

    # -- who may do what --------------------------------------------------------------

    @staticmethod
    def _operator(principal: Any) -> None:
        from ledger.app.gateway.auth import require_operator

        require_operator(principal)

    @staticmethod
    def _trader(principal: Any) -> int:
        """The account a trader key acts for (orders are placed with a trader key only)."""
        from ledger.app.gateway.auth import require_user

        require_user(principal, principal.user)
        return int(principal.user)

    @staticmethod
    def _account(principal: Any, request: Request) -> int:
        """The account a read is about: a trader's own; an operator names one (?user=)."""
        from ledger.app.gateway.auth import require_reader

        asked = request.query_params.get("user")
        if principal.role == "operator" and asked is None:
            raise HttpError(400, "missing_field", "an operator's read names the account: ?user=N", "user")
        user = int(principal.user) if asked is None else _int_param(asked, "user", 0)  # 0: the fee account
        require_reader(principal, user)
        return user

    # -- decoding ---------------------------------------------------------------------

    @staticmethod
    def _decode(body: bytes, kind: type) -> Any:
        if not body:
            raise HttpError(400, "malformed_json", "the request needs a JSON body")
        try:
            return msgspec.json.decode(body, type=kind)
        except msgspec.ValidationError as error:
            text = str(error)
            field = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else None
            for prefix, code in (("Object contains unknown field `", "unknown_field"),
                                 ("Object missing required field `", "missing_field")):
                if text.startswith(prefix):
                    # msgspec's path is the object's; the field is the member it names.
                    name = text[len(prefix):].split("`", 1)[0]
                    raise HttpError(400, code, text, f"{field or '$'}.{name}") from None
            raise HttpError(400, "invalid_field", text, field) from None
        except msgspec.DecodeError as error:
            raise HttpError(400, "malformed_json", f"the body is not JSON: {error}") from None

    async def _asset(self, code: str, field: str) -> int:
        decimals = self.market.assets.get(code)
        if decimals is None and self.market.may_refresh():
            await self.read(self.market.load)
            decimals = self.market.assets.get(code)
        if decimals is None:
            raise HttpError(400, "unknown_asset", f"no asset {code!r} is listed", field)
        return decimals

    async def _symbol(self, name: str, field: str) -> Symbol:
        symbol = self.market.symbols.get(name)
        if symbol is None and self.market.may_refresh():
            await self.read(self.market.load)
            symbol = self.market.symbols.get(name)
        if symbol is None:
            raise HttpError(404 if field == "path" else 400, "unknown_symbol", f"no symbol {name!r} is listed",
                            None if field == "path" else field)
        return symbol

    # -- commands ---------------------------------------------------------------------

    async def _command(self, request: Request, body: bytes, principal: Any, command: Any,
                       client_id: int | None = None) -> Response:
        """Send ``command`` (idempotently under the request's key) and answer with its
        outcome."""
        key = request.headers.get(HEADER_IDEMPOTENCY)
        if key is not None and not (0 < len(key) <= IDEMPOTENCY_KEY_CHARS_MAX and key.isascii() and key.isprintable()):
            raise HttpError(400, "invalid_idempotency_key",
                            f"{HEADER_IDEMPOTENCY} must be 1..{IDEMPOTENCY_KEY_CHARS_MAX} printable ASCII characters")
        try:  # the schema, checked before anything is written
            check_command(msgspec.structs.replace(command, request_id=client_id or GATEWAY_REQUEST_ID_BASE))
        except CommandError as error:
            raise HttpError(400, "invalid_command", str(error)) from None
        scope = "operator" if principal.role == "operator" else f"user:{principal.user}"
        digest = request_digest(request.method, request.url.path, body)
        sent = await self.bridge.send(command, scope, key, digest, client_id)
        if sent.conflict:
            raise HttpError(409, "idempotency_key_reused",
                            f"{HEADER_IDEMPOTENCY} {key!r} was used for a different request (request {sent.ref})")
        answer = sent.answer
        if answer is None:
            if sent.offset is None:
                raise HttpError(503, "not_sent", "the command could not be sent; retry with the same "
                                f"{HEADER_IDEMPOTENCY} (request {sent.ref})", retry_after_s=1.0)
            answer = await self.bridge.answer(sent.offset, self.config.answer_timeout_s)
        if answer is None:
            return _json(202, {"status": "pending", "ref": sent.ref, "offset": sent.offset,
                               "poll": f"/v1/requests/{sent.ref}"})
        return await self._answered(answer, sent.ref, sent.replayed)

    async def _answered(self, answer: bytes, ref: int, replayed: bool) -> Response:
        event = EVENTS.decode(answer, "balance.events record")
        retry = replayed
        if is_duplicate(event):
            original_reason = event.original_reason
            loop = asyncio.get_running_loop()
            original = await loop.run_in_executor(None, self.bridge.event_by_seq, event.original_seq)
            event = EVENTS.decode(original, "balance.events record")
            retry = True
            if type(event) is Rejected and event.reason != original_reason:  # pragma: no cover (never expected)
                raise HttpError(500, "inconsistent", f"seq {event.seq} is not the original outcome it is named as")
        view = self._event_view(event)
        view["ref"] = ref
        if retry:
            view["retry"] = True
        return _json(422 if type(event) is Rejected else 200, view)

    def _event_view(self, e: Any) -> dict[str, Any]:
        kind = type(e)
        if kind is Rejected:
            reason = Reason(e.reason) if e.reason in Reason._value2member_map_ else None
            return {"status": "rejected", "seq": e.seq, "reason": e.reason,
                    "reason_name": reason.name if reason is not None else str(e.reason),
                    "message": describe(e.reason)}
        if kind is Deposited or kind is Withdrawn:
            decimals = self._known("assets", e.asset)
            return {"status": "accepted", "seq": e.seq, "type": "deposit" if kind is Deposited else "withdrawal",
                    "user": e.user, "asset": e.asset, "amount": money.format_minor(e.amount, decimals),
                    "available": money.format_minor(e.available, decimals),
                    "locked": money.format_minor(e.locked, decimals)}
        if kind is OrderAccepted:
            return {"status": "accepted", "seq": e.seq, "type": "order", **self._order_view(e)}
        if kind is CancelRequested:
            return {"status": "accepted", "seq": e.seq, "type": "cancel", "order_id": e.order_id,
                    "symbol": e.symbol, "note": "the cancel is requested; the book decides (the order may be filled)"}
        if kind is AssetListed:
            return {"status": "accepted", "seq": e.seq, "type": "asset", "code": e.asset.code,
                    "decimals": e.asset.decimals}
        if kind is SymbolListed:
            return {"status": "accepted", "seq": e.seq, "type": "symbol", **self._symbol_view(e.symbol)}
        raise HttpError(500, "unexpected_answer", f"{kind.__name__} is not an answer to a command")

    def _symbol_view(self, s: Symbol) -> dict[str, Any]:
        bd, qd = self._known("assets", s.base), self._known("assets", s.quote)
        return {"name": s.name, "base": s.base, "quote": s.quote,
                "lot": money.format_step(money.lot_step(s, bd)),
                "price_step": money.format_step(money.price_step(s, bd, qd)),
                "maker_fee_ppm": s.maker_fee_ppm, "taker_fee_ppm": s.taker_fee_ppm}

    def _known(self, table: str, name: str) -> Any:
        """A listing the answer is written with; on a miss the listings are read again
        (on this thread: rare), and a listing still unknown is a 503, never an amount
        written with a wrong number of decimals."""
        found = getattr(self.market, table).get(name)
        if found is None:
            with contextlib.suppress(Exception):
                self.market.load(self._store())
            found = getattr(self.market, table).get(name)
        if found is None:
            raise HttpError(503, "market_unknown", f"the listing of {name!r} is not in the projection yet; ask again",
                            retry_after_s=1.0)
        return found

    def _decimals(self, symbol_name: str) -> tuple[Symbol, int, int]:
        s: Symbol = self._known("symbols", symbol_name)
        return s, self._known("assets", s.base), self._known("assets", s.quote)

    def _qty(self, symbol: str, lots: int) -> str:
        s, bd, _ = self._decimals(symbol)
        return money.format_qty(lots, s, bd)

    def _price(self, symbol: str, ticks: int) -> str:
        s, bd, qd = self._decimals(symbol)
        return money.format_price(ticks, s, bd, qd)

    def _amount(self, asset: str, units: int) -> str:
        return money.format_minor(units, self._known("assets", asset))

    def _order_view(self, e: OrderAccepted) -> dict[str, Any]:
        s, _, _ = self._decimals(e.symbol)
        quote = s.quote
        return {"order_id": e.order_id, "client_order_id": e.request_id if e.request_id < GATEWAY_REQUEST_ID_BASE
                else None, "user": e.user, "symbol": e.symbol, "side": _SIDE_NAMES[e.side],
                "order_type": _TYPE_NAMES[e.order_type], "tif": _TIF_NAMES[e.tif], "stp": _STP_NAMES[e.stp],
                "qty": self._qty(e.symbol, e.qty), "price": self._price(e.symbol, e.price),
                "quote_budget": self._amount(quote, e.quote_budget),
                "locked": {"asset": e.lock_asset, "amount": self._amount(e.lock_asset, e.lock_amount)},
                "available": self._amount(e.lock_asset, e.available)}

    async def place_order(self, request: Request, principal: Any, body: bytes) -> Response:
        user = self._trader(principal)
        b: OrderBody = self._decode(body, OrderBody)
        symbol = await self._symbol(b.symbol, "$.symbol")
        bd, qd = await self._asset(symbol.base, "$.symbol"), await self._asset(symbol.quote, "$.symbol")
        try:
            qty = money.to_lots(b.qty, symbol, bd, "$.qty")
            if b.type == "limit":
                if b.price is None:
                    raise HttpError(400, "missing_field", "a limit order needs a price", "$.price")
                if b.quote_budget is not None:
                    raise HttpError(400, "invalid_field", "quote_budget is for market buys only", "$.quote_budget")
                price, budget = money.to_ticks(b.price, symbol, bd, qd, "$.price"), 0
            else:
                if b.price is not None:
                    raise HttpError(400, "invalid_field", "a market order takes no price", "$.price")
                price = 0
                if b.side == "buy":
                    if b.quote_budget is None:
                        raise HttpError(400, "missing_field", "a market buy needs a quote_budget", "$.quote_budget")
                    budget = money.to_minor(b.quote_budget, qd, "$.quote_budget")
                elif b.quote_budget is not None:
                    raise HttpError(400, "invalid_field", "quote_budget is for market buys only", "$.quote_budget")
                else:
                    budget = 0
        except money.MoneyError as error:
            raise HttpError(400, "invalid_amount", str(error), error.field) from None
        tif = b.tif or ("gtc" if b.type == "limit" else "ioc")
        if b.type == "market" and tif not in ("ioc", "fok"):
            raise HttpError(400, "invalid_field", "a market order's tif is ioc or fok", "$.tif")
        command = PlaceOrder(user, 0, b.symbol, _SIDES[b.side], qty, price,
                             OrderType.LIMIT if b.type == "limit" else OrderType.MARKET, _TIFS[tif], budget,
                             _STPS[b.stp], _now_ms())
        return await self._command(request, body, principal, command, b.client_order_id)

    async def cancel_order(self, request: Request, principal: Any, body: bytes) -> Response:
        user = self._trader(principal)
        order_id = _path_id(request, "order_id")
        from settlement.store import Queries

        order = await self.read(lambda store: Queries(store).order(order_id))
        if order is not None and order["user"] != user:
            raise HttpError(403, "not_your_account", f"order {order_id} is not this key's")
        command = CancelOrder(user, 0, order_id, _now_ms())
        return await self._command(request, body, principal, command)

    async def cancel_by_client_id(self, request: Request, principal: Any, body: bytes) -> Response:
        user = self._trader(principal)
        client_id = _path_id(request, "client_id")
        if client_id >= GATEWAY_REQUEST_ID_BASE:
            raise HttpError(400, "invalid_field", f"a client order id is 1..{GATEWAY_REQUEST_ID_BASE - 1}", "path")
        command = CancelOrder(user, 0, 0, _now_ms(), client_id)
        return await self._command(request, body, principal, command)

    async def _funds(self, request: Request, principal: Any, body: bytes, kind: type) -> Response:
        self._operator(principal)
        b: FundsBody = self._decode(body, FundsBody)
        decimals = await self._asset(b.asset, "$.asset")
        try:
            amount = money.to_minor(b.amount, decimals, "$.amount")
        except money.MoneyError as error:
            raise HttpError(400, "invalid_amount", str(error), error.field) from None
        return await self._command(request, body, principal, kind(b.user, 0, b.asset, amount, _now_ms()))

    async def deposit(self, request: Request, principal: Any, body: bytes) -> Response:
        return await self._funds(request, principal, body, Deposit)

    async def withdraw(self, request: Request, principal: Any, body: bytes) -> Response:
        return await self._funds(request, principal, body, Withdraw)

    async def list_asset(self, request: Request, principal: Any, body: bytes) -> Response:
        self._operator(principal)
        b: AssetBody = self._decode(body, AssetBody)
        try:
            asset = Asset(b.code, b.decimals)
        except DefinitionError as error:
            raise HttpError(400, "invalid_definition", str(error), "$.code") from None
        return await self._command(request, body, principal, ListAsset(0, asset, _now_ms()))

    async def list_symbol(self, request: Request, principal: Any, body: bytes) -> Response:
        self._operator(principal)
        b: SymbolBody = self._decode(body, SymbolBody)
        bd = await self._asset(b.base, "$.base")
        qd = await self._asset(b.quote, "$.quote")
        try:
            lot_units = money.parse_decimal(b.lot, "$.lot") * 10**bd
            if lot_units <= 0 or lot_units.denominator != 1:
                raise money.MoneyError("$.lot", f"{b.lot!r} must be a positive amount of {b.base} in its decimals")
            tick_units = money.parse_decimal(b.price_step, "$.price_step") * lot_units.numerator * 10**qd / 10**bd
            if tick_units <= 0 or tick_units.denominator != 1:
                raise money.MoneyError("$.price_step", f"{b.price_step!r} times a lot must be a positive whole "
                                       f"number of {b.quote}'s minor units")
            symbol = Symbol(b.name, b.base, b.quote, lot_units.numerator, tick_units.numerator, b.maker_fee_ppm,
                            b.taker_fee_ppm)
        except money.MoneyError as error:
            raise HttpError(400, "invalid_amount", str(error), error.field) from None
        except DefinitionError as error:
            raise HttpError(400, "invalid_definition", str(error)) from None
        return await self._command(request, body, principal, ListSymbol(0, symbol, _now_ms()))

    async def request_status(self, request: Request, principal: Any, body: bytes) -> Response:
        ref = _path_id(request, "ref")
        loop = asyncio.get_running_loop()
        row = await loop.run_in_executor(None, self.bridge.stored, ref)
        scope = "operator" if principal.role == "operator" else f"user:{principal.user}"
        if row is None or row[0] != scope:
            raise HttpError(404, "not_found", f"no request {ref} of this key's account")
        _, _, offset, answer = row
        if answer is None and offset is not None and offset >= 0:
            answer = await self.bridge.answer(offset, min(self.config.answer_timeout_s, 1.0))
        if answer is None:
            return _json(202, {"status": "pending" if offset != -1 else "not_sent", "ref": ref, "offset": offset,
                               "poll": f"/v1/requests/{ref}"})
        return await self._answered(answer, ref, False)

    # -- reads ------------------------------------------------------------------------

    async def _reached(self, request: Request) -> int:
        """Wait until the projection has applied balance.events up to ``?min_seq=``;
        return the seq it has reached."""
        raw = request.query_params.get("min_seq")
        wanted = 0 if raw is None else _int_param(raw, "min_seq", 0)
        deadline = time.monotonic() + self.config.read_wait_s
        while True:
            checkpoint = await self.read(lambda store: store.checkpoint(layout.EVENTS))
            seq = checkpoint.seq if checkpoint is not None else 0
            if seq >= wanted:
                return seq
            if time.monotonic() >= deadline:
                raise HttpError(504, "projection_behind", f"the projection is at seq {seq}, not yet at min_seq "
                                f"{wanted}, after {self.config.read_wait_s:g} s; ask again", "min_seq", 1.0)
            await asyncio.sleep(READ_POLL_S)

    async def balances(self, request: Request, principal: Any, body: bytes) -> Response:
        user = self._account(principal, request)
        seq = await self._reached(request)
        from settlement.store import Queries

        found = await self.read(lambda store: Queries(store).balances(user))
        return _json(200, {"user": user, "seq": seq, "balances": {
            asset: {"available": self._amount(asset, a), "locked": self._amount(asset, lk)}
            for asset, (a, lk) in found.items()}})

    async def ledger(self, request: Request, principal: Any, body: bytes) -> Response:
        user = self._account(principal, request)
        asset = request.path_params["asset"]
        await self._asset(asset, "path")
        limit = _int_param(request.query_params.get("limit", "100"), "limit", 1, PAGE_LIMIT_MAX)
        before = request.query_params.get("before_seq")
        before_seq = None if before is None else _int_param(before, "before_seq", 1)
        seq = await self._reached(request)
        from settlement.store import Queries

        rows = await self.read(lambda store: Queries(store).ledger(user, asset, limit, before_seq))
        entries = [{"seq": r["seq"], "kind": r["kind"], "change": self._amount(asset, r["change"]),
                    "available": self._amount(asset, r["available"]), "locked": self._amount(asset, r["locked"]),
                    "symbol": r["symbol"], "order_id": r["order_id"], "trade_id": r["trade_id"]} for r in rows]
        return _json(200, {"user": user, "asset": asset, "seq": seq, "entries": entries,
                           "next_before_seq": entries[-1]["seq"] if len(entries) == limit else None})

    def _trade_view(self, r: dict[str, Any]) -> dict[str, Any]:
        s, _, _ = self._decimals(r["symbol"])
        base, quote = s.base, s.quote
        view = {"trade_id": r["trade_id"], "symbol": r["symbol"], "price": self._price(r["symbol"], r["price"]),
                "qty": self._qty(r["symbol"], r["qty"]), "base_amount": self._amount(base, r["base_amount"]),
                "quote_amount": self._amount(quote, r["quote_amount"]), "seq": r["seq"]}
        return view

    async def user_trades(self, request: Request, principal: Any, body: bytes) -> Response:
        user = self._account(principal, request)
        limit = _int_param(request.query_params.get("limit", "100"), "limit", 1, PAGE_LIMIT_MAX)
        seq = await self._reached(request)
        from settlement.store import Queries

        rows = await self.read(lambda store: Queries(store).user_trades(user, limit))
        trades = []
        for r in rows:
            view = self._trade_view(r)
            s, _, _ = self._decimals(r["symbol"])
            fee_asset = s.base if r["side"] == Side.BUY else s.quote
            view.update(order_id=r["order_id"], side=_SIDE_NAMES[Side(r["side"])],
                        role="maker" if r["maker"] else "taker", fee=self._amount(fee_asset, r["fee"]),
                        fee_asset=fee_asset)
            trades.append(view)
        return _json(200, {"user": user, "seq": seq, "trades": trades})

    async def symbol_trades(self, request: Request, principal: Any, body: bytes) -> Response:
        symbol = request.path_params["symbol"]
        await self._symbol(symbol, "path")
        limit = _int_param(request.query_params.get("limit", "100"), "limit", 1, PAGE_LIMIT_MAX)
        seq = await self._reached(request)
        from settlement.store import Queries

        rows = await self.read(lambda store: Queries(store).recent_trades(symbol, limit))
        trades = [{**self._trade_view(r), "maker_side": _SIDE_NAMES[Side(r["maker_side"])]} for r in rows]
        return _json(200, {"symbol": symbol, "seq": seq, "trades": trades})

    async def depth(self, request: Request, principal: Any, body: bytes) -> Response:
        symbol = request.path_params["symbol"]
        await self._symbol(symbol, "path")
        from settlement.store import DEPTH_LEVELS_MAX, Queries

        levels = _int_param(request.query_params.get("levels", "20"), "levels", 1, DEPTH_LEVELS_MAX)
        seq = await self._reached(request)
        book = await self.read(lambda store: Queries(store).depth(symbol, levels))

        def side(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"price": self._price(symbol, r["price"]), "qty": self._qty(symbol, r["qty"]),
                     "orders": r["orders"]} for r in rows]

        return _json(200, {"symbol": symbol, "seq": seq, "engine_seq": book.get("engine_seq"),
                           "bids": side(book["bids"]), "asks": side(book["asks"])})

    def _order_status_view(self, o: dict[str, Any]) -> dict[str, Any]:
        symbol = o["symbol"]
        return {"order_id": o["order_id"], "user": o["user"], "symbol": symbol,
                "side": _SIDE_NAMES[Side(o["side"])], "order_type": _TYPE_NAMES[OrderType(o["order_type"])],
                "tif": _TIF_NAMES[TimeInForce(o["tif"])], "price": self._price(symbol, o["price"]),
                "qty": self._qty(symbol, o["qty"]), "status": o["status"],
                "filled_qty": self._qty(symbol, o["filled_qty"] or 0), "accepted_seq": o["accepted_seq"]}

    async def get_order(self, request: Request, principal: Any, body: bytes) -> Response:
        order_id = _path_id(request, "order_id")
        seq = await self._reached(request)
        from settlement.store import Queries

        def load(store: Any) -> tuple[Any, Any]:
            q = Queries(store)
            order = q.order(order_id)
            return order, (q.order_fills(order_id) if order is not None else [])

        order, fills = await self.read(load)
        if order is None:
            raise HttpError(404, "not_found", f"no order {order_id} in the projection (at seq {seq})")
        from ledger.app.gateway.auth import require_reader

        require_reader(principal, order["user"])
        view = self._order_status_view(order)
        view["seq"] = seq
        symbol = order["symbol"]
        s, _, _ = self._decimals(symbol)
        fee_asset = s.base if order["side"] == Side.BUY else s.quote
        view["fills"] = [{"trade_id": f["trade_id"], "price": self._price(symbol, f["price"]),
                          "qty": self._qty(symbol, f["qty"]), "role": "maker" if f["maker"] else "taker",
                          "fee": self._amount(fee_asset, f["fee"])} for f in fills]
        return _json(200, view)

    async def list_orders(self, request: Request, principal: Any, body: bytes) -> Response:
        user = self._account(principal, request)
        seq = await self._reached(request)
        from settlement.store import Queries

        rows = await self.read(lambda store: Queries(store).open_orders(user))
        orders = [{"order_id": r["order_id"], "symbol": r["symbol"], "side": _SIDE_NAMES[Side(r["side"])],
                   "price": self._price(r["symbol"], r["price"]), "qty": self._qty(r["symbol"], r["qty"]),
                   "accepted_seq": r["accepted_seq"]} for r in rows]
        return _json(200, {"user": user, "seq": seq, "open_orders": orders})

    async def market_view(self, request: Request) -> Response:
        if self.market.may_refresh():
            await self.read(self.market.load)
        return _json(200, {"assets": [{"code": c, "decimals": d} for c, d in sorted(self.market.assets.items())],
                           "symbols": [self._symbol_view(s) for _, s in sorted(self.market.symbols.items())]})

    # -- operations -------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """200 when the logs answer and the projection's lag is under the bound, else 503."""
        loop = asyncio.get_running_loop()
        problems: list[str] = []
        events_end = None
        try:
            events_end = await asyncio.wait_for(loop.run_in_executor(None, self.bridge.lookup_end), 5.0)
        except (TimeoutError, Exception) as error:  # noqa: BLE001 (health reports, it does not raise)
            problems.append(f"balance.events unreachable: {error or 'timed out'}")
        checkpoint = None
        try:
            checkpoint = await asyncio.wait_for(self.read(lambda store: store.checkpoint(layout.EVENTS)), 5.0)
        except (TimeoutError, Exception) as error:  # noqa: BLE001
            problems.append(f"projection unreachable: {error or 'timed out'}")
        lag = None
        if events_end is not None:
            lag = events_end - (checkpoint.next_offset if checkpoint is not None else 0)
            if lag > self.config.health_lag_max:
                problems.append(f"projection lags balance.events by {lag:,} records (at most "
                                f"{self.config.health_lag_max:,})")
        if self.bridge.failure:
            problems.append(self.bridge.failure)
        body = {"ok": not problems, "problems": problems, "events_end": events_end, "projection_lag": lag,
                "projected_seq": checkpoint.seq if checkpoint is not None else 0,
                "answers_tail_offset": self.bridge.tail_offset, "commands_sent": self.bridge.sent_commands}
        return _json(200 if not problems else 503, body)

    async def openapi(self, request: Request) -> Response:
        from ledger.app.gateway.openapi import document

        return _json(200, document())


def _now_ms() -> int:
    """The command's timestamp: the gateway's clock when the request came (commands carry
    their time so that no reducer reads a clock)."""
    return int(time.time() * 1000)


def _int_param(text: str, name: str, minimum: int, maximum: int = 2**63 - 1) -> int:
    if not (text.isascii() and text.isdigit()) or not minimum <= int(text) <= maximum:
        raise HttpError(400, "invalid_field", f"{name} must be an integer in {minimum}..{maximum}", name)
    return int(text)


def _path_id(request: Request, name: str) -> int:
    value = request.path_params[name]
    if not 1 <= value <= 2**63 - 1:
        raise HttpError(400, "invalid_field", f"{name} must be an integer in 1..{2**63 - 1}", "path")
    return int(value)
