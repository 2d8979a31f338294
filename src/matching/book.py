"""One symbol's order book: price-time priority, trades at the resting (maker) price.

The book is the matching engine's state and its rules. ``place``, ``cancel``,
``amend_qty`` and ``amend_price`` decide and apply in one step and return the output
records (``ledger.protocol.outputs``) they caused, numbered with the stream's ``seq``;
``apply`` rebuilds the same state from those records alone (replay).

Layout (chosen first, for the hot path): per side a dict ``price -> Level`` of resting
orders (oldest first) and a heap of the prices that have a level, best on top; the best
price of each side is cached in ``best`` so the common "does it cross?" test reads one
list slot, and the heap is only touched when a level appears or the best one goes. A
level that goes from below the top (its last order cancelled) leaves its price in the
heap: such stale prices are skipped when they reach the top and dropped when the heap
grows to twice the levels. (Levels come and go about once every three commands; heapq's
push and pop are several times cheaper than a ``SortedList``'s add and remove.) A
resting order is a small mutable ``Resting`` struct shared by its level and the ``orders``
index, so a fill updates it in place. A ``Level`` is a dict ``order_id -> order`` in time
priority (dicts keep insertion order), so a cancel anywhere in the queue is O(1); a deque
needed a linear ``remove``, which with a few hundred orders a level cost more than all the
rest of a cancel.

Rules:

* GTC rests its remainder; IOC expires it (``IOC_REMAINDER``); a market order expires
  what it could not fill (``NO_LIQUIDITY``).
* A market buy is bounded by its quote budget: a lot at price p costs ``p * tick``; it
  takes only whole lots it can pay for, and when the next lot is unaffordable it ends.
  The trade that spends the budget keeps ``taker_done=False`` (the order is not filled)
  and ``OrderExpired(BUDGET_EXHAUSTED)`` follows, so UBSCore releases the unspent budget
  once, on that expiry. The budget is checked before self-trade prevention, so an own
  order the taker could not pay for is left alone.
* FOK fills entirely at once or not at all. Its pre-check walks the book the way matching
  would; an own order in the path is a barrier under CANCEL_TAKER and CANCEL_BOTH (matching
  would stop there) and absent under CANCEL_MAKER (matching would cancel it and go on). An
  unfillable FOK ends with ``OrderExpired(FOK_NOT_FILLABLE)`` and changes nothing else: no
  trade, no maker touched, no own order cancelled.
* POST_ONLY that would take (its price reaches the best opposite price, own orders
  included) ends with ``OrderRejected(POST_ONLY_WOULD_TAKE)``: it never traded, so a
  rejection is the honest outcome; UBSCore unlocks on it like on any terminal output.
* Self-trade prevention is the taker's (``stp``): CANCEL_TAKER cancels the taker's
  remainder, CANCEL_MAKER cancels the resting own order and matching goes on, CANCEL_BOTH
  cancels the own order and then the taker. Both use reason ``SELF_TRADE_PREVENTED``.
* An order id seen before (resting, or ended within the last ``finished_ids_max``) is
  answered ``OrderRejected(DUPLICATE_ORDER_ID)`` and never matched; that answer is not a
  terminal of the original order.
* Every accepted order ends in exactly one terminal output: a ``Trade`` with its done
  flag set, ``OrderCancelled``, ``OrderExpired`` or ``OrderRejected``.
* Amend (book level only; UBSCore has no amend command yet): ``amend_qty`` lowers the
  remaining quantity in place and keeps time priority; ``amend_price`` moves the order to
  a new price, losing priority, and may trade there first as a GTC limit taker under the
  self-trade rule the amend names. Both report the order's new resting state as
  ``OrderRested`` (UBSCore ignores it), which is also how ``apply`` replays them.

Inputs a correct UBSCore cannot send (a cancel by someone who does not own the live
order, a zero quantity, a market order with a price) raise ``BookError`` before anything
changes: they are programmer errors, not rejections.

>>> book = OrderBook("X-Y", tick=10)
>>> book.place(1, 101, 7, Side.SELL, OrderType.LIMIT, TimeInForce.GTC, SelfTrade.CANCEL_TAKER, 5, 100)
[OrderRested(seq=1, symbol='X-Y', input_seq=1, order_id=101, user=7, side=<Side.SELL: 1>, price=100, qty_remaining=5)]
>>> [type(o).__name__ for o in book.place(2, 102, 8, Side.BUY, OrderType.LIMIT, TimeInForce.IOC,
...                                       SelfTrade.CANCEL_TAKER, 7, 101)]
['Trade', 'OrderExpired']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from heapq import heapify, heappop, heappush

import msgspec

from ledger.protocol.commands import OrderType, SelfTrade, Side, TimeInForce
from ledger.protocol.limits import ORDER_PRICE_TICKS_MAX, ORDER_QTY_LOTS_MAX
from ledger.protocol.outputs import (
    AmendRejected,
    BookOpened,
    EngineOutput,
    OrderAmended,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)
from ledger.protocol.reasons import Reason

# Ended order ids remembered so a reused id is rejected, not matched. Ids come from
# UBSCore as (shard << 48) | seq and never repeat, so this window is a second line of
# defence against a faulty upstream, not the primary guarantee. It costs about 70 bytes
# an id (set slot, deque slot, the int) and there is one per symbol: 100,000 ids is
# about 7 MiB a symbol, which still covers the recent past of a busy market.
FINISHED_IDS_MAX = 100_000



class Resting(msgspec.Struct, gc=False):
    """A resting order, shared by its level and the ``orders`` index, so a fill updates it
    in place.

    ``gc=False`` because it holds only ints: with it the order, and the ``orders`` dict
    that holds only such orders, are invisible to the cyclic garbage collector, which
    otherwise traverses every resting order on each full collection (with a million
    resting orders a full collection took about 170 ms with a list per order, 47 ms
    with this). It can take no part in a reference cycle, which is what makes that safe.
    """

    order_id: int
    user: int
    side: Side
    price: int
    remaining: int


# ``best`` holds these when a side is empty. They lie outside every valid price, so a
# comparison against them never crosses and the hot path needs no None test.
BID_NONE = 0
ASK_NONE = ORDER_PRICE_TICKS_MAX + 1

# The extreme limit a market order walks the book with.
_MARKET_BUY_LIMIT = ORDER_PRICE_TICKS_MAX
_MARKET_SELL_LIMIT = 1

_SIDES = (Side.BUY, Side.SELL)
_BUY = Side.BUY
_SELL = Side.SELL
_LIMIT = OrderType.LIMIT
_MARKET = OrderType.MARKET
_GTC = TimeInForce.GTC
_IOC = TimeInForce.IOC
_FOK = TimeInForce.FOK
_POST_ONLY = TimeInForce.POST_ONLY
_CANCEL_TAKER = SelfTrade.CANCEL_TAKER
_CANCEL_MAKER = SelfTrade.CANCEL_MAKER
_CANCEL_BOTH = SelfTrade.CANCEL_BOTH
_TIFS = frozenset(TimeInForce)
_STPS = frozenset(SelfTrade)

_DUPLICATE = int(Reason.DUPLICATE_ORDER_ID)
_UNKNOWN = int(Reason.UNKNOWN_ORDER)
_STP = int(Reason.SELF_TRADE_PREVENTED)
_BUDGET = int(Reason.BUDGET_EXHAUSTED)
_NO_LIQUIDITY = int(Reason.NO_LIQUIDITY)
_IOC_REMAINDER = int(Reason.IOC_REMAINDER)
_FOK_NOT_FILLABLE = int(Reason.FOK_NOT_FILLABLE)
_POST_ONLY_WOULD_TAKE = int(Reason.POST_ONLY_WOULD_TAKE)
_CANCELLED_BY_USER = int(Reason.CANCELLED_BY_USER)
_AMEND_ALREADY_FILLED = int(Reason.AMEND_ALREADY_FILLED)

# Rejections that answer a request without ending any order.
_NOT_TERMINAL = (_DUPLICATE, _UNKNOWN)


class Level(dict[int, Resting]):
    """The resting orders at one price: ``order_id -> order``, oldest first (a dict keeps
    insertion order, and deleting any key is O(1)). Iterating it yields the orders, not
    the ids, as the deque it replaced did; the hot paths call ``values()`` directly."""

    __slots__ = ()

    def __iter__(self) -> Iterator[Resting]:  # type: ignore[override]
        return iter(self.values())


class BookError(Exception):
    """An input a correct UBSCore cannot send, or a broken book invariant: a programmer
    error, never a rejection. Raised before the book changes."""


class OrderBook:
    """Resting orders of one symbol and the output stream they produce.

    ``symbol`` names the stream in every output; ``tick`` (quote minor units per lot per
    price step) is needed only to bound market buys by their budget, so a book used for
    limit orders alone may leave it None until the symbol's definition is known.
    """

    __slots__ = ("symbol", "tick", "seq", "levels", "heaps", "best", "orders", "finished", "finished_order",
                 "finished_ids_max")

    def __init__(self, symbol: str = "", tick: int | None = None, finished_ids_max: int = FINISHED_IDS_MAX) -> None:
        if finished_ids_max < 1:
            raise ValueError(f"finished_ids_max {finished_ids_max} must be at least 1")
        self.symbol = symbol
        self.tick = tick
        # The last output seq of the stream (0 before the first output).
        self.seq = 0
        # levels[side][price] -> resting orders at that price, oldest first.
        self.levels: tuple[dict[int, Level], dict[int, Level]] = ({}, {})
        # heaps[side]: a heap of the prices with a level on that side, keyed so the best is
        # on top (bids negated). The top always has a level; others may be stale.
        self.heaps: tuple[list[int], list[int]] = ([], [])
        # best[side]: the best price of that side, BID_NONE / ASK_NONE when empty.
        self.best: list[int] = [BID_NONE, ASK_NONE]
        self.orders: dict[int, Resting] = {}
        # Ended ids: the set answers "seen?", the deque remembers the order to forget in.
        self.finished: set[int] = set()
        self.finished_order: deque[int] = deque()
        self.finished_ids_max = finished_ids_max

    # -- reads ------------------------------------------------------------------------

    def best_price(self, side: int) -> int | None:
        """The best resting price on ``side`` (highest bid, lowest ask), or None."""
        price = self.best[side]
        return None if price in (BID_NONE, ASK_NONE) else price

    def best_level(self, side: int) -> Level | None:
        """The FIFO queue at the best price on ``side``, or None if the side is empty."""
        price = self.best_price(side)
        return None if price is None else self.levels[side][price]

    @property
    def prices(self) -> tuple[list[int], list[int]]:
        """The prices that have a level, ascending, per side (computed on each read)."""
        return sorted(self.levels[0]), sorted(self.levels[1])

    def iter_side(self, side: int) -> Iterator[Resting]:
        """Resting orders of ``side`` in matching priority (best price, then oldest)."""
        levels = self.levels[side]
        for price in sorted(levels, reverse=side == _BUY):
            yield from levels[price].values()

    def _prices_from_best(self, side: int) -> Iterator[int]:
        """The prices of ``side``'s levels, best first, read from the heap without
        changing it: the heap's entries in order come from a second heap of positions
        (children enter as their parent leaves), so each price read costs O(log n)."""
        heap = self.heaps[side]
        levels = self.levels[side]
        sign = -1 if side == _BUY else 1
        size = len(heap)
        frontier = [(heap[0], 0)] if heap else []
        last = None
        while frontier:
            key, index = heappop(frontier)
            for child in (2 * index + 1, 2 * index + 2):
                if child < size:
                    heappush(frontier, (heap[child], child))
            # A price may be in the heap twice (its level went and came back) or stale.
            if key != last:
                last = key
                if sign * key in levels:
                    yield sign * key

    def is_known(self, order_id: int) -> bool:
        """Whether ``order_id`` rests or ended within the remembered window."""
        return order_id in self.orders or order_id in self.finished

    # -- state primitives (no outputs, no matching; replay and tests use them) --------

    def add(self, order_id: int, user: int, side: int, price: int, remaining: int) -> Resting:
        """Rest an order at the back of its price level. The caller ensures it does not
        cross the book."""
        if order_id in self.orders:
            raise BookError(f"order {order_id} already rests")
        if remaining <= 0 or price <= 0 or price >= ASK_NONE:
            raise BookError(f"order {order_id} would rest with quantity {remaining} at price {price}")
        side = _SIDES[side]
        order = Resting(order_id, user, side, price, remaining)
        level = self.levels[side].get(price)
        if level is None:
            levels = self.levels[side]
            level = levels[price] = Level()
            heap = self.heaps[side]
            if side == _BUY:
                heappush(heap, -price)
                if price > self.best[0]:
                    self.best[0] = price
            else:
                heappush(heap, price)
                if price < self.best[1]:
                    self.best[1] = price
            if len(heap) > 2 * len(levels) + 64:
                # Mostly stale prices: rebuild from the levels (amortised O(1) a level).
                heap[:] = [-p for p in levels] if side == _BUY else list(levels)
                heapify(heap)
        level[order_id] = order
        self.orders[order_id] = order
        return order

    def remove(self, order: Resting) -> None:
        """Take a resting order off the book (it stays unfinished: see ``finish``)."""
        side, price = order.side, order.price
        level = self.levels[side][price]
        del level[order.order_id]
        if not level:
            self._drop_level(side, price)
        del self.orders[order.order_id]

    def reduce(self, order_id: int, remaining: int) -> Resting:
        """Lower an order's remaining quantity in place: it keeps its time priority."""
        order = self.orders.get(order_id)
        if order is None:
            raise BookError(f"order {order_id} does not rest")
        if not 0 < remaining < order.remaining:
            raise BookError(f"order {order_id}: reduce to {remaining} is not in 1..{order.remaining - 1}")
        order.remaining = remaining
        return order

    def reprice(self, order_id: int, price: int) -> Resting:
        """Move an order to the back of the level at ``price`` (it loses priority). The
        caller ensures the new price does not cross the book."""
        order = self.orders.get(order_id)
        if order is None:
            raise BookError(f"order {order_id} does not rest")
        self.remove(order)
        return self.add(order_id, order.user, order.side, price, order.remaining)

    def finish(self, order_id: int) -> None:
        """Remember that ``order_id`` ended, forgetting the oldest id beyond the window."""
        self.finished.add(order_id)
        self.finished_order.append(order_id)
        if len(self.finished_order) > self.finished_ids_max:
            self.finished.discard(self.finished_order.popleft())

    def _drop_level(self, side: int, price: int) -> None:
        levels = self.levels[side]
        del levels[price]
        if price != self.best[side]:
            return  # its price stays in the heap, stale, until it reaches the top
        # The top is this price (once or more): pop it and whatever stale prices follow.
        heap = self.heaps[side]
        if side == _BUY:
            while heap and -heap[0] not in levels:
                heappop(heap)
            self.best[0] = -heap[0] if heap else BID_NONE
        else:
            while heap and heap[0] not in levels:
                heappop(heap)
            self.best[1] = heap[0] if heap else ASK_NONE

    # -- commands (decide + apply, returning outputs) ---------------------------------

    def place(
        self,
        input_seq: int,
        order_id: int,
        user: int,
        side: int,
        order_type: int,
        tif: int,
        stp: int,
        qty: int,
        price: int,
        quote_budget: int = 0,
    ) -> list[EngineOutput]:
        """Match a new order and rest, expire, cancel or reject what is left of it.

        ``price`` is in ticks (0 for a market order); ``quote_budget`` bounds a market
        buy. Returns its outputs: trades and self-trade cancels in matching order, then
        the order's own end state unless a trade already ended it.
        """
        if order_id in self.orders or order_id in self.finished:
            self.seq += 1
            return [OrderRejected(self.seq, self.symbol, input_seq, order_id, user, _DUPLICATE)]
        if type(qty) is not int or qty <= 0:
            raise BookError(f"order {order_id}: quantity {qty!r} is not a positive int")
        market = order_type == _MARKET
        buying = side == _BUY
        if not buying and side != _SELL:
            raise BookError(f"order {order_id}: unknown side {side!r}")
        if market:
            if price != 0 or (tif != _IOC and tif != _FOK):
                raise BookError(f"order {order_id}: a market order needs price 0 and IOC or FOK")
            if buying:
                if quote_budget <= 0 or self.tick is None:
                    raise BookError(f"order {order_id}: a market buy needs a budget and the symbol's tick")
                limit = _MARKET_BUY_LIMIT
            else:
                limit = _MARKET_SELL_LIMIT
        else:
            if order_type != _LIMIT or not 0 < price <= ORDER_PRICE_TICKS_MAX or tif not in _TIFS:
                raise BookError(f"order {order_id}: {order_type!r} {tif!r} at {price!r} is not a valid limit order")
            limit = price
        if (quote_budget and not (market and buying)) or stp not in _STPS:
            raise BookError(f"order {order_id}: budget {quote_budget!r} or self-trade rule {stp!r} not allowed")
        best = self.best[1] if buying else self.best[0]
        if (best > limit) if buying else (best < limit):
            if market or (tif != _GTC and tif != _POST_ONLY):
                return self._end_untouched(input_seq, order_id, user, side, tif, market, qty, price)
            rested = self.add(order_id, user, side, price, qty)
            seq = self.seq = self.seq + 1
            return [OrderRested(seq, self.symbol, input_seq, order_id, user, rested.side, price, qty)]
        if tif == _POST_ONLY:
            self.finish(order_id)
            self.seq += 1
            return [OrderRejected(self.seq, self.symbol, input_seq, order_id, user, _POST_ONLY_WOULD_TAKE)]
        budget = quote_budget if market and buying else -1
        if tif == _FOK and not self._fillable(user, side, stp, qty, limit, budget):
            self.finish(order_id)
            self.seq += 1
            return [OrderExpired(self.seq, self.symbol, input_seq, order_id, user, qty, _FOK_NOT_FILLABLE)]
        outputs: list[EngineOutput] = []
        remaining, stopped = self._take(input_seq, order_id, user, side, stp, qty, limit, price, budget, outputs)
        if remaining:
            self._end_remainder(input_seq, order_id, user, side, tif, market, remaining, price, stopped, outputs)
        else:
            self.finish(order_id)
        return outputs

    def cancel(self, input_seq: int, order_id: int, user: int) -> list[EngineOutput]:
        """Cancel a resting order (``CANCELLED_BY_USER``). An order that no longer rests
        (filled or ended: the cancel lost a race) is answered ``UNKNOWN_ORDER``."""
        order = self.orders.get(order_id)
        if order is None:
            self.seq += 1
            return [OrderRejected(self.seq, self.symbol, input_seq, order_id, user, _UNKNOWN)]
        if order.user != user:
            raise BookError(f"cancel of order {order_id} by user {user}, but user {order.user} owns it")
        self.remove(order)
        self.finish(order_id)
        seq = self.seq = self.seq + 1
        return [OrderCancelled(seq, self.symbol, input_seq, order_id, user, order.remaining, _CANCELLED_BY_USER)]

    def amend_qty(self, input_seq: int, order_id: int, user: int, qty_remaining: int) -> list[EngineOutput]:
        """Lower a resting order's remaining quantity; it keeps its place in the queue.

        Answered ``OrderRested`` with the new quantity, or ``UNKNOWN_ORDER`` if the order
        no longer rests. A quantity not below the current one raises ``BookError`` (an
        amend command must be validated before it gets here; to remove an order, cancel).
        """
        order = self.orders.get(order_id)
        if order is None:
            self.seq += 1
            return [OrderRejected(self.seq, self.symbol, input_seq, order_id, user, _UNKNOWN)]
        if order.user != user:
            raise BookError(f"amend of order {order_id} by user {user}, but user {order.user} owns it")
        self.reduce(order_id, qty_remaining)
        self.seq += 1
        return [OrderRested(self.seq, self.symbol, input_seq, order_id, user, order.side, order.price,
                            qty_remaining)]

    def amend_price(
        self, input_seq: int, order_id: int, user: int, price: int, stp: int = _CANCEL_TAKER
    ) -> list[EngineOutput]:
        """Move a resting order to ``price``: it loses its time priority and, if the new
        price crosses, first trades as a GTC limit taker under ``stp``.

        Outputs: trades and self-trade cancels, then ``OrderRested`` at the new price for
        a remainder (or ``OrderCancelled`` if self-trade prevention ended it); nothing
        more if a trade filled it. ``UNKNOWN_ORDER`` if the order no longer rests.
        """
        order = self.orders.get(order_id)
        if order is None:
            self.seq += 1
            return [OrderRejected(self.seq, self.symbol, input_seq, order_id, user, _UNKNOWN)]
        if order.user != user:
            raise BookError(f"amend of order {order_id} by user {user}, but user {order.user} owns it")
        if not 0 < price <= ORDER_PRICE_TICKS_MAX:
            raise BookError(f"amend of order {order_id}: price {price!r} is not a valid limit")
        if stp not in _STPS:
            raise BookError(f"amend of order {order_id}: unknown self-trade rule {stp!r}")
        side = order.side
        # Off the book first, so the order cannot meet itself while it takes.
        self.remove(order)
        outputs: list[EngineOutput] = []
        remaining, stopped = self._take(
            input_seq, order_id, user, side, stp, order.remaining, price, price, -1, outputs
        )
        if remaining:
            self._end_remainder(input_seq, order_id, user, side, _GTC, False, remaining, price, stopped, outputs)
        else:
            self.finish(order_id)
        return outputs

    def amend(
        self,
        input_seq: int,
        order_id: int,
        user: int,
        keep_priority: bool,
        price: int,
        qty: int,
        qty_before: int,
        stp: int = _CANCEL_TAKER,
        post_only: bool = False,
    ) -> list[EngineOutput]:
        """UBSCore's amend (``AmendRequested``): make the order's total ``qty`` lots,
        ``qty_before`` being its total as UBSCore last accepted it, so what the order has
        filled counts towards the new total whatever filled since.

        A reduce (``keep_priority``) lowers what rests in place and keeps its priority; a
        replace moves the order to ``price`` with its new remainder, losing priority, and
        if that crosses trades first as a GTC limit taker under ``stp``. The first output
        is ``OrderAmended`` (the new state), then a replace's trades and end as in
        ``place``. If the order has filled ``qty`` or more it ends, ``OrderCancelled``
        with ``AMEND_ALREADY_FILLED``, and nothing trades. ``AmendRejected`` changes
        nothing: ``UNKNOWN_ORDER`` if the order no longer rests, ``POST_ONLY_WOULD_TAKE``
        if a ``post_only`` replace would cross.
        """
        order = self.orders.get(order_id)
        if order is None:
            self.seq += 1
            return [AmendRejected(self.seq, self.symbol, input_seq, order_id, user, _UNKNOWN)]
        if order.user != user:
            raise BookError(f"amend of order {order_id} by user {user}, but user {order.user} owns it")
        if not 0 < qty <= ORDER_QTY_LOTS_MAX or not order.remaining <= qty_before <= ORDER_QTY_LOTS_MAX:
            raise BookError(f"amend of order {order_id}: total {qty_before} -> {qty!r} with {order.remaining} resting")
        remaining = order.remaining - (qty_before - qty)
        if remaining <= 0:
            self.remove(order)
            self.finish(order_id)
            self.seq += 1
            return [OrderCancelled(self.seq, self.symbol, input_seq, order_id, user, order.remaining,
                                   _AMEND_ALREADY_FILLED)]
        side = order.side
        if keep_priority:
            if price != order.price or qty >= qty_before:
                raise BookError(f"reduce of order {order_id} to {qty} at {price}: it has {qty_before} at {order.price}")
            self.reduce(order_id, remaining)
            self.seq += 1
            return [OrderAmended(self.seq, self.symbol, input_seq, order_id, user, side, price, qty, remaining, True)]
        if not 0 < price <= ORDER_PRICE_TICKS_MAX or stp not in _STPS:
            raise BookError(f"replace of order {order_id}: price {price!r} or self-trade rule {stp!r} not valid")
        buying = side == _BUY
        best = self.best[1] if buying else self.best[0]
        if post_only and ((best <= price) if buying else (best >= price)):
            self.seq += 1
            return [AmendRejected(self.seq, self.symbol, input_seq, order_id, user, _POST_ONLY_WOULD_TAKE)]
        # Off the book first, so the order cannot meet itself while it takes.
        self.remove(order)
        self.seq += 1
        outputs: list[EngineOutput] = [
            OrderAmended(self.seq, self.symbol, input_seq, order_id, user, side, price, qty, remaining, False)
        ]
        remaining, stopped = self._take(input_seq, order_id, user, side, stp, remaining, price, price, -1, outputs)
        if remaining:
            self._end_remainder(input_seq, order_id, user, side, _GTC, False, remaining, price, stopped, outputs)
        else:
            self.finish(order_id)
        return outputs

    # -- matching ---------------------------------------------------------------------

    def _end_untouched(
        self, input_seq: int, order_id: int, user: int, side: int, tif: int, market: bool, qty: int, price: int
    ) -> list[EngineOutput]:
        """The end of an order whose limit does not reach the other side."""
        if not market and tif in (_GTC, _POST_ONLY):
            self.add(order_id, user, side, price, qty)
            self.seq += 1
            return [OrderRested(self.seq, self.symbol, input_seq, order_id, user, _SIDES[side], price, qty)]
        if tif == _FOK:
            reason = _FOK_NOT_FILLABLE
        elif market:
            reason = _NO_LIQUIDITY
        else:
            reason = _IOC_REMAINDER
        self.finish(order_id)
        self.seq += 1
        return [OrderExpired(self.seq, self.symbol, input_seq, order_id, user, qty, reason)]

    def _end_remainder(
        self,
        input_seq: int,
        order_id: int,
        user: int,
        side: int,
        tif: int,
        market: bool,
        remaining: int,
        price: int,
        stopped: int,
        outputs: list[EngineOutput],
    ) -> None:
        """Rest, cancel or expire what is left of a taker after matching."""
        if stopped == _STP:
            self.finish(order_id)
            self.seq += 1
            outputs.append(OrderCancelled(self.seq, self.symbol, input_seq, order_id, user, remaining, _STP))
            return
        if tif in (_FOK, _POST_ONLY):
            # POST_ONLY never takes and FOK was checked fillable: matching must have
            # filled it, so a remainder here means the two walks disagree.
            raise BookError(f"order {order_id}: tif {tif!r} left {remaining} unfilled after matching")
        if market:
            reason = stopped or _NO_LIQUIDITY
        elif tif == _GTC:
            self.add(order_id, user, side, price, remaining)
            self.seq += 1
            outputs.append(OrderRested(self.seq, self.symbol, input_seq, order_id, user, _SIDES[side], price,
                                       remaining))
            return
        else:
            reason = _IOC_REMAINDER
        self.finish(order_id)
        self.seq += 1
        outputs.append(OrderExpired(self.seq, self.symbol, input_seq, order_id, user, remaining, reason))

    def _take(
        self,
        input_seq: int,
        order_id: int,
        user: int,
        side: int,
        stp: int,
        remaining: int,
        limit: int,
        taker_limit_price: int,
        budget: int,
        outputs: list[EngineOutput],
    ) -> tuple[int, int]:
        """Match a taker against the other side while it crosses ``limit``.

        ``budget`` is the quote a market buy may still spend, -1 when unbounded. Appends
        trades and self-trade cancels to ``outputs``; returns (quantity left, the reason
        matching stopped early: ``_STP``, ``_BUDGET`` or 0).
        """
        # This is the hot loop: everything it touches is a local, the book's bookkeeping
        # (finish, level removal) is written out rather than called.
        maker_side = 1 - side
        maker_side_enum = _SIDES[maker_side]
        levels = self.levels[maker_side]
        heap = self.heaps[maker_side]
        best = self.best
        orders = self.orders
        finished = self.finished
        finished_order = self.finished_order
        finished_max = self.finished_ids_max
        symbol = self.symbol
        append = outputs.append
        buying = side == _BUY
        budgeted = budget >= 0
        tick = self.tick or 0
        lot_cost = 0
        seq = self.seq
        stopped = 0
        # Ids of the makers this level loses. Every maker the inner loop passes is taken
        # off the book (filled, or cancelled by self-trade prevention) and it stops at the
        # first maker that stays, so they are a prefix of the level; they are deleted after
        # the loop because a dict must not change size while it is iterated.
        gone: list[int] = []
        price = best[maker_side]
        while (price <= limit) if buying else (price >= limit):
            level = levels[price]
            if budgeted:
                lot_cost = price * tick
            for maker in level.values():
                if budgeted and budget < lot_cost:
                    stopped = _BUDGET
                    break
                maker_id = maker.order_id
                if maker.user == user:
                    if stp == _CANCEL_TAKER:
                        stopped = _STP
                        break
                    gone.append(maker_id)
                    del orders[maker_id]
                    seq += 1
                    append(OrderCancelled(seq, symbol, input_seq, maker_id, user, maker.remaining, _STP))
                    if stp == _CANCEL_BOTH:
                        stopped = _STP
                        break
                    continue
                available = maker.remaining
                fill = remaining if remaining < available else available
                if budgeted:
                    affordable = budget // lot_cost
                    if affordable < fill:
                        fill = affordable
                    budget -= fill * lot_cost
                remaining -= fill
                seq += 1
                if fill == available:
                    gone.append(maker_id)
                    del orders[maker_id]
                    append(Trade(seq, symbol, input_seq, seq, price, fill, maker_side_enum, maker.user, maker_id, user,
                                 order_id, taker_limit_price, True, not remaining))
                    if remaining == 0:
                        break
                else:
                    maker.remaining = available - fill
                    append(Trade(seq, symbol, input_seq, seq, price, fill, maker_side_enum, maker.user, maker_id, user,
                                 order_id, taker_limit_price, False, not remaining))
                    if remaining:
                        # Only the budget leaves both taker and maker open, and what it
                        # has left is less than a lot here.
                        stopped = _BUDGET
                    break
            if gone:
                # finish(), for each maker in turn.
                finished.update(gone)
                finished_order.extend(gone)
                while len(finished_order) > finished_max:
                    finished.discard(finished_order.popleft())
                if len(gone) == len(level):
                    # _drop_level(maker_side, price), written out: this is the best level,
                    # so the heap's top is its price (once or more), then perhaps stale ones.
                    del levels[price]
                    if buying:
                        while heap and heap[0] not in levels:
                            heappop(heap)
                        price = heap[0] if heap else ASK_NONE
                    else:
                        while heap and -heap[0] not in levels:
                            heappop(heap)
                        price = -heap[0] if heap else BID_NONE
                    best[maker_side] = price
                else:
                    for maker_id in gone:
                        del level[maker_id]
                gone.clear()
            if remaining == 0 or stopped:
                break
        self.seq = seq
        return remaining, stopped

    def _fillable(self, user: int, side: int, stp: int, qty: int, limit: int, budget: int) -> bool:
        """Would matching fill all of ``qty`` now? Walks the book exactly as ``_take``
        would (same order, same budget and self-trade stops) without changing it."""
        maker_side = 1 - side
        levels = self.levels[maker_side]
        buying = side == _BUY
        budgeted = budget >= 0
        tick = self.tick or 0
        need = qty
        for price in self._prices_from_best(maker_side):
            if (price > limit) if buying else (price < limit):
                break
            lot_cost = price * tick
            for maker in levels[price].values():
                if budgeted and budget < lot_cost:
                    return False
                if maker.user == user:
                    if stp == _CANCEL_MAKER:
                        continue
                    return False
                take = min(need, maker.remaining)
                if budgeted:
                    take = min(take, budget // lot_cost)
                    budget -= take * lot_cost
                need -= take
                if need == 0:
                    return True
        return False

    # -- replay -----------------------------------------------------------------------

    def apply(self, output: EngineOutput) -> None:
        """Rebuild state from one of this stream's own outputs (replay).

        Checks each output against the book (the maker exists and holds the quantity, a
        done flag agrees with what is left, seq is contiguous) and raises ``BookError``
        without applying anything if it does not fit.
        """
        if output.seq != self.seq + 1:
            raise BookError(f"{self.symbol} output seq {output.seq} where {self.seq + 1} was expected")
        if output.symbol != self.symbol:
            raise BookError(f"{self.symbol} output {output.seq} belongs to {output.symbol}")
        where = f"{self.symbol} output {output.seq}"
        if isinstance(output, Trade):
            self._apply_trade(output, where)
        elif isinstance(output, OrderRested):
            self._apply_rested(output, where)
        elif isinstance(output, OrderCancelled):
            order = self.orders.get(output.order_id)
            if order is not None:
                if order.remaining != output.qty_remaining:
                    raise BookError(f"{where}: cancel of {output.qty_remaining} but {order.remaining} rest")
                self.remove(order)
            self.finish(output.order_id)
        elif isinstance(output, OrderExpired):
            if output.order_id in self.orders:
                raise BookError(f"{where}: resting order {output.order_id} cannot expire")
            self.finish(output.order_id)
        elif isinstance(output, OrderRejected):
            if output.reason not in _NOT_TERMINAL:
                # The only rejection that ends an order is post-only's, of a new order.
                if output.reason != _POST_ONLY_WOULD_TAKE or self.is_known(output.order_id):
                    raise BookError(f"{where}: rejection {output.reason} of order {output.order_id} does not fit")
                self.finish(output.order_id)
        elif isinstance(output, OrderAmended):
            self._apply_amended(output, where)
        elif isinstance(output, AmendRejected):
            resting = output.order_id in self.orders
            if output.reason != (_POST_ONLY_WOULD_TAKE if resting else _UNKNOWN):
                raise BookError(f"{where}: amend refusal {output.reason} of order {output.order_id} does not fit")
        elif isinstance(output, BookOpened):
            if self.seq != 0:
                raise BookError(f"{where}: a book opens once, at the start of its stream")
            self.tick = output.definition.tick
        else:
            raise BookError(f"{where}: not an engine output: {type(output).__name__}")
        self.seq = output.seq

    def _apply_trade(self, t: Trade, where: str) -> None:
        maker = self.orders.get(t.maker_order_id)
        if maker is None or maker.side != t.maker_side or maker.price != t.price:
            raise BookError(f"{where}: trade against no resting order {t.maker_order_id} at {t.price}")
        if not 0 < t.qty <= maker.remaining or t.maker_done != (t.qty == maker.remaining):
            raise BookError(f"{where}: trade of {t.qty} against {maker.remaining} resting (done {t.maker_done})")
        # A taker rests only while it is being repriced (amend_price): then it gives up
        # quantity here and its new state follows in OrderRested or OrderCancelled.
        taker = self.orders.get(t.taker_order_id)
        if taker is not None and (
            taker.side == t.maker_side
            or t.qty > taker.remaining
            or t.taker_done != (t.qty == taker.remaining)
        ):
            raise BookError(f"{where}: repriced taker {t.taker_order_id} cannot give {t.qty}")
        if t.qty == maker.remaining:
            self.remove(maker)
            self.finish(t.maker_order_id)
        else:
            maker.remaining -= t.qty
        if taker is not None:
            if t.taker_done:
                self.remove(taker)
            else:
                taker.remaining -= t.qty
        if t.taker_done:
            self.finish(t.taker_order_id)

    def _apply_rested(self, r: OrderRested, where: str) -> None:
        order = self.orders.get(r.order_id)
        if order is None:
            if r.order_id in self.finished:
                raise BookError(f"{where}: order {r.order_id} rests after it ended")
            self.add(r.order_id, r.user, r.side, r.price, r.qty_remaining)
            return
        # An existing order rests again only by amend: a lower quantity at its own price
        # keeps its place (amend_qty); the same quantity goes to the back at ``price``
        # (amend_price, after any trades it made as a taker).
        if order.user != r.user or order.side != r.side:
            raise BookError(f"{where}: order {r.order_id} changes owner or side")
        if r.price == order.price and 0 < r.qty_remaining < order.remaining:
            self.reduce(r.order_id, r.qty_remaining)
        elif r.qty_remaining == order.remaining:
            self.reprice(r.order_id, r.price)
        else:
            raise BookError(f"{where}: order {r.order_id} rests with {r.qty_remaining}, had {order.remaining}")

    def _apply_amended(self, a: OrderAmended, where: str) -> None:
        order = self.orders.get(a.order_id)
        if order is None or order.user != a.user or order.side != a.side or not 0 < a.qty_remaining <= a.qty:
            raise BookError(f"{where}: amend of order {a.order_id} to {a.qty_remaining} does not fit the book")
        if a.priority_kept:
            if a.price != order.price:
                raise BookError(f"{where}: a reduce moves order {a.order_id} from {order.price} to {a.price}")
            self.reduce(a.order_id, a.qty_remaining)
        else:
            # A replace takes the order off the book: its trades as a taker and its end
            # (OrderRested, OrderCancelled, or a trade that fills it) follow, as for a new one.
            self.remove(order)

    # -- invariants -------------------------------------------------------------------

    def check(self) -> None:
        """Raise ``BookError`` unless every invariant holds (tests call this after each
        command): price heaps consistent, levels never empty, quantities positive, index
        and levels agree, cached best prices right, not crossed, finished window consistent."""
        count = 0
        for side in (Side.BUY, Side.SELL):
            levels, heap = self.levels[side], self.heaps[side]
            keys = set(heap)
            if any((-price if side == _BUY else price) not in keys for price in levels):
                raise BookError(f"side {side.name}: a level's price is missing from the heap")
            if any(heap[(i - 1) // 2] > heap[i] for i in range(1, len(heap))):
                raise BookError(f"side {side.name}: the price heap is not a heap")
            if heap and (-heap[0] if side == _BUY else heap[0]) not in levels:
                raise BookError(f"side {side.name}: the top of the price heap has no level")
            for price, level in levels.items():
                if not level:
                    raise BookError(f"side {side.name}: empty level at {price}")
                for order in level:
                    count += 1
                    if type(order.remaining) is not int or order.remaining <= 0:
                        raise BookError(f"order {order.order_id}: remaining {order.remaining!r} not positive")
                    if order.price != price or order.side != side:
                        raise BookError(f"order {order.order_id} is filed under the wrong side or price")
                    if self.orders.get(order.order_id) is not order:
                        raise BookError(f"order {order.order_id} missing from the id index")
                    if order.order_id in self.finished:
                        raise BookError(f"order {order.order_id} rests but is remembered as ended")
            expected = (max(levels) if side == _BUY else min(levels)) if levels else (BID_NONE, ASK_NONE)[side]
            if self.best[side] != expected:
                raise BookError(f"side {side.name}: cached best {self.best[side]}, actual {expected}")
        if count != len(self.orders):
            raise BookError("the id index holds orders that rest nowhere")
        if self.best[0] >= self.best[1]:
            raise BookError(f"book crossed: bid {self.best[0]} >= ask {self.best[1]}")
        if len(self.finished_order) != len(self.finished) or len(self.finished) > self.finished_ids_max:
            raise BookError("the finished-id window and its index disagree or overflow")
