"""One symbol's order book: price levels in sorted containers, FIFO within a level.

Layout (chosen before tuning anything): for each side a dict ``price -> deque of resting
orders`` plus a ``SortedList`` of the prices that have a level, so the best price is the
first or last element and a level is found in O(1). A resting order is a small list
``[order_id, user, side, price, remaining]`` shared by the level and the id index, so a
fill updates it in place.

The book only stores and finds orders; matching rules live in ``matching.engine``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from sortedcontainers import SortedList

from ledger.commands import Side

# Resting order fields, by position.
R_ID, R_USER, R_SIDE, R_PRICE, R_REMAINING = range(5)

Resting = list[Any]


class BookError(Exception):
    """A book invariant does not hold (a programmer error, never bad input)."""


class OrderBook:
    """Resting orders of one symbol, by side, price and time."""

    __slots__ = ("levels", "prices", "orders")

    def __init__(self) -> None:
        # levels[side][price] -> deque of resting orders, oldest first.
        self.levels: tuple[dict[int, deque[Resting]], dict[int, deque[Resting]]] = ({}, {})
        self.prices: tuple[SortedList, SortedList] = (SortedList(), SortedList())
        self.orders: dict[int, Resting] = {}

    def best_price(self, side: int) -> int | None:
        """The best resting price on ``side`` (highest bid, lowest ask), or None."""
        prices = self.prices[side]
        if not prices:
            return None
        return prices[-1] if side == Side.BUY else prices[0]  # type: ignore[no-any-return]

    def best_level(self, side: int) -> deque[Resting] | None:
        """The FIFO queue at the best price on ``side``, or None if the side is empty."""
        price = self.best_price(side)
        return None if price is None else self.levels[side][price]

    def add(self, order_id: int, user: int, side: int, price: int, remaining: int) -> Resting:
        """Rest an order at the back of its price level."""
        if order_id in self.orders:
            raise BookError(f"order {order_id} already rests")
        if remaining <= 0:
            raise BookError(f"order {order_id} would rest with quantity {remaining}")
        order: Resting = [order_id, user, side, price, remaining]
        level = self.levels[side].get(price)
        if level is None:
            level = self.levels[side][price] = deque()
            self.prices[side].add(price)
        level.append(order)
        self.orders[order_id] = order
        return order

    def remove(self, order: Resting) -> None:
        """Take a resting order off the book (filled or cancelled)."""
        side, price = order[R_SIDE], order[R_PRICE]
        level = self.levels[side][price]
        if level[0] is order:
            level.popleft()
        else:
            level.remove(order)
        if not level:
            del self.levels[side][price]
            self.prices[side].remove(price)
        del self.orders[order[R_ID]]

    def reduce(self, order_id: int, remaining: int) -> Resting:
        """Lower an order's remaining quantity in place: it keeps its time priority."""
        order = self.orders[order_id]
        if not 0 < remaining < order[R_REMAINING]:
            raise BookError(f"order {order_id}: reduce to {remaining} is not below {order[R_REMAINING]}")
        order[R_REMAINING] = remaining
        return order

    def reprice(self, order_id: int, price: int) -> Resting:
        """Move an order to a new price: it goes to the back of that level (loses
        priority). The caller must ensure the new price does not cross the book."""
        order = self.orders[order_id]
        self.remove(order)
        return self.add(order_id, order[R_USER], order[R_SIDE], price, order[R_REMAINING])

    def iter_side(self, side: int) -> Iterator[Resting]:
        """Resting orders of ``side`` in matching priority (best price, then oldest)."""
        prices = self.prices[side]
        ordered = reversed(prices) if side == Side.BUY else iter(prices)
        for price in ordered:
            yield from self.levels[side][price]

    def check(self) -> None:
        """Assert every invariant (tests call this after each command)."""
        count = 0
        for side in (Side.BUY, Side.SELL):
            levels, prices = self.levels[side], self.prices[side]
            if sorted(levels) != list(prices):
                raise BookError(f"side {side}: price index and levels disagree")
            for price, level in levels.items():
                if not level:
                    raise BookError(f"side {side}: empty level at {price}")
                for order in level:
                    count += 1
                    if order[R_REMAINING] <= 0 or order[R_PRICE] != price or order[R_SIDE] != side:
                        raise BookError(f"order {order[R_ID]} malformed at level {price}")
                    if self.orders.get(order[R_ID]) is not order:
                        raise BookError(f"order {order[R_ID]} missing from the id index")
        if count != len(self.orders):
            raise BookError("id index holds orders that rest nowhere")
        bid, ask = self.best_price(Side.BUY), self.best_price(Side.SELL)
        if bid is not None and ask is not None and bid >= ask:
            raise BookError(f"book crossed: bid {bid} >= ask {ask}")
