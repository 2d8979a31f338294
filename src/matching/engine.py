"""The matching engine for one symbol: a deterministic reducer from UBSCore's events
(balance.events) to the symbol's output stream (engine.outputs/<symbol>).

Inputs it acts on: ``SymbolListed`` of its own symbol (lot and tick), answered with the
stream's first output, ``BookOpened``, which carries the definition; and
``OrderAccepted``, ``CancelRequested`` and ``AmendRequested`` of its own symbol. Every other event, and these
events for other symbols, is ignored, so an engine can read the whole of balance.events.
Every output carries the stream's contiguous ``seq`` and the ``input_seq`` of the event
that caused it. The matching rules are in ``matching.book``.

Contract with UBSCore: a ``Trade`` with ``maker_done`` or ``taker_done`` set is that
order's terminal output and nothing else about the order follows; an order that ends any
other way gets exactly one ``OrderCancelled``, ``OrderExpired`` or ``OrderRejected``, on
which UBSCore releases what the order still has locked. An ``OrderRejected`` with reason
``UNKNOWN_ORDER`` answers a cancel that lost the race with the order's end; UBSCore
ignores it. An amend is answered ``OrderAmended`` (its first output), ``AmendRejected``
(nothing changed) or, if the order had already filled its new total,
``OrderCancelled(AMEND_ALREADY_FILLED)``.

Replay: ``apply(output)`` rebuilds the book from the engine's own outputs, so replaying
engine.outputs gives the same ``state_hash`` as the live engine (the definition comes
from ``BookOpened``), and ``from_snapshot(snapshot())`` plus the outputs after it gives
the same again. The symbol definition is not part of the hashed state; snapshots carry it.

>>> from ledger.protocol.commands import OrderType, SelfTrade, Side, TimeInForce
>>> from ledger.protocol.events import OrderAccepted, SymbolListed
>>> from ledger.protocol.market import Symbol
>>> engine = MatchingEngine("BTC-USDT")
>>> [type(o).__name__ for o in engine.handle(SymbolListed(1, 0, 1, Symbol("BTC-USDT", "BTC", "USDT", 1000, 10)))]
['BookOpened']
>>> [type(o).__name__ for o in engine.handle(OrderAccepted(
...     2, 0, 7, 1, 2, "BTC-USDT", Side.SELL, OrderType.LIMIT, TimeInForce.GTC,
...     SelfTrade.CANCEL_TAKER, 5, 100, 0, "BTC", 5000, 0, 5000))]
['OrderRested']
>>> engine.last_input_seq, engine.seq
(2, 2)
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from ledger.protocol.commands import SelfTrade
from ledger.protocol.events import AmendRequested, BalanceEvent, CancelRequested, OrderAccepted, SymbolListed
from ledger.protocol.market import DefinitionError, Symbol
from ledger.protocol.outputs import BookOpened, EngineOutput
from matching.book import FINISHED_IDS_MAX, BookError, OrderBook

SNAPSHOT_FORMAT = "matching-snapshot"
# Bumped whenever the snapshot's layout changes; readers accept every version up to theirs.
SNAPSHOT_SCHEMA = 1


class EngineError(BookError):
    """An input a correct UBSCore cannot send, an output that does not fit the book, or a
    snapshot that fails verification. (``BookError`` covers these and the book's own.)"""


class _Snapshot(msgspec.Struct, frozen=True):
    format: str
    schema: int
    symbol: str
    seq: int
    # blake2b over the canonical state and the symbol definition together.
    hash: str
    spec: list[Any] | None
    state: dict[str, Any]


def _spec_row(spec: Symbol | None) -> list[Any] | None:
    if spec is None:
        return None
    return [spec.name, spec.base, spec.quote, spec.lot, spec.tick, spec.maker_fee_ppm, spec.taker_fee_ppm]


def _digest(data: Any) -> str:
    return hashlib.blake2b(msgspec.json.encode(data), digest_size=32).hexdigest()


class MatchingEngine:
    """The book and output stream of one symbol.

    ``spec`` is the symbol's definition if already known (a restarted engine that will
    not see ``SymbolListed`` again needs it); otherwise it comes from ``SymbolListed``.
    ``finished_ids_max`` bounds the duplicate-id window and is part of the state: it must
    stay the same for the life of a stream.
    """

    __slots__ = ("symbol", "spec", "book", "last_input_seq")

    def __init__(self, symbol: str, spec: Symbol | None = None, finished_ids_max: int = FINISHED_IDS_MAX) -> None:
        if spec is not None and spec.name != symbol:
            raise EngineError(f"engine {symbol}: given the definition of {spec.name}")
        self.symbol = symbol
        self.spec = spec
        self.book = OrderBook(symbol, None if spec is None else spec.tick, finished_ids_max)
        # The seq of the last balance event that produced outputs: a restarted engine
        # resumes reading balance.events just after it.
        self.last_input_seq = 0

    @property
    def seq(self) -> int:
        """The seq of the last output (0 before the first)."""
        return self.book.seq

    # -- live path --------------------------------------------------------------------

    def handle(self, event: BalanceEvent) -> list[EngineOutput]:
        """Decide and apply one balance event; return the outputs it causes (often [])."""
        # Exact-type tests: an engine reads all of balance.events, most of which it ignores,
        # and a failed isinstance through msgspec's Struct metaclass costs about 150 ns.
        if type(event) is OrderAccepted:
            if event.symbol != self.symbol:
                return []
            if self.spec is None:
                raise EngineError(
                    f"engine {self.symbol}: order {event.order_id} (input {event.seq}) before SymbolListed"
                )
            # Compared here, raised by _check_input_seq: this runs once per order.
            seq = event.seq
            if seq <= self.last_input_seq:
                self._check_input_seq(seq)
            outputs = self.book.place(
                seq,
                event.order_id,
                event.user,
                event.side,
                event.order_type,
                event.tif,
                event.stp,
                event.qty,
                event.price,
                event.quote_budget,
            )
        elif type(event) is CancelRequested:
            if event.symbol != self.symbol:
                return []
            seq = event.seq
            if seq <= self.last_input_seq:
                self._check_input_seq(seq)
            outputs = self.book.cancel(seq, event.order_id, event.user)
        elif type(event) is AmendRequested:
            if event.symbol != self.symbol:
                return []
            seq = event.seq
            self._check_input_seq(seq)
            outputs = self.book.amend(
                seq,
                event.order_id,
                event.user,
                event.keep_priority,
                event.price,
                event.qty,
                event.qty_before,
                event.stp,
                event.post_only,
            )
        elif type(event) is SymbolListed:
            return self._listed(event)
        else:
            return []
        self.last_input_seq = seq
        return outputs

    def amend_qty(self, input_seq: int, order_id: int, user: int, qty_remaining: int) -> list[EngineOutput]:
        """Lower a resting order's quantity, keeping its priority (see
        ``OrderBook.amend_qty``). No UBSCore command produces it yet."""
        self._check_input_seq(input_seq)
        outputs = self.book.amend_qty(input_seq, order_id, user, qty_remaining)
        self.last_input_seq = input_seq
        return outputs

    def amend_price(
        self, input_seq: int, order_id: int, user: int, price: int, stp: int = SelfTrade.CANCEL_TAKER
    ) -> list[EngineOutput]:
        """Move a resting order to a new price, losing priority and possibly trading (see
        ``OrderBook.amend_price``). No UBSCore command produces it yet."""
        self._check_input_seq(input_seq)
        outputs = self.book.amend_price(input_seq, order_id, user, price, stp)
        self.last_input_seq = input_seq
        return outputs

    def _check_input_seq(self, seq: int) -> None:
        # Inputs arrive in balance.events order; one at or before the last acted on is a
        # redelivery the runner should have skipped, and acting on it again would answer
        # a live order as a duplicate.
        if seq <= self.last_input_seq:
            raise EngineError(f"engine {self.symbol}: input seq {seq} is not after {self.last_input_seq}")

    def _listed(self, event: SymbolListed) -> list[EngineOutput]:
        spec = event.symbol
        if spec.name != self.symbol:
            return []
        if self.book.seq == 0:
            # The stream opens with the definition, so the book is rebuilt from it alone.
            if self.spec is not None and self.spec != spec:
                raise EngineError(f"engine {self.symbol}: listed as {spec!r}, given {self.spec!r}")
            self._check_input_seq(event.seq)
            self.spec = spec
            self.book.tick = spec.tick
            self.book.seq = 1
            self.last_input_seq = event.seq
            return [BookOpened(1, self.symbol, event.seq, spec)]
        if self.spec != spec:
            raise EngineError(f"engine {self.symbol}: listed again as {spec!r}, was {self.spec!r}")
        return []

    # -- rebuilding from outputs ------------------------------------------------------

    def apply(self, output: EngineOutput) -> None:
        """Rebuild state from one of this engine's own outputs (replay of
        engine.outputs). Raises ``BookError`` if the output does not fit the state."""
        if type(output) is BookOpened:
            spec = output.definition
            if spec.name != self.symbol or (self.spec is not None and self.spec != spec):
                raise EngineError(f"engine {self.symbol}: its stream opens with the definition of {spec!r}")
            self.book.apply(output)
            self.spec = spec
        else:
            self.book.apply(output)
        self.last_input_seq = output.input_seq

    # -- hashing and snapshots --------------------------------------------------------

    def canonical(self) -> dict[str, Any]:
        """The state as plain ordered data: the input of the hash and of snapshots.
        Resting orders are listed in matching priority, ended ids oldest first."""
        book = self.book
        return {
            "symbol": self.symbol,
            "seq": book.seq,
            "last_input_seq": self.last_input_seq,
            "finished_ids_max": book.finished_ids_max,
            "bids": [[o.order_id, o.user, o.price, o.remaining] for o in book.iter_side(0)],
            "asks": [[o.order_id, o.user, o.price, o.remaining] for o in book.iter_side(1)],
            "finished": list(book.finished_order),
        }

    def state_hash(self) -> str:
        """blake2b-256 of the canonical state: equal in any process and under any
        PYTHONHASHSEED for equal inputs (nothing hash-ordered is iterated)."""
        return _digest(self.canonical())

    def snapshot(self) -> bytes:
        """A self-verifying snapshot: the state, the symbol definition and their hash."""
        body = self.canonical()
        spec = _spec_row(self.spec)
        return msgspec.json.encode(
            _Snapshot(SNAPSHOT_FORMAT, SNAPSHOT_SCHEMA, self.symbol, self.book.seq, _digest([body, spec]), spec, body)
        )

    @classmethod
    def from_snapshot(cls, data: bytes, spec: Symbol | None = None) -> MatchingEngine:
        """An engine restored from a snapshot and verified against its hash. ``spec``
        may supply the symbol definition if the snapshot was taken before it was known."""
        try:
            snap = msgspec.json.decode(data, type=_Snapshot)
        except msgspec.MsgspecError as error:
            raise EngineError(f"not a matching snapshot: {error}") from None
        if snap.format != SNAPSHOT_FORMAT or snap.schema > SNAPSHOT_SCHEMA:
            raise EngineError(f"snapshot format {snap.format!r} schema {snap.schema} is not readable here")
        body = snap.state
        where = f"snapshot of {snap.symbol} at seq {snap.seq}"
        try:
            stored = Symbol(*snap.spec) if snap.spec is not None else None
            engine = cls(snap.symbol, stored or spec, body["finished_ids_max"])
            book = engine.book
            # Orders are listed in priority, so adding them in turn rebuilds each FIFO.
            for side, rows in ((0, body["bids"]), (1, body["asks"])):
                for order_id, user, price, remaining in rows:
                    book.add(order_id, user, side, price, remaining)
            for order_id in body["finished"]:
                book.finish(order_id)
            book.seq = body["seq"]
            engine.last_input_seq = body["last_input_seq"]
            book.check()
        except (KeyError, TypeError, ValueError, DefinitionError, BookError) as error:
            raise EngineError(f"{where} is malformed: {error!r}") from None
        if _digest([engine.canonical(), _spec_row(stored)]) != snap.hash or book.seq != snap.seq:
            raise EngineError(f"{where}: state does not match its hash")
        if stored is not None and spec is not None and stored != spec:
            raise EngineError(f"{where}: holds {stored!r}, given {spec!r}")
        return engine


__all__ = ["EngineError", "MatchingEngine", "SNAPSHOT_FORMAT", "SNAPSHOT_SCHEMA"]
