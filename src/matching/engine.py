"""The matching engine for one symbol: a deterministic reducer from UBSCore's events
(balance.events) to the symbol's output stream (engine.outputs/<symbol>).

Inputs it acts on: ``SymbolListed`` (its own symbol: lot and tick), ``OrderAccepted``
and ``CancelRequested`` for its symbol. Everything else is ignored, so the engine can read
the whole of balance.events. Every output carries the stream's contiguous ``seq`` and the
``input_seq`` of the event that caused it.

Rules:

* Price-time priority; a trade happens at the resting (maker) order's price.
* GTC rests its remainder; IOC expires it (``IOC_REMAINDER``); a market order expires
  what it could not fill (``NO_LIQUIDITY``, or ``BUDGET_EXHAUSTED`` when a market buy's
  quote budget cannot pay for one more lot at the next price).
* FOK fills entirely at once or not at all: if the book cannot fill it, it expires
  (``FOK_NOT_FILLABLE``) and nothing else happens: no trade, no maker touched.
* POST_ONLY is rejected (``POST_ONLY_WOULD_TAKE``) if it would take, else it rests.
* Self-trade prevention, chosen by the taker: CANCEL_TAKER (default) cancels the taker's
  remainder; CANCEL_MAKER cancels the resting own order and matching goes on;
  CANCEL_BOTH cancels both. For FOK's fill check an own resting order is a barrier under
  CANCEL_TAKER and CANCEL_BOTH (matching would stop there) and absent under CANCEL_MAKER.
* Every accepted order ends with exactly one terminal output: a ``Trade`` whose done flag
  says it filled completely, ``OrderCancelled``, ``OrderExpired`` or ``OrderRejected``.
* An order id seen before (resting, or ended within the last ``FINISHED_IDS_MAX``) is
  rejected (``DUPLICATE_ORDER_ID``), never matched.

``apply(output)`` rebuilds the book from the engine's own outputs: replaying
engine.outputs gives the same state hash as the live engine.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

import msgspec

from ledger.commands import OrderType, SelfTrade, Side, TimeInForce
from ledger.events import BalanceEvent, CancelRequested, OrderAccepted, SymbolListed
from ledger.market import Symbol
from ledger.reasons import Reason
from matching.book import R_ID, R_PRICE, R_REMAINING, R_USER, OrderBook
from matching.events import (
    EngineOutput,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)

# Ended order ids remembered to reject a reused id. Ids are UBSCore-assigned and never
# repeat, so this guards against a faulty upstream; a million ids cost about 100 MiB.
FINISHED_IDS_MAX = 1_000_000

_BUY = Side.BUY
_SELL = Side.SELL
_MARKET = OrderType.MARKET
_IOC = TimeInForce.IOC
_FOK = TimeInForce.FOK
_POST_ONLY = TimeInForce.POST_ONLY
_CANCEL_TAKER = SelfTrade.CANCEL_TAKER
_CANCEL_MAKER = SelfTrade.CANCEL_MAKER

SNAPSHOT_FORMAT = "matching-snapshot"
SNAPSHOT_SCHEMA = 1


class EngineError(Exception):
    """An input the engine cannot have been sent by a correct UBSCore, or a bad snapshot."""


class _Snapshot(msgspec.Struct, frozen=True):
    format: str
    schema: int
    symbol: str
    seq: int
    hash: str
    state: dict[str, Any]


class MatchingEngine:
    """The book and output stream of one symbol.

    >>> from ledger.market import Symbol
    >>> from ledger.events import SymbolListed
    >>> engine = MatchingEngine("BTC-USDT")
    >>> engine.handle(SymbolListed(1, 0, 1, Symbol("BTC-USDT", "BTC", "USDT", 1000, 10)))
    []
    """

    def __init__(self, symbol: str, spec: Symbol | None = None) -> None:
        self.symbol = symbol
        self.spec = spec
        self.book = OrderBook()
        self.seq = 0
        self.last_input_seq = 0
        self.finished: dict[int, None] = {}
        self.finished_order: deque[int] = deque()

    # -- live path ----------------------------------------------------------------------

    def handle(self, event: BalanceEvent) -> list[EngineOutput]:
        """Process one balance event; return (and apply) the outputs it causes."""
        kind = type(event)
        if kind is OrderAccepted:
            if event.symbol != self.symbol:  # type: ignore[union-attr]
                return []
            outputs = self._place(event)  # type: ignore[arg-type]
        elif kind is CancelRequested:
            if event.symbol != self.symbol:  # type: ignore[union-attr]
                return []
            outputs = self._cancel(event)  # type: ignore[arg-type]
        elif isinstance(event, SymbolListed):
            if event.symbol.name == self.symbol:
                self.spec = event.symbol
            return []
        else:
            return []
        self.last_input_seq = event.seq
        return outputs

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _finish(self, order_id: int) -> None:
        if order_id in self.finished:
            return
        self.finished[order_id] = None
        self.finished_order.append(order_id)
        if len(self.finished_order) > FINISHED_IDS_MAX:
            del self.finished[self.finished_order.popleft()]

    def _cancel(self, e: CancelRequested) -> list[EngineOutput]:
        order = self.book.orders.get(e.order_id)
        if order is None or order[R_USER] != e.user:
            return [OrderRejected(self._next(), self.symbol, e.seq, e.order_id, e.user, int(Reason.UNKNOWN_ORDER))]
        self.book.remove(order)
        self._finish(e.order_id)
        return [
            OrderCancelled(
                self._next(), self.symbol, e.seq, e.order_id, e.user, order[R_REMAINING], int(Reason.CANCELLED_BY_USER)
            )
        ]

    def _fok_fillable(self, o: OrderAccepted, taker_side: int) -> bool:
        """Could the book fill all of ``o`` now, under its self-trade rule and budget?"""
        need = o.qty
        budget = o.quote_budget
        market_buy = o.order_type == _MARKET and taker_side == _BUY
        tick = self._tick() if market_buy else 0
        for order in self.book.iter_side(1 - taker_side):
            price = order[R_PRICE]
            if o.order_type != _MARKET and (price > o.price if taker_side == _BUY else price < o.price):
                return False
            if order[R_USER] == o.user:
                if o.stp == _CANCEL_MAKER:
                    continue
                return False
            take = min(need, order[R_REMAINING])
            if market_buy:
                take = min(take, budget // (price * tick))
                if take == 0:
                    return False
                budget -= take * price * tick
            need -= take
            if need == 0:
                return True
        return False

    def _tick(self) -> int:
        if self.spec is None:
            raise EngineError(f"engine {self.symbol}: a market buy arrived before SymbolListed")
        return self.spec.tick

    def _place(self, o: OrderAccepted) -> list[EngineOutput]:
        symbol, book, order_id = self.symbol, self.book, o.order_id
        if order_id in book.orders or order_id in self.finished:
            return [OrderRejected(self._next(), symbol, o.seq, order_id, o.user, int(Reason.DUPLICATE_ORDER_ID))]
        side = o.side
        maker_side = 1 - side
        market = o.order_type == _MARKET
        limit = o.price
        if o.tif == _POST_ONLY:
            best = book.best_price(maker_side)
            if best is not None and (best <= limit if side == _BUY else best >= limit):
                self._finish(order_id)
                return [
                    OrderRejected(self._next(), symbol, o.seq, order_id, o.user, int(Reason.POST_ONLY_WOULD_TAKE))
                ]
        if o.tif == _FOK and not self._fok_fillable(o, side):
            self._finish(order_id)
            return [
                OrderExpired(self._next(), symbol, o.seq, order_id, o.user, o.qty, int(Reason.FOK_NOT_FILLABLE))
            ]
        outputs: list[EngineOutput] = []
        remaining = o.qty
        market_buy = market and side == _BUY
        budget = o.quote_budget
        tick = self._tick() if market_buy else 0
        taker_limit = 0 if market else limit
        levels = book.levels[maker_side]
        prices = book.prices[maker_side]
        ended_by = 0  # the reason a remainder ends without resting, if any
        while remaining and prices:
            price = prices[0] if side == _BUY else prices[-1]
            if not market and (price > limit if side == _BUY else price < limit):
                break
            level = levels[price]
            maker = level[0]
            if maker[R_USER] == o.user:
                stp = o.stp
                if stp != _CANCEL_TAKER:
                    book.remove(maker)
                    self._finish(maker[R_ID])
                    outputs.append(
                        OrderCancelled(self._next(), symbol, o.seq, maker[R_ID], maker[R_USER], maker[R_REMAINING],
                                       int(Reason.SELF_TRADE_PREVENTED))
                    )
                    if stp == _CANCEL_MAKER:
                        continue
                ended_by = Reason.SELF_TRADE_PREVENTED
                break
            fill = remaining if remaining < maker[R_REMAINING] else maker[R_REMAINING]
            if market_buy:
                affordable = budget // (price * tick)
                if affordable < fill:
                    fill = affordable
                if fill == 0:
                    ended_by = Reason.BUDGET_EXHAUSTED
                    break
                budget -= fill * price * tick
            maker[R_REMAINING] -= fill
            remaining -= fill
            maker_done = maker[R_REMAINING] == 0
            if maker_done:
                level.popleft()
                del book.orders[maker[R_ID]]
                if not level:
                    del levels[price]
                    prices.remove(price)
                self._finish(maker[R_ID])
            seq = self._next()
            outputs.append(
                Trade(seq, symbol, o.seq, seq, price, fill, Side(maker_side), maker[R_USER], maker[R_ID], o.user,
                      order_id, taker_limit, maker_done, remaining == 0)
            )
        if remaining == 0:
            self._finish(order_id)
            return outputs
        if ended_by == Reason.SELF_TRADE_PREVENTED:
            self._finish(order_id)
            reason = int(Reason.SELF_TRADE_PREVENTED)
            outputs.append(OrderCancelled(self._next(), symbol, o.seq, order_id, o.user, remaining, reason))
        elif market or o.tif == _IOC or o.tif == _FOK:
            if not ended_by:
                ended_by = Reason.NO_LIQUIDITY if market else Reason.IOC_REMAINDER
            self._finish(order_id)
            outputs.append(OrderExpired(self._next(), symbol, o.seq, order_id, o.user, remaining, int(ended_by)))
        else:
            book.add(order_id, o.user, side, limit, remaining)
            outputs.append(OrderRested(self._next(), symbol, o.seq, order_id, o.user, Side(side), limit, remaining))
        return outputs

    # -- rebuilding from outputs --------------------------------------------------------

    def apply(self, output: EngineOutput) -> None:
        """Rebuild state from one of this engine's own outputs (replay of engine.outputs)."""
        if output.symbol != self.symbol:
            raise EngineError(f"engine {self.symbol}: output for {output.symbol}")
        if output.seq != self.seq + 1:
            raise EngineError(f"engine {self.symbol}: output seq {output.seq} where {self.seq + 1} was expected")
        kind = type(output)
        book = self.book
        if kind is Trade:
            maker = book.orders.get(output.maker_order_id)  # type: ignore[union-attr]
            if maker is None or maker[R_REMAINING] < output.qty:  # type: ignore[union-attr]
                raise EngineError(f"engine {self.symbol} output {output.seq}: trade against no such resting order")
            maker[R_REMAINING] -= output.qty  # type: ignore[union-attr]
            if maker[R_REMAINING] == 0:
                book.remove(maker)
                self._finish(maker[R_ID])
            if output.taker_done:  # type: ignore[union-attr]
                self._finish(output.taker_order_id)  # type: ignore[union-attr]
        elif kind is OrderRested:
            book.add(output.order_id, output.user, output.side, output.price, output.qty_remaining)  # type: ignore[union-attr]
        elif kind is OrderCancelled:
            resting = book.orders.get(output.order_id)  # type: ignore[union-attr]
            if resting is not None:
                book.remove(resting)
            self._finish(output.order_id)  # type: ignore[union-attr]
        elif kind is OrderExpired or kind is OrderRejected:
            if output.reason != Reason.DUPLICATE_ORDER_ID and output.reason != Reason.UNKNOWN_ORDER:  # type: ignore[union-attr]
                self._finish(output.order_id)  # type: ignore[union-attr]
        else:
            raise EngineError(f"engine {self.symbol}: not an engine output: {kind.__name__}")
        self.seq = output.seq
        self.last_input_seq = output.input_seq

    # -- hashing and snapshots ----------------------------------------------------------

    def canonical(self) -> dict[str, Any]:
        """The state as plain ordered data (the input of the hash and of snapshots)."""
        return {
            "symbol": self.symbol,
            "seq": self.seq,
            "last_input_seq": self.last_input_seq,
            "bids": [list(order) for order in self.book.iter_side(_BUY)],
            "asks": [list(order) for order in self.book.iter_side(_SELL)],
            "finished": list(self.finished_order),
        }

    def state_hash(self) -> str:
        """blake2b-256 of the canonical state: equal in any process for equal inputs."""
        return hashlib.blake2b(msgspec.json.encode(self.canonical()), digest_size=32).hexdigest()

    def snapshot(self) -> bytes:
        """A self-verifying snapshot of the book (the symbol definition is not included:
        it comes from balance.events)."""
        body = self.canonical()
        digest = hashlib.blake2b(msgspec.json.encode(body), digest_size=32).hexdigest()
        return msgspec.json.encode(_Snapshot(SNAPSHOT_FORMAT, SNAPSHOT_SCHEMA, self.symbol, self.seq, digest, body))

    @classmethod
    def from_snapshot(cls, data: bytes, spec: Symbol | None = None) -> MatchingEngine:
        """An engine restored from, and verified against, a snapshot."""
        try:
            snap = msgspec.json.decode(data, type=_Snapshot)
        except msgspec.MsgspecError as error:
            raise EngineError(f"not a matching snapshot: {error}") from None
        if snap.format != SNAPSHOT_FORMAT or snap.schema > SNAPSHOT_SCHEMA:
            raise EngineError(f"snapshot format {snap.format!r} schema {snap.schema} not readable here")
        body = snap.state
        engine = cls(snap.symbol, spec)
        engine.seq = body["seq"]
        engine.last_input_seq = body["last_input_seq"]
        for row in (*body["bids"], *body["asks"]):
            engine.book.add(row[R_ID], row[R_USER], row[2], row[R_PRICE], row[R_REMAINING])
        for order_id in body["finished"]:
            engine._finish(order_id)
        if engine.state_hash() != snap.hash:
            raise EngineError(f"snapshot of {snap.symbol} at seq {snap.seq}: state does not match its hash")
        return engine
