"""What the matching engine emits, one stream per symbol (engine.outputs).

Every output carries the symbol stream's contiguous ``seq`` and ``input_seq``, the
balance.events seq of the UBSCore event (OrderAccepted or CancelRequested) that caused
it, so a restarted engine knows where to resume. UBSCore settles ``Trade`` and releases
locks on the terminal events; it needs nothing else from the engine.
"""

from __future__ import annotations

from typing import Union

import msgspec

from ledger.protocol.commands import Side


class _Output(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    pass


class OrderRested(_Output, frozen=True):
    """The order (or its remainder) now rests on the book."""

    seq: int
    symbol: str
    input_seq: int
    order_id: int
    user: int
    side: Side
    price: int
    qty_remaining: int


class Trade(_Output, frozen=True):
    """A fill at the maker's price. ``taker_limit_price`` is 0 for a market order.
    ``maker_done``/``taker_done`` say whether that order has ended with this fill."""

    seq: int
    symbol: str
    input_seq: int
    trade_id: int
    price: int
    qty: int
    maker_side: Side
    maker_user: int
    maker_order_id: int
    taker_user: int
    taker_order_id: int
    taker_limit_price: int
    maker_done: bool
    taker_done: bool


class OrderCancelled(_Output, frozen=True):
    """The order ended by cancellation (by request or self-trade prevention)."""

    seq: int
    symbol: str
    input_seq: int
    order_id: int
    user: int
    qty_remaining: int
    reason: int


class OrderExpired(_Output, frozen=True):
    """The order ended unfilled or partly filled by its time in force (IOC, FOK, market)."""

    seq: int
    symbol: str
    input_seq: int
    order_id: int
    user: int
    qty_remaining: int
    reason: int


class OrderRejected(_Output, frozen=True):
    """The engine refused an order (never matched) or a cancel of an unknown order."""

    seq: int
    symbol: str
    input_seq: int
    order_id: int
    user: int
    reason: int


EngineOutput = Union[OrderRested, Trade, OrderCancelled, OrderExpired, OrderRejected]
ENGINE_OUTPUT_TYPES: tuple[type, ...] = (OrderRested, Trade, OrderCancelled, OrderExpired, OrderRejected)
