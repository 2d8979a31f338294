"""The gateway's request bodies (JSON, decoded strictly: an unknown field, a missing one
or a wrong type is a 400 naming it) and how answers are written back.

Money is a decimal string everywhere ("0.5", "150.00"); ids are JSON integers.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ledger.app.gateway.bridge import CLIENT_REQUEST_ID_MAX
from ledger.protocol.limits import ASSET_DECIMALS_MAX, FEE_PPM_MAX, USER_ID_MAX

ClientId = Annotated[int, msgspec.Meta(ge=1, le=CLIENT_REQUEST_ID_MAX)]
UserId = Annotated[int, msgspec.Meta(ge=1, le=USER_ID_MAX)]
Decimal = Annotated[str, msgspec.Meta(max_length=80, examples=["0.5"])]
Code = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class _Body(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class OrderBody(_Body, frozen=True):
    """Place an order. ``qty`` is in base units (whole lots), ``price`` in quote per base
    unit (whole ticks; a limit order's, and only a limit order's). A market buy spends
    at most ``quote_budget`` (quote units). ``client_order_id`` is yours to choose
    (unique per account): it names the order in a cancel and makes a retry safe."""

    symbol: Code
    side: Literal["buy", "sell"]
    qty: Decimal
    type: Literal["limit", "market"] = "limit"
    price: Decimal | None = None
    tif: Literal["gtc", "ioc", "fok", "post_only"] | None = None
    stp: Literal["cancel_taker", "cancel_maker", "cancel_both"] = "cancel_taker"
    quote_budget: Decimal | None = None
    client_order_id: ClientId | None = None


class FundsBody(_Body, frozen=True):
    """An operator's deposit to, or withdrawal from, ``user``'s available balance."""

    user: UserId
    asset: Code
    amount: Decimal


class AssetBody(_Body, frozen=True):
    """List an asset: amounts of it are integers of 10**-decimals."""

    code: Code
    decimals: Annotated[int, msgspec.Meta(ge=0, le=ASSET_DECIMALS_MAX)]


class SymbolBody(_Body, frozen=True):
    """Open a market. ``lot`` is the quantity step (base units), ``price_step`` the price
    step (quote units per base unit); both exact in their assets' decimals."""

    name: Code
    base: Code
    quote: Code
    lot: Decimal
    price_step: Decimal
    maker_fee_ppm: Annotated[int, msgspec.Meta(ge=0, le=FEE_PPM_MAX)] = 0
    taker_fee_ppm: Annotated[int, msgspec.Meta(ge=0, le=FEE_PPM_MAX)] = 0


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """Every 4xx and 5xx: a stable ``error`` code, a sentence, and where it applies the
    field (a JSON path such as ``$.qty``)."""

    error: str
    message: str
    field: str | None = None
    retry_after_s: float | None = None


BODY_TYPES: dict[str, type] = {
    "OrderBody": OrderBody,
    "FundsBody": FundsBody,
    "AssetBody": AssetBody,
    "SymbolBody": SymbolBody,
    "ErrorBody": ErrorBody,
}

_ENCODER = msgspec.json.Encoder()


def to_json(value: Any) -> bytes:
    return _ENCODER.encode(value)
