"""What the projection holds, and the pure mapping from events to row writes.

Nothing here does I/O. A store (SQLite or CQL) turns each ``Write`` into a statement; the
projector owns the order in which writes happen. Every write is keyed by the event (never
the clock) and carries absolute values (the balance after the change, the order's filled
quantity after the fill), plus a ``version`` derived from the seq of the event that made
it. A store applies a versioned write only if no newer version is already there (CQL:
``USING TIMESTAMP version``; SQLite: a guarded upsert), so re-applying any event, in any
order, converges to the same rows.

Logical tables (the same in every store):

* ``balances`` (user, asset): available, locked, seq. A user's balances.
* ``balance_ledger`` (user, asset, bucket, seq, leg): every balance change, newest first,
  with the signed change of the user's holding (available + locked) and the balances after.
* ``ledger_buckets`` (user, asset, bucket): which buckets of the ledger hold rows, so a
  reader pages newest first without scanning.
* ``settled_trades`` (symbol, bucket, trade_id): every trade once, with both users and
  orders, amounts, fees and the seqs it came from. A symbol's recent trades.
* ``symbol_trade_buckets`` (symbol, bucket), ``user_trades`` (user, bucket, seq) and
  ``user_trade_buckets`` (user, bucket): a user's trades, newest first.
* ``orders`` (order_id): the order as accepted, its status, filled quantity and what the
  engine said of it (resting quantity, the reason it ended).
* ``open_orders`` (user, order_id): a user's open orders (deleted when the order ends).
* ``assets``, ``symbols``: the market definitions, for readers.
* ``stream_checkpoints`` and ``sequence_gaps``: kept by the projector, not by this module.

Partitions stay bounded: ledger and trade rows are bucketed by the seq of their stream
(``BUCKET_SEQS`` seqs a bucket), so no partition holds more than that many rows.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from ledger.protocol.commands import Side
from ledger.protocol.events import (
    UNLOCK_CANCELLED,
    UNLOCK_EXPIRED,
    UNLOCK_FILLED,
    UNLOCK_REJECTED,
    AssetListed,
    BalanceEvent,
    CancelRequested,
    Deposited,
    FundsUnlocked,
    OrderAccepted,
    Rejected,
    SymbolListed,
    TradeSettled,
    Withdrawn,
)
from ledger.protocol.limits import FEE_ACCOUNT_USER
from ledger.protocol.market import Asset, Symbol
from ledger.protocol.outputs import EngineOutput, OrderCancelled, OrderExpired, OrderRejected, OrderRested, Trade
from ledger.protocol.reasons import Reason

# Rows of one stream per partition bucket. A user's ledger partition for one asset gets at
# most one row per event of its stream (the fee account gets one per trade), so 2**18
# seqs keep every partition under about 262,000 rows, well inside what ScyllaDB and
# Cassandra handle comfortably (tens of MB).
BUCKET_SEQS = 2**18

# Order status values (the ``orders.status`` column).
STATUS_OPEN = "open"
STATUS_FILLED = "filled"
STATUS_CANCELLED = "cancelled"
STATUS_EXPIRED = "expired"
STATUS_REJECTED = "rejected"
_STATUS_BY_UNLOCK = {
    UNLOCK_FILLED: STATUS_FILLED,
    UNLOCK_CANCELLED: STATUS_CANCELLED,
    UNLOCK_EXPIRED: STATUS_EXPIRED,
    UNLOCK_REJECTED: STATUS_REJECTED,
}

# Engine rejections that answer something other than the order's own end.
_NOT_AN_ORDER_END = frozenset((int(Reason.UNKNOWN_ORDER), int(Reason.DUPLICATE_ORDER_ID)))

# Ledger row kinds (the ``balance_ledger.kind`` column).
KIND_DEPOSIT = "deposit"
KIND_WITHDRAW = "withdraw"
KIND_LOCK = "lock"
KIND_TRADE = "trade"
KIND_FEE = "fee"
KIND_UNLOCK = "unlock"

# Write modes. VERSIONED: apply only if no newer version is stored. IMMUTABLE: the row
# is a fact that never changes (re-writing it writes the same values). DELETE: remove
# the row unless a newer version wrote it.
VERSIONED = "versioned"
IMMUTABLE = "immutable"
DELETE = "delete"


class ProjectionError(Exception):
    """An event the projection cannot map (it contradicts what came before it)."""


class Column(NamedTuple):
    name: str
    # Logical type: "bigint" (64-bit signed), "varint" (any integer: amounts), "text",
    # "int" (32-bit), "boolean".
    type: str


class Table(NamedTuple):
    name: str
    columns: tuple[Column, ...]
    # Partition key columns, then clustering columns (CQL); together the primary key.
    partition: tuple[str, ...]
    clustering: tuple[str, ...] = ()
    # Clustering order is descending (newest first) for every clustered table here.


def _cols(spec: str) -> tuple[Column, ...]:
    return tuple(Column(*item.split(":")) for item in spec.split())


TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table("assets", _cols("code:text decimals:int seq:bigint"), ("code",)),
        Table(
            "symbols",
            _cols(
                "name:text base:text quote:text lot:varint tick:varint maker_fee_ppm:int taker_fee_ppm:int seq:bigint"
            ),
            ("name",),
        ),
        Table(
            "balances", _cols("user:bigint asset:text available:varint locked:varint seq:bigint"), ("user",), ("asset",)
        ),
        Table(
            "balance_ledger",
            _cols(
                "user:bigint asset:text bucket:int seq:bigint leg:int kind:text change:varint "
                "available:varint locked:varint symbol:text order_id:bigint trade_id:bigint request_id:bigint"
            ),
            ("user", "asset", "bucket"),
            ("seq", "leg"),
        ),
        Table("ledger_buckets", _cols("user:bigint asset:text bucket:int"), ("user", "asset"), ("bucket",)),
        Table(
            "settled_trades",
            _cols(
                "symbol:text bucket:int trade_id:bigint seq:bigint engine_seq:bigint price:bigint qty:bigint "
                "maker_side:int base_amount:varint quote_amount:varint maker_user:bigint maker_order_id:bigint "
                "maker_fee:varint taker_user:bigint taker_order_id:bigint taker_fee:varint taker_refund:varint"
            ),
            ("symbol", "bucket"),
            ("trade_id",),
        ),
        Table("symbol_trade_buckets", _cols("symbol:text bucket:int"), ("symbol",), ("bucket",)),
        Table(
            "user_trades",
            _cols(
                "user:bigint bucket:int seq:bigint symbol:text trade_id:bigint order_id:bigint maker:boolean "
                "side:int price:bigint qty:bigint base_amount:varint quote_amount:varint fee:varint"
            ),
            ("user", "bucket"),
            # Both sides of a trade have the same seq; were they ever the same user (the
            # engine prevents self-trades today) the maker flag keeps the rows apart.
            ("seq", "maker"),
        ),
        Table("user_trade_buckets", _cols("user:bigint bucket:int"), ("user",), ("bucket",)),
        Table(
            "orders",
            _cols(
                "order_id:bigint user:bigint symbol:text side:int order_type:int tif:int price:bigint qty:bigint "
                "quote_budget:varint lock_asset:text lock_amount:varint accepted_seq:bigint "
                "status:text filled_qty:bigint status_seq:bigint "
                "rested_qty:bigint rested_seq:bigint end_reason:int ended_seq:bigint"
            ),
            ("order_id",),
        ),
        Table(
            "open_orders",
            _cols("user:bigint order_id:bigint symbol:text side:int price:bigint qty:bigint accepted_seq:bigint"),
            ("user",),
            ("order_id",),
        ),
    )
}


class WriteKind(NamedTuple):
    """One kind of write: which table, which columns it sets (key columns first, in the
    order of ``Write.values``), how it is applied, and for VERSIONED writes the column that
    holds its version in stores without write timestamps."""

    name: str
    table: str
    columns: tuple[str, ...]
    mode: str
    version_column: str | None = None


WRITE_KINDS: dict[str, WriteKind] = {
    k.name: k
    for k in (
        WriteKind("asset", "assets", ("code", "decimals", "seq"), VERSIONED, "seq"),
        WriteKind(
            "symbol",
            "symbols",
            ("name", "base", "quote", "lot", "tick", "maker_fee_ppm", "taker_fee_ppm", "seq"),
            VERSIONED,
            "seq",
        ),
        WriteKind("balance", "balances", ("user", "asset", "available", "locked", "seq"), VERSIONED, "seq"),
        WriteKind("ledger", "balance_ledger", tuple(c.name for c in TABLES["balance_ledger"].columns), IMMUTABLE),
        WriteKind("ledger_bucket", "ledger_buckets", ("user", "asset", "bucket"), IMMUTABLE),
        WriteKind("trade", "settled_trades", tuple(c.name for c in TABLES["settled_trades"].columns), IMMUTABLE),
        WriteKind("symbol_trade_bucket", "symbol_trade_buckets", ("symbol", "bucket"), IMMUTABLE),
        WriteKind("user_trade", "user_trades", tuple(c.name for c in TABLES["user_trades"].columns), IMMUTABLE),
        WriteKind("user_trade_bucket", "user_trade_buckets", ("user", "bucket"), IMMUTABLE),
        WriteKind(
            "order_accepted",
            "orders",
            (
                "order_id",
                "user",
                "symbol",
                "side",
                "order_type",
                "tif",
                "price",
                "qty",
                "quote_budget",
                "lock_asset",
                "lock_amount",
                "accepted_seq",
            ),
            IMMUTABLE,
        ),
        WriteKind(
            "order_status", "orders", ("order_id", "status", "filled_qty", "status_seq"), VERSIONED, "status_seq"
        ),
        WriteKind("order_rested", "orders", ("order_id", "rested_qty", "rested_seq"), VERSIONED, "rested_seq"),
        WriteKind("order_ended", "orders", ("order_id", "end_reason", "ended_seq"), VERSIONED, "ended_seq"),
        WriteKind(
            "open_order",
            "open_orders",
            ("user", "order_id", "symbol", "side", "price", "qty", "accepted_seq"),
            VERSIONED,
            "accepted_seq",
        ),
        WriteKind("close_order", "open_orders", ("user", "order_id"), DELETE),
    )
}


class Write(NamedTuple):
    """One row write: ``kind`` names a ``WriteKind``; ``values`` follow its columns;
    ``version`` orders versioned writes and deletes (the seq of the event that made it)."""

    kind: str
    values: tuple[object, ...]
    version: int


def bucket_of(seq: int) -> int:
    """The partition bucket of a stream seq."""
    return seq // BUCKET_SEQS


# The layout of a saved projector state; a reader refuses any other.
STATE_FORMAT = "projection-state-1"


class _ProjectionState(msgspec.Struct, frozen=True, array_like=True):
    format: str
    filled: list[tuple[int, int]]
    assets_of: list[tuple[str, str, str]]


_STATE_ENCODER = msgspec.msgpack.Encoder()
_STATE_DECODER = msgspec.msgpack.Decoder(_ProjectionState)


class Projection:
    """The fold state the mapping needs beyond one event, and the mapping itself.

    The state is each open order's filled quantity (events carry a fill, not the total)
    and each symbol's assets (a trade names only its symbol). The projector rebuilds it
    by folding its stream, from the start or from a saved ``snapshot``; the projected
    rows are never read back. Everything else in a write comes from the event itself.
    """

    __slots__ = ("filled", "assets_of", "_buckets_written")

    def __init__(self) -> None:
        # order_id -> lots filled so far, for orders not yet ended.
        self.filled: dict[int, int] = {}
        # symbol -> (base, quote), from SymbolListed: a trade names only its symbol.
        self.assets_of: dict[str, tuple[str, str]] = {}
        # Bucket rows already written by this process: they are immutable, so writing
        # one again is pure cost. Grows with (user, asset) pairs and buckets in use.
        self._buckets_written: set[tuple[object, ...]] = set()

    def snapshot(self) -> bytes:
        """The fold state, canonically encoded (sorted), for ``restore``."""
        state = _ProjectionState(
            STATE_FORMAT,
            sorted(self.filled.items()),
            sorted((name, base, quote) for name, (base, quote) in self.assets_of.items()),
        )
        return _STATE_ENCODER.encode(state)

    @classmethod
    def restore(cls, data: bytes) -> Projection:
        """A projection in the state ``snapshot`` saved."""
        try:
            state = _STATE_DECODER.decode(data)
        except msgspec.DecodeError as error:
            raise ProjectionError(f"saved projector state does not decode: {error}") from None
        if state.format != STATE_FORMAT:
            raise ProjectionError(f"saved projector state has format {state.format!r}, not {STATE_FORMAT!r}")
        projection = cls()
        projection.filled = dict(state.filled)
        projection.assets_of = {name: (base, quote) for name, base, quote in state.assets_of}
        return projection

    def _bucket(self, writes: list[Write], kind: str, values: tuple[object, ...]) -> None:
        key = (kind, *values)
        if key not in self._buckets_written:
            self._buckets_written.add(key)
            writes.append(Write(kind, values, 0))

    # -- balance.events ------------------------------------------------------------------

    def balance_event(self, event: BalanceEvent, writes: list[Write] | None) -> None:
        """Fold ``event`` into the state and, if ``writes`` is a list, append its rows."""
        kind = type(event)
        if kind is TradeSettled:
            self._trade(event, writes)  # type: ignore[arg-type]
        elif kind is OrderAccepted:
            self._accepted(event, writes)  # type: ignore[arg-type]
        elif kind is FundsUnlocked:
            self._unlocked(event, writes)  # type: ignore[arg-type]
        elif kind is Deposited or kind is Withdrawn:
            if writes is not None:
                self._funds(event, writes)  # type: ignore[arg-type]
        elif kind is AssetListed:
            if writes is not None:
                a: Asset = event.asset  # type: ignore[union-attr,assignment]
                writes.append(Write("asset", (a.code, a.decimals, event.seq), event.seq))
        elif kind is SymbolListed:
            s: Symbol = event.symbol  # type: ignore[union-attr,assignment]
            self.assets_of[s.name] = (s.base, s.quote)
            if writes is not None:
                writes.append(
                    Write(
                        "symbol",
                        (s.name, s.base, s.quote, s.lot, s.tick, s.maker_fee_ppm, s.taker_fee_ppm, event.seq),
                        event.seq,
                    )
                )
        elif kind is CancelRequested or kind is Rejected:
            # A cancel request changes nothing until the engine answers (the order may
            # fill first); a rejection changes nothing at all. Both stay in the log.
            pass
        else:  # pragma: no cover - the codec admits only the union's types
            raise TypeError(f"not a balance event: {kind.__name__}")

    def _ledger(
        self,
        writes: list[Write],
        user: int,
        asset: str,
        seq: int,
        leg: int,
        kind: str,
        change: int,
        available: int,
        locked: int,
        symbol: str = "",
        order_id: int = 0,
        trade_id: int = 0,
        request_id: int = 0,
    ) -> None:
        bucket = seq // BUCKET_SEQS
        writes.append(Write("balance", (user, asset, available, locked, seq), seq))
        writes.append(
            Write(
                "ledger",
                (
                    user,
                    asset,
                    bucket,
                    seq,
                    leg,
                    kind,
                    change,
                    available,
                    locked,
                    symbol,
                    order_id,
                    trade_id,
                    request_id,
                ),
                seq,
            )
        )
        self._bucket(writes, "ledger_bucket", (user, asset, bucket))

    def _funds(self, e: Deposited | Withdrawn, writes: list[Write]) -> None:
        deposit = type(e) is Deposited
        self._ledger(
            writes,
            e.user,
            e.asset,
            e.seq,
            0,
            KIND_DEPOSIT if deposit else KIND_WITHDRAW,
            e.amount if deposit else -e.amount,
            e.available,
            e.locked,
            request_id=e.request_id,
        )

    def _accepted(self, e: OrderAccepted, writes: list[Write] | None) -> None:
        self.filled[e.order_id] = 0
        if writes is None:
            return
        seq = e.seq
        self._ledger(
            writes,
            e.user,
            e.lock_asset,
            seq,
            0,
            KIND_LOCK,
            0,
            e.available,
            e.locked,
            e.symbol,
            e.order_id,
            request_id=e.request_id,
        )
        writes.append(
            Write(
                "order_accepted",
                (
                    e.order_id,
                    e.user,
                    e.symbol,
                    int(e.side),
                    int(e.order_type),
                    int(e.tif),
                    e.price,
                    e.qty,
                    e.quote_budget,
                    e.lock_asset,
                    e.lock_amount,
                    seq,
                ),
                seq,
            )
        )
        writes.append(Write("order_status", (e.order_id, STATUS_OPEN, 0, seq), seq))
        writes.append(Write("open_order", (e.user, e.order_id, e.symbol, int(e.side), e.price, e.qty, seq), seq))

    def _end(self, writes: list[Write], user: int, order_id: int, status: str, seq: int) -> None:
        filled = self.filled.pop(order_id, None)
        if filled is None:
            # Not accepted in the events this projection has folded. The projector folds
            # from seq 1 or a saved state, so only direct use of Projection gets here.
            filled = -1
        writes.append(Write("order_status", (order_id, status, filled, seq), seq))
        writes.append(Write("close_order", (user, order_id), seq))

    def _trade(self, e: TradeSettled, writes: list[Write] | None) -> None:
        # Check first: an event that fails must leave the fold state as it was (a state
        # saved with the checkpoint before it would otherwise carry half of it).
        assets = self.assets_of.get(e.symbol)
        if assets is None:
            raise ProjectionError(f"trade {e.trade_id} (seq {e.seq}) of symbol {e.symbol}, which was never listed")
        filled = self.filled
        qty = e.qty
        # -1: the order was accepted before this projection's first event (see _end).
        maker_filled = taker_filled = -1
        if e.maker_order_id in filled:
            maker_filled = filled[e.maker_order_id] = filled[e.maker_order_id] + qty
        if e.taker_order_id in filled:
            taker_filled = filled[e.taker_order_id] = filled[e.taker_order_id] + qty
        if writes is None:
            if e.maker_done:
                filled.pop(e.maker_order_id, None)
            if e.taker_done:
                filled.pop(e.taker_order_id, None)
            return
        seq = e.seq
        symbol = e.symbol
        trade_id = e.trade_id
        # The buyer pays quote_amount out of locked quote (a buying taker's price
        # improvement goes back to available, which does not change its holding) and
        # receives base net of its fee; the seller the other way round.
        maker_buys = e.maker_side == Side.BUY
        if maker_buys:
            maker_base, maker_quote = e.base_amount - e.maker_fee, -e.quote_amount
            taker_base, taker_quote = -e.base_amount, e.quote_amount - e.taker_fee
            fee_base, fee_quote = e.maker_fee, e.taker_fee
        else:
            maker_base, maker_quote = -e.base_amount, e.quote_amount - e.maker_fee
            taker_base, taker_quote = e.base_amount - e.taker_fee, -e.quote_amount
            fee_base, fee_quote = e.taker_fee, e.maker_fee
        base, quote = assets
        led = self._ledger
        led(
            writes,
            e.maker_user,
            base,
            seq,
            0,
            KIND_TRADE,
            maker_base,
            e.maker_base_available,
            e.maker_base_locked,
            symbol,
            e.maker_order_id,
            trade_id,
        )
        led(
            writes,
            e.maker_user,
            quote,
            seq,
            1,
            KIND_TRADE,
            maker_quote,
            e.maker_quote_available,
            e.maker_quote_locked,
            symbol,
            e.maker_order_id,
            trade_id,
        )
        led(
            writes,
            e.taker_user,
            base,
            seq,
            2,
            KIND_TRADE,
            taker_base,
            e.taker_base_available,
            e.taker_base_locked,
            symbol,
            e.taker_order_id,
            trade_id,
        )
        led(
            writes,
            e.taker_user,
            quote,
            seq,
            3,
            KIND_TRADE,
            taker_quote,
            e.taker_quote_available,
            e.taker_quote_locked,
            symbol,
            e.taker_order_id,
            trade_id,
        )
        if fee_base:
            led(
                writes, FEE_ACCOUNT_USER, base, seq, 4, KIND_FEE, fee_base, e.fee_base_available, 0, symbol, 0, trade_id
            )
        if fee_quote:
            led(
                writes,
                FEE_ACCOUNT_USER,
                quote,
                seq,
                5,
                KIND_FEE,
                fee_quote,
                e.fee_quote_available,
                0,
                symbol,
                0,
                trade_id,
            )
        trade_bucket = trade_id // BUCKET_SEQS
        writes.append(
            Write(
                "trade",
                (
                    symbol,
                    trade_bucket,
                    trade_id,
                    seq,
                    e.engine_seq,
                    e.price,
                    qty,
                    int(e.maker_side),
                    e.base_amount,
                    e.quote_amount,
                    e.maker_user,
                    e.maker_order_id,
                    e.maker_fee,
                    e.taker_user,
                    e.taker_order_id,
                    e.taker_fee,
                    e.taker_refund,
                ),
                seq,
            )
        )
        self._bucket(writes, "symbol_trade_bucket", (symbol, trade_bucket))
        user_bucket = seq // BUCKET_SEQS
        maker_side = int(e.maker_side)
        for user, order_id, is_maker, side, fee in (
            (e.maker_user, e.maker_order_id, True, maker_side, e.maker_fee),
            (e.taker_user, e.taker_order_id, False, 1 - maker_side, e.taker_fee),
        ):
            writes.append(
                Write(
                    "user_trade",
                    (
                        user,
                        user_bucket,
                        seq,
                        symbol,
                        trade_id,
                        order_id,
                        is_maker,
                        side,
                        e.price,
                        qty,
                        e.base_amount,
                        e.quote_amount,
                        fee,
                    ),
                    seq,
                )
            )
            self._bucket(writes, "user_trade_bucket", (user, user_bucket))
        for order_id, user, done, order_filled in (
            (e.maker_order_id, e.maker_user, e.maker_done, maker_filled),
            (e.taker_order_id, e.taker_user, e.taker_done, taker_filled),
        ):
            if done:
                self._end(writes, user, order_id, STATUS_FILLED, seq)
            else:
                writes.append(Write("order_status", (order_id, STATUS_OPEN, order_filled, seq), seq))

    def _unlocked(self, e: FundsUnlocked, writes: list[Write] | None) -> None:
        if writes is None:
            self.filled.pop(e.order_id, None)
            return
        seq = e.seq
        if e.amount:
            self._ledger(writes, e.user, e.asset, seq, 0, KIND_UNLOCK, 0, e.available, e.locked, e.symbol, e.order_id)
        if e.reason != UNLOCK_FILLED:
            self._end(writes, e.user, e.order_id, _STATUS_BY_UNLOCK.get(e.reason, STATUS_CANCELLED), seq)
        # else: the trade that filled the order ended it (status and filled quantity);
        # this only returns what it had left locked (a market buy's unspent budget).

    # -- engine.outputs -----------------------------------------------------------------

    @staticmethod
    def engine_output(output: EngineOutput, writes: list[Write]) -> None:
        """Append the rows of one engine output (the engine's view of an order)."""
        kind = type(output)
        if kind is OrderRested:
            r: OrderRested = output  # type: ignore[assignment]
            writes.append(Write("order_rested", (r.order_id, r.qty_remaining, r.seq), r.seq))
        elif kind is OrderCancelled or kind is OrderExpired or kind is OrderRejected:
            end: OrderCancelled = output  # type: ignore[assignment]
            # A cancel that lost the race with the order's end (UNKNOWN_ORDER) says nothing
            # about the order, which ended otherwise; nor does a rejected reuse of its id.
            if kind is not OrderRejected or end.reason not in _NOT_AN_ORDER_END:
                writes.append(Write("order_ended", (end.order_id, end.reason, end.seq), end.seq))
        elif kind is Trade:
            # Trades are projected once, settled, from balance.events (with amounts and
            # fees); the engine's copy adds nothing a reader needs.
            pass
        else:  # pragma: no cover
            raise TypeError(f"not an engine output: {kind.__name__}")
