"""Commands: what clients and operators ask UBSCore to do (the balance.operations log).

A command is a request, not a fact: UBSCore answers every command with exactly one event,
an acceptance or a ``Rejected`` with a reason code. Timestamps travel inside commands so
that no reducer reads a clock.

Two kinds of check, in two places. The schema (the field types below: an ``Int64`` is a
true int within 64 bits, an enum one of its values, an amount an int of at most
``BIG_INT_BYTES_MAX`` bytes, the whole at most ``COMMAND_BYTES_MAX`` encoded) is checked
where a command enters: ``check_command`` raises ``CommandError`` naming the field, and
the strict decoder refuses a record that breaks it, so a badly typed value never reaches
a log. The rules (a known asset, a positive amount, enough funds) are ``decide``'s: a
command that breaks one is answered with a recorded ``Rejected``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Union

import msgspec

from ledger.protocol.limits import INT64_MAX, INT64_MIN
from ledger.protocol.market import Asset, Symbol

# An integer field that is not an amount: ids, quantities, prices, timestamps.
Int64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]


class Side(IntEnum):
    """Order side."""

    BUY = 0
    SELL = 1


class OrderType(IntEnum):
    """LIMIT rests at its price; MARKET takes whatever the book offers."""

    LIMIT = 0
    MARKET = 1


class TimeInForce(IntEnum):
    """GTC rests; IOC expires its remainder; FOK fills whole at once or not at all;
    POST_ONLY is rejected if it would take liquidity."""

    GTC = 0
    IOC = 1
    FOK = 2
    POST_ONLY = 3


class SelfTrade(IntEnum):
    """Self-trade prevention: what happens when an order would match its own user's."""

    CANCEL_TAKER = 0
    CANCEL_MAKER = 1
    CANCEL_BOTH = 2


class _Command(msgspec.Struct, frozen=True, array_like=True, tag=True, gc=False):
    pass


class Deposit(_Command, frozen=True):
    """Credit ``amount`` minor units of ``asset`` to ``user``'s available balance."""

    user: Int64
    request_id: Int64
    asset: str
    amount: int
    ts_ms: Int64 = 0


class Withdraw(_Command, frozen=True):
    """Debit ``amount`` from ``user``'s available balance (never from locked funds)."""

    user: Int64
    request_id: Int64
    asset: str
    amount: int
    ts_ms: Int64 = 0


class PlaceOrder(_Command, frozen=True):
    """Place an order of ``qty`` lots. A limit order has ``price`` in ticks; a market buy
    has a ``quote_budget`` in quote minor units, which is what UBSCore locks for it."""

    user: Int64
    request_id: Int64
    symbol: str
    side: Side
    qty: Int64
    price: Int64 = 0
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    quote_budget: int = 0
    stp: SelfTrade = SelfTrade.CANCEL_TAKER
    ts_ms: Int64 = 0


class CancelOrder(_Command, frozen=True):
    """Ask to cancel an order of ``user``; funds are released when the engine confirms.

    The order is named by its id (``order_id`` > 0, ``order_request_id`` 0), or, by a
    client that never saw the id, by the request that placed it: ``order_id`` 0 (no
    order has id 0) and ``order_request_id`` the placing ``PlaceOrder``'s
    ``request_id`` (the client order id; the user is ``user``). A cancel that sets both
    names no one order and is refused ``UNKNOWN_ORDER``.
    """

    user: Int64
    request_id: Int64
    order_id: Int64
    ts_ms: Int64 = 0
    order_request_id: Int64 = 0


class ReduceOrder(_Command, frozen=True):
    """Lower an open order's total quantity to ``qty`` lots; it keeps its time priority.

    ``qty`` is the order's new TOTAL (what it has filled counts towards it), below the
    total UBSCore last accepted for it. If the engine finds the order has already filled
    ``qty`` or more, the order ends there (``OrderCancelled`` with
    ``AMEND_ALREADY_FILLED``). The order is named as ``CancelOrder`` names it: by
    ``order_id``, or with ``order_id`` 0 by ``order_request_id``, its placing request.
    """

    user: Int64
    request_id: Int64
    order_id: Int64
    qty: Int64
    order_request_id: Int64 = 0
    ts_ms: Int64 = 0


class ReplaceOrder(_Command, frozen=True):
    """Move an open limit order to ``price`` ticks, and to a new total of ``qty`` lots
    unless ``qty`` is 0 (keep the total); it loses its time priority and, if the new price
    crosses, trades first under ``stp``. A post-only order that would cross is refused by
    the engine and stays as it was. A buy that needs more quote locked (a higher price, a
    larger total) locks it when UBSCore accepts. The order is named as in ``ReduceOrder``.
    """

    user: Int64
    request_id: Int64
    order_id: Int64
    price: Int64
    qty: Int64 = 0
    stp: SelfTrade = SelfTrade.CANCEL_TAKER
    order_request_id: Int64 = 0
    ts_ms: Int64 = 0


class ListAsset(_Command, frozen=True):
    """Operator command: make an asset known. Recorded in the log so replay needs
    nothing but the log."""

    request_id: Int64
    asset: Asset
    ts_ms: Int64 = 0


class ListSymbol(_Command, frozen=True):
    """Operator command: open a symbol for trading."""

    request_id: Int64
    symbol: Symbol
    ts_ms: Int64 = 0


Command = Union[Deposit, Withdraw, PlaceOrder, CancelOrder, ListAsset, ListSymbol, ReduceOrder, ReplaceOrder]
COMMAND_TYPES: tuple[type, ...] = (
    Deposit,
    Withdraw,
    PlaceOrder,
    CancelOrder,
    ListAsset,
    ListSymbol,
    ReduceOrder,
    ReplaceOrder,
)
