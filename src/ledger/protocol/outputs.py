"""What the matching engine emits, one stream per symbol (engine.outputs).

Every output carries the symbol stream's contiguous ``seq`` and ``input_seq``, the
balance.events seq of the UBSCore event (OrderAccepted or CancelRequested) that caused
it, so a restarted engine knows where to resume. A stream opens with ``BookOpened``,
which holds the symbol's definition, so a book is rebuilt from its stream alone. UBSCore
settles ``Trade`` and releases locks on the terminal events; it needs nothing else from
the engine.
"""

from __future__ import annotations

from typing import Union

import msgspec

from ledger.protocol.commands import Int64, Side
from ledger.protocol.market import Symbol


class _Output(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    pass


class BookOpened(_Output, frozen=True):
    """The engine took in the symbol's listing (``input_seq`` is its ``SymbolListed``):
    the first output of every stream, carrying the definition (lot, tick, fees) that
    rebuilding the book from the stream needs."""

    seq: Int64
    symbol: str
    input_seq: Int64
    definition: Symbol


class OrderRested(_Output, frozen=True):
    """The order (or its remainder) now rests on the book."""

    seq: Int64
    symbol: str
    input_seq: Int64
    order_id: Int64
    user: Int64
    side: Side
    price: Int64
    qty_remaining: Int64


class Trade(_Output, frozen=True):
    """A fill at the maker's price. ``taker_limit_price`` is 0 for a market order.
    ``maker_done``/``taker_done`` say whether that order has ended with this fill."""

    seq: Int64
    symbol: str
    input_seq: Int64
    trade_id: Int64
    price: Int64
    qty: Int64
    maker_side: Side
    maker_user: Int64
    maker_order_id: Int64
    taker_user: Int64
    taker_order_id: Int64
    taker_limit_price: Int64
    maker_done: bool
    taker_done: bool


class OrderCancelled(_Output, frozen=True):
    """The order ended by cancellation (by request or self-trade prevention)."""

    seq: Int64
    symbol: str
    input_seq: Int64
    order_id: Int64
    user: Int64
    qty_remaining: Int64
    reason: Int64


class OrderExpired(_Output, frozen=True):
    """The order ended unfilled or partly filled by its time in force (IOC, FOK, market)."""

    seq: Int64
    symbol: str
    input_seq: Int64
    order_id: Int64
    user: Int64
    qty_remaining: Int64
    reason: Int64


class OrderRejected(_Output, frozen=True):
    """The engine refused an order (never matched) or a cancel of an unknown order."""

    seq: Int64
    symbol: str
    input_seq: Int64
    order_id: Int64
    user: Int64
    reason: Int64


class OrderAmended(_Output, frozen=True):
    """The engine applied an amend (``input_seq`` is its ``AmendRequested``): the order's
    total is now ``qty`` lots at ``price``, ``qty_remaining`` of it unfilled. With
    ``priority_kept`` (a reduce) it keeps its place in the queue and this is all; else (a
    replace) it is off the book, and what follows for the same input is how it goes on as
    a GTC limit taker at ``price``: trades, then ``OrderRested`` (an order id already
    seen), or ``OrderCancelled`` by self-trade prevention, or nothing after a trade that
    filled it."""

    seq: Int64
    symbol: str
    input_seq: Int64
    order_id: Int64
    user: Int64
    side: Side
    price: Int64
    qty: Int64
    qty_remaining: Int64
    priority_kept: bool


class AmendRejected(_Output, frozen=True):
    """The engine refused an amend and changed nothing: ``UNKNOWN_ORDER`` (the order had
    already ended) or ``POST_ONLY_WOULD_TAKE`` (a post-only order replaced to a price that
    would cross; it stays as it was)."""

    seq: Int64
    symbol: str
    input_seq: Int64
    order_id: Int64
    user: Int64
    reason: Int64


EngineOutput = Union[
    BookOpened, OrderRested, Trade, OrderCancelled, OrderExpired, OrderRejected, OrderAmended, AmendRejected
]
ENGINE_OUTPUT_TYPES: tuple[type, ...] = (
    BookOpened,
    OrderRested,
    Trade,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderAmended,
    AmendRejected,
)
