"""An amended order's lock, the one definition that decide and evolve share.

UBSCore cannot know what the engine fills between accepting an amend and the engine
applying it, and fills in flight happen at the order's old price. So while amends wait,
an order keeps locked enough for the worst of the states it may take: its largest total
quantity (less what the settled trades filled) at its highest price, over the state the
engine last confirmed and every pending amend. Fills preserve the bound (each spends at
most the highest price a lot), so a lock never goes negative whatever the engine filled;
the excess returns when the engine confirms, and an order with no amend pending holds
exactly what its remainder needs at its price.
"""

from __future__ import annotations

from typing import Any

from ledger.protocol.commands import Side
from ledger.protocol.market import Symbol
from ledger.ubscore.state import O_FILLED, O_PENDING, O_PRICE, O_QTY, O_SIDE

_BUY = Side.BUY


def lock_needed(symbol: Symbol, side: int, filled: int, states: tuple[tuple[int, int], ...]) -> int:
    """What an order that has filled ``filled`` lots must hold locked while any of
    ``states`` ((price, total quantity) pairs) may become its state."""
    left = max(qty for _, qty in states) - filled
    if side == _BUY:
        return left * max(price for price, _ in states) * symbol.tick
    return left * symbol.lot


def order_states(order: list[Any], pending: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """The confirmed state of ``order`` followed by ``pending``."""
    return ((order[O_PRICE], order[O_QTY]), *pending)


def order_lock_needed(symbol: Symbol, order: list[Any], pending: tuple[tuple[int, int], ...] | None = None) -> int:
    """``lock_needed`` for ``order`` with ``pending`` as its pending amends (its own if None)."""
    states = order_states(order, order[O_PENDING] if pending is None else pending)
    return lock_needed(symbol, order[O_SIDE], order[O_FILLED], states)


def latest_state(order: list[Any]) -> tuple[int, int]:
    """(price, total quantity) the order will have once every accepted amend applies."""
    pending = order[O_PENDING]
    return pending[-1] if pending else (order[O_PRICE], order[O_QTY])
