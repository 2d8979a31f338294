"""Commands: what clients and operators ask UBSCore to do (the balance.operations log).

A command is a request, not a fact: UBSCore answers every command with exactly one event,
an acceptance or a ``Rejected`` with a reason code. Timestamps travel inside commands so
that no reducer reads a clock. Fields are validated by ``decide``, not on construction,
so a bad command becomes a recorded rejection rather than an exception.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Union

import msgspec

from ledger.protocol.market import Asset, Symbol


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

    user: int
    request_id: int
    asset: str
    amount: int
    ts_ms: int = 0


class Withdraw(_Command, frozen=True):
    """Debit ``amount`` from ``user``'s available balance (never from locked funds)."""

    user: int
    request_id: int
    asset: str
    amount: int
    ts_ms: int = 0


class PlaceOrder(_Command, frozen=True):
    """Place an order of ``qty`` lots. A limit order has ``price`` in ticks; a market buy
    has a ``quote_budget`` in quote minor units, which is what UBSCore locks for it."""

    user: int
    request_id: int
    symbol: str
    side: Side
    qty: int
    price: int = 0
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    quote_budget: int = 0
    stp: SelfTrade = SelfTrade.CANCEL_TAKER
    ts_ms: int = 0


class CancelOrder(_Command, frozen=True):
    """Ask to cancel ``order_id``; funds are released when the engine confirms."""

    user: int
    request_id: int
    order_id: int
    ts_ms: int = 0


class ListAsset(_Command, frozen=True):
    """Operator command: make an asset known. Recorded in the log so replay needs
    nothing but the log."""

    request_id: int
    asset: Asset
    ts_ms: int = 0


class ListSymbol(_Command, frozen=True):
    """Operator command: open a symbol for trading."""

    request_id: int
    symbol: Symbol
    ts_ms: int = 0


Command = Union[Deposit, Withdraw, PlaceOrder, CancelOrder, ListAsset, ListSymbol]
COMMAND_TYPES: tuple[type, ...] = (Deposit, Withdraw, PlaceOrder, CancelOrder, ListAsset, ListSymbol)
