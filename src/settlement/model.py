"""What the projection holds, and the pure mapping from events to row writes.

Nothing here does I/O. Each write is a row struct (``BalanceRow``, ``LedgerRow``, ...,
``OpenOrderDelete``; ``Row`` is their union) whose fields are columns of its table; a
store (SQLite or CQL) turns each row type into one statement. The projector owns the
order in which writes happen. Every row is keyed by the event (never the clock) and
carries absolute values (the balance after the change, the order's filled quantity
after the fill), plus a version: the seq of the event that made it, held in the field
its type's ``VERSION`` names. A store applies a ``VersionedRow`` or a ``Delete`` only if
no newer version is already there (CQL: ``USING TIMESTAMP version``; SQLite: a guarded
upsert, and a tombstone for a delete), so re-applying any event, in any order, converges
to the same rows.

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
* ``order_fills`` (order_id, bucket, trade_id) and ``order_fill_buckets`` (order_id,
  bucket): one order's fills, newest first, from both sides of every ``TradeSettled``.
* ``depth_levels`` (symbol, side, rank): the aggregated resting book from engine.outputs,
  one row per price level with its total resting quantity and number of orders, best
  level first on both sides (``rank`` is the price for bids, minus the price for asks).
  A level that empties is deleted.
* ``assets``, ``symbols``: the market definitions, for readers.
* ``stream_checkpoints`` and ``sequence_gaps``: kept by the projector, not by this module.

Partitions stay bounded: ledger and trade rows are bucketed by the seq of their stream
(``BUCKET_SEQS`` seqs a bucket), and an order's fills by trade id, so no partition holds
more than that many rows. A depth partition holds one row per price level with resting
orders on that side, at most the number of resting orders.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal, NamedTuple, get_args

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
from ledger.protocol.outputs import (
    BookOpened,
    EngineOutput,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)
from ledger.protocol.reasons import Reason

# Rows of one stream per partition bucket. A user's ledger partition for one asset gets at
# most one row per event of its stream (the fee account gets one per trade), so 2**18
# seqs keep every partition under about 262,000 rows, well inside what ScyllaDB and
# Cassandra handle comfortably (tens of MB).
BUCKET_SEQS = 2**18

# Order status values (the ``orders.status`` column).
OrderStatus = Literal["open", "filled", "cancelled", "expired", "rejected"]
STATUS_OPEN: Final = "open"
STATUS_FILLED: Final = "filled"
STATUS_CANCELLED: Final = "cancelled"
STATUS_EXPIRED: Final = "expired"
STATUS_REJECTED: Final = "rejected"
_STATUS_BY_UNLOCK: dict[int, OrderStatus] = {
    UNLOCK_FILLED: STATUS_FILLED,
    UNLOCK_CANCELLED: STATUS_CANCELLED,
    UNLOCK_EXPIRED: STATUS_EXPIRED,
    UNLOCK_REJECTED: STATUS_REJECTED,
}

# Engine rejections that answer something other than the order's own end.
_NOT_AN_ORDER_END = frozenset((int(Reason.UNKNOWN_ORDER), int(Reason.DUPLICATE_ORDER_ID)))

# Ledger row kinds (the ``balance_ledger.kind`` column).
LedgerKind = Literal["deposit", "withdraw", "lock", "trade", "fee", "unlock"]
KIND_DEPOSIT: Final = "deposit"
KIND_WITHDRAW: Final = "withdraw"
KIND_LOCK: Final = "lock"
KIND_TRADE: Final = "trade"
KIND_FEE: Final = "fee"
KIND_UNLOCK: Final = "unlock"


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
        Table(
            "order_fills",
            _cols(
                "order_id:bigint bucket:int trade_id:bigint symbol:text seq:bigint engine_seq:bigint user:bigint "
                "maker:boolean side:int price:bigint qty:bigint base_amount:varint quote_amount:varint fee:varint"
            ),
            # An order may fill up to its quantity in lots (ORDER_QTY_LOTS_MAX is 2**63 - 1)
            # times, a lot at a time: bucketed by trade id like a symbol's trades.
            ("order_id", "bucket"),
            ("trade_id",),
        ),
        Table("order_fill_buckets", _cols("order_id:bigint bucket:int"), ("order_id",), ("bucket",)),
        Table(
            "depth_levels",
            # qty is a varint: the sum of a level's orders, each up to 2**63 - 1 lots, can
            # pass 64 bits.
            _cols("symbol:text side:int rank:bigint price:bigint qty:varint orders:bigint engine_seq:bigint"),
            ("symbol", "side"),
            # rank = price for bids, -price for asks: descending puts the best level first.
            ("rank",),
        ),
    )
}


class _Row(msgspec.Struct, frozen=True, gc=False):
    """A row to write into ``TABLE``: the fields are its columns (every key column, in
    the order of the table), so a store builds its statement from the field names.

    ``VERSION`` names the field that holds the row's version (the seq of the event that
    made it), or is None for a row whose every write is the same fact (version 0). CQL
    writes every row ``USING TIMESTAMP version``."""

    TABLE: ClassVar[str]
    VERSION: ClassVar[str | None]


class VersionedRow(_Row, frozen=True):
    """A row applied only if no newer version is stored; ``VERSION`` is also the column
    that holds the version in stores without write timestamps (SQLite)."""

    VERSION: ClassVar[str]


class ImmutableRow(_Row, frozen=True):
    """A fact that never changes: re-writing it writes the same values."""


class Delete(_Row, frozen=True):
    """Removes the row with this key unless a newer version wrote it: the fields are the
    table's key, then the field named by ``VERSION``. SQLite keeps a tombstone."""

    VERSION: ClassVar[str]


class AssetRow(VersionedRow, frozen=True):
    TABLE = "assets"
    VERSION = "seq"
    code: str
    decimals: int
    seq: int


class SymbolRow(VersionedRow, frozen=True):
    TABLE = "symbols"
    VERSION = "seq"
    name: str
    base: str
    quote: str
    lot: int
    tick: int
    maker_fee_ppm: int
    taker_fee_ppm: int
    seq: int


class BalanceRow(VersionedRow, frozen=True):
    TABLE = "balances"
    VERSION = "seq"
    user: int
    asset: str
    available: int
    locked: int
    seq: int


class LedgerRow(ImmutableRow, frozen=True):
    TABLE = "balance_ledger"
    VERSION = "seq"
    user: int
    asset: str
    bucket: int
    seq: int
    leg: int
    kind: LedgerKind
    # The signed change of the user's holding (available + locked).
    change: int
    available: int
    locked: int
    symbol: str
    order_id: int
    trade_id: int
    request_id: int


class LedgerBucketRow(ImmutableRow, frozen=True):
    TABLE = "ledger_buckets"
    VERSION = None
    user: int
    asset: str
    bucket: int


class TradeRow(ImmutableRow, frozen=True):
    TABLE = "settled_trades"
    VERSION = "seq"
    symbol: str
    bucket: int
    trade_id: int
    seq: int
    engine_seq: int
    price: int
    qty: int
    maker_side: int
    base_amount: int
    quote_amount: int
    maker_user: int
    maker_order_id: int
    maker_fee: int
    taker_user: int
    taker_order_id: int
    taker_fee: int
    taker_refund: int


class SymbolTradeBucketRow(ImmutableRow, frozen=True):
    TABLE = "symbol_trade_buckets"
    VERSION = None
    symbol: str
    bucket: int


class UserTradeRow(ImmutableRow, frozen=True):
    TABLE = "user_trades"
    VERSION = "seq"
    user: int
    bucket: int
    seq: int
    symbol: str
    trade_id: int
    order_id: int
    maker: bool
    side: int
    price: int
    qty: int
    base_amount: int
    quote_amount: int
    fee: int


class UserTradeBucketRow(ImmutableRow, frozen=True):
    TABLE = "user_trade_buckets"
    VERSION = None
    user: int
    bucket: int


# The orders table is written in four parts, each versioned on its own: as accepted (a
# fact), its status, and the engine's two answers. A part never overwrites another's
# columns, so they may arrive in any order.


class OrderAcceptedRow(ImmutableRow, frozen=True):
    TABLE = "orders"
    VERSION = "accepted_seq"
    order_id: int
    user: int
    symbol: str
    side: int
    order_type: int
    tif: int
    price: int
    qty: int
    quote_budget: int
    lock_asset: str
    lock_amount: int
    accepted_seq: int


class OrderStatusRow(VersionedRow, frozen=True):
    TABLE = "orders"
    VERSION = "status_seq"
    order_id: int
    status: OrderStatus
    # -1: the order was accepted before the events this projection folded.
    filled_qty: int
    status_seq: int


class OrderRestedRow(VersionedRow, frozen=True):
    TABLE = "orders"
    VERSION = "rested_seq"
    order_id: int
    rested_qty: int
    rested_seq: int


class OrderEndedRow(VersionedRow, frozen=True):
    TABLE = "orders"
    VERSION = "ended_seq"
    order_id: int
    end_reason: int
    ended_seq: int


class OpenOrderRow(VersionedRow, frozen=True):
    TABLE = "open_orders"
    VERSION = "accepted_seq"
    user: int
    order_id: int
    symbol: str
    side: int
    price: int
    qty: int
    accepted_seq: int


class OpenOrderDelete(Delete, frozen=True):
    """The order ended at ``seq``: it is no longer one of the user's open orders."""

    TABLE = "open_orders"
    VERSION = "seq"
    user: int
    order_id: int
    seq: int


class OrderFillRow(ImmutableRow, frozen=True):
    """One order's part in one trade: ``fee`` is what this side paid, ``side`` its side."""

    TABLE = "order_fills"
    VERSION = "seq"
    order_id: int
    bucket: int
    trade_id: int
    symbol: str
    seq: int
    engine_seq: int
    user: int
    maker: bool
    side: int
    price: int
    qty: int
    base_amount: int
    quote_amount: int
    fee: int


class OrderFillBucketRow(ImmutableRow, frozen=True):
    TABLE = "order_fill_buckets"
    VERSION = None
    order_id: int
    bucket: int


class DepthLevelRow(VersionedRow, frozen=True):
    """A price level's totals after the engine output with seq ``engine_seq``."""

    TABLE = "depth_levels"
    VERSION = "engine_seq"
    symbol: str
    side: int
    rank: int
    price: int
    qty: int
    orders: int
    engine_seq: int


class DepthLevelDelete(Delete, frozen=True):
    """The level emptied at engine seq ``engine_seq``; a later write brings it back."""

    TABLE = "depth_levels"
    VERSION = "engine_seq"
    symbol: str
    side: int
    rank: int
    engine_seq: int


Row = (
    AssetRow
    | SymbolRow
    | BalanceRow
    | LedgerRow
    | LedgerBucketRow
    | TradeRow
    | SymbolTradeBucketRow
    | UserTradeRow
    | UserTradeBucketRow
    | OrderAcceptedRow
    | OrderStatusRow
    | OrderRestedRow
    | OrderEndedRow
    | OpenOrderRow
    | OpenOrderDelete
    | OrderFillRow
    | OrderFillBucketRow
    | DepthLevelRow
    | DepthLevelDelete
)
ROW_TYPES: tuple[type[Row], ...] = get_args(Row)


def _check_row_type(row_type: type[Row]) -> None:
    # The stores build their statements from a row's field names and bind its values in
    # field order, trusting that the fields are columns of its table and hold its key.
    table = TABLES[row_type.TABLE]
    fields = row_type.__struct_fields__
    key = (*table.partition, *table.clustering)
    if issubclass(row_type, Delete):
        assert fields == (*key, row_type.VERSION), row_type
        return
    columns = [c.name for c in table.columns]
    assert all(k in fields for k in key) and all(f in columns for f in fields), row_type
    assert row_type.VERSION is None or row_type.VERSION in fields, row_type


for _row_type in ROW_TYPES:
    _check_row_type(_row_type)


def bucket_of(seq: int) -> int:
    """The partition bucket of a stream seq."""
    return seq // BUCKET_SEQS


def depth_rank(side: int, price: int) -> int:
    """The clustering key of a depth level: descending order puts the best level first
    on both sides (the highest bid, the lowest ask)."""
    return price if side == Side.BUY else -price


# The layout of a saved projector state; a reader refuses any other (a state of the
# layout before depth, "projection-state-1", is refused too, so the stream folds from
# its start and rebuilds its resting orders).
STATE_FORMAT = "projection-state-2"


class _ProjectionState(msgspec.Struct, frozen=True, array_like=True):
    format: str
    filled: list[tuple[int, int]]
    assets_of: list[tuple[str, str, str]]
    # (symbol, order_id, side, price, remaining) of every resting order; the level
    # totals are recomputed from them on restore.
    resting: list[tuple[str, int, int, int, int]]


_STATE_ENCODER = msgspec.msgpack.Encoder()
_STATE_DECODER = msgspec.msgpack.Decoder(_ProjectionState)


class _Depth:
    """One symbol's resting orders and the totals of its price levels, folded from its
    engine.outputs. A level exists only while an order rests at it."""

    __slots__ = ("orders", "levels")

    def __init__(self) -> None:
        # order_id -> [side, price, remaining lots]
        self.orders: dict[int, list[int]] = {}
        # levels[side][price] -> [resting lots, resting orders], both positive.
        self.levels: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})


class Projection:
    """The fold state the mapping needs beyond one event, and the mapping itself.

    The state is each open order's filled quantity (events carry a fill, not the total),
    each symbol's assets (a trade names only its symbol) and, from engine.outputs, each
    symbol's resting orders and level totals (outputs carry an order's change, the depth
    rows hold a level's total). The projector rebuilds it by folding its stream, from the
    start or from a saved ``snapshot``; the projected rows are never read back. Everything
    else in a write comes from the event itself.
    """

    __slots__ = ("filled", "assets_of", "depth", "_buckets_written", "_fill_buckets_written")

    def __init__(self) -> None:
        # order_id -> lots filled so far, for orders not yet ended.
        self.filled: dict[int, int] = {}
        # symbol -> (base, quote), from SymbolListed: a trade names only its symbol.
        self.assets_of: dict[str, tuple[str, str]] = {}
        # symbol -> its resting orders and levels, from engine.outputs.
        self.depth: dict[str, _Depth] = {}
        # Bucket rows already written by this process: they are immutable, so writing
        # one again is pure cost. Grows with (user, asset) pairs and buckets in use.
        self._buckets_written: set[Row] = set()
        # order_id -> the fill bucket last written for it, while the order is open (so
        # this stays as small as the open orders); a restart writes one again, harmlessly.
        self._fill_buckets_written: dict[int, int] = {}

    def snapshot(self) -> bytes:
        """The fold state, canonically encoded (sorted), for ``restore``."""
        resting = sorted(
            (symbol, order_id, side, price, remaining)
            for symbol, depth in self.depth.items()
            for order_id, (side, price, remaining) in depth.orders.items()
        )
        state = _ProjectionState(
            STATE_FORMAT,
            sorted(self.filled.items()),
            sorted((name, base, quote) for name, (base, quote) in self.assets_of.items()),
            resting,
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
        for symbol, order_id, side, price, remaining in state.resting:
            if side not in (0, 1) or price <= 0 or remaining <= 0:
                raise ProjectionError(f"saved projector state: order {order_id} rests as {side, price, remaining}")
            depth = projection._depth_of(symbol)
            depth.orders[order_id] = [side, price, remaining]
            level = depth.levels[side].setdefault(price, [0, 0])
            level[0] += remaining
            level[1] += 1
        return projection

    def levels(self, symbol: str) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """The symbol's (price, lots, orders) per level, best first: (bids, asks)."""
        depth = self.depth.get(symbol)
        if depth is None:
            return [], []
        bids, asks = depth.levels
        return (
            [(price, qty, orders) for price, (qty, orders) in sorted(bids.items(), reverse=True)],
            [(price, qty, orders) for price, (qty, orders) in sorted(asks.items())],
        )

    def _bucket(self, writes: list[Row], row: LedgerBucketRow | SymbolTradeBucketRow | UserTradeBucketRow) -> None:
        if row not in self._buckets_written:
            self._buckets_written.add(row)
            writes.append(row)

    # -- balance.events ------------------------------------------------------------------

    def balance_event(self, event: BalanceEvent, writes: list[Row] | None) -> None:
        """Fold ``event`` into the state and, if ``writes`` is a list, append its rows."""
        match event:
            case TradeSettled():
                self._trade(event, writes)
            case OrderAccepted():
                self._accepted(event, writes)
            case FundsUnlocked():
                self._unlocked(event, writes)
            case Deposited() | Withdrawn():
                if writes is not None:
                    self._funds(event, writes)
            case AssetListed():
                if writes is not None:
                    a = event.asset
                    writes.append(AssetRow(a.code, a.decimals, event.seq))
            case SymbolListed():
                s = event.symbol
                self.assets_of[s.name] = (s.base, s.quote)
                if writes is not None:
                    writes.append(
                        SymbolRow(s.name, s.base, s.quote, s.lot, s.tick, s.maker_fee_ppm, s.taker_fee_ppm, event.seq)
                    )
            case CancelRequested() | Rejected():
                # A cancel request changes nothing until the engine answers (the order may
                # fill first); a rejection changes nothing at all. Both stay in the log.
                pass
            case _:  # pragma: no cover - the codec admits only the union's types
                raise TypeError(f"not a balance event: {type(event).__name__}")

    def _ledger(
        self,
        writes: list[Row],
        user: int,
        asset: str,
        seq: int,
        leg: int,
        kind: LedgerKind,
        change: int,
        available: int,
        locked: int,
        symbol: str = "",
        order_id: int = 0,
        trade_id: int = 0,
        request_id: int = 0,
    ) -> None:
        bucket = seq // BUCKET_SEQS
        writes.append(BalanceRow(user, asset, available, locked, seq))
        writes.append(
            LedgerRow(
                user, asset, bucket, seq, leg, kind, change, available, locked, symbol, order_id, trade_id, request_id
            )
        )
        self._bucket(writes, LedgerBucketRow(user, asset, bucket))

    def _funds(self, e: Deposited | Withdrawn, writes: list[Row]) -> None:
        deposit = isinstance(e, Deposited)
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

    def _accepted(self, e: OrderAccepted, writes: list[Row] | None) -> None:
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
        side = int(e.side)
        writes.append(
            OrderAcceptedRow(
                e.order_id,
                e.user,
                e.symbol,
                side,
                int(e.order_type),
                int(e.tif),
                e.price,
                e.qty,
                e.quote_budget,
                e.lock_asset,
                e.lock_amount,
                seq,
            )
        )
        writes.append(OrderStatusRow(e.order_id, STATUS_OPEN, 0, seq))
        writes.append(OpenOrderRow(e.user, e.order_id, e.symbol, side, e.price, e.qty, seq))

    def _end(self, writes: list[Row], user: int, order_id: int, status: OrderStatus, seq: int) -> None:
        filled = self.filled.pop(order_id, None)
        self._fill_buckets_written.pop(order_id, None)
        if filled is None:
            # Not accepted in the events this projection has folded. The projector folds
            # from seq 1 or a saved state, so only direct use of Projection gets here.
            filled = -1
        writes.append(OrderStatusRow(order_id, status, filled, seq))
        writes.append(OpenOrderDelete(user, order_id, seq))

    def _trade(self, e: TradeSettled, writes: list[Row] | None) -> None:
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
        maker, taker = e.maker_user, e.taker_user
        maker_order, taker_order = e.maker_order_id, e.taker_order_id
        # The ledger legs, numbered by their place here (the ``leg`` column): user, asset,
        # kind, change of the holding, available and locked after, order id. The fee
        # account's legs exist only when a fee was taken in that asset.
        legs: tuple[tuple[int, str, LedgerKind, int, int, int, int], ...] = (
            (maker, base, KIND_TRADE, maker_base, e.maker_base_available, e.maker_base_locked, maker_order),
            (maker, quote, KIND_TRADE, maker_quote, e.maker_quote_available, e.maker_quote_locked, maker_order),
            (taker, base, KIND_TRADE, taker_base, e.taker_base_available, e.taker_base_locked, taker_order),
            (taker, quote, KIND_TRADE, taker_quote, e.taker_quote_available, e.taker_quote_locked, taker_order),
            (FEE_ACCOUNT_USER, base, KIND_FEE, fee_base, e.fee_base_available, 0, 0),
            (FEE_ACCOUNT_USER, quote, KIND_FEE, fee_quote, e.fee_quote_available, 0, 0),
        )
        ledger = self._ledger
        for leg, (user, asset, kind, change, available, locked, order_id) in enumerate(legs):
            if change or kind != KIND_FEE:
                ledger(writes, user, asset, seq, leg, kind, change, available, locked, symbol, order_id, trade_id)
        trade_bucket = trade_id // BUCKET_SEQS
        maker_side = int(e.maker_side)
        writes.append(
            TradeRow(
                symbol,
                trade_bucket,
                trade_id,
                seq,
                e.engine_seq,
                e.price,
                qty,
                maker_side,
                e.base_amount,
                e.quote_amount,
                maker,
                maker_order,
                e.maker_fee,
                taker,
                taker_order,
                e.taker_fee,
                e.taker_refund,
            )
        )
        self._bucket(writes, SymbolTradeBucketRow(symbol, trade_bucket))
        user_bucket = seq // BUCKET_SEQS
        fill_buckets = self._fill_buckets_written
        for user, order_id, is_maker, side, fee in (
            (maker, maker_order, True, maker_side, e.maker_fee),
            (taker, taker_order, False, 1 - maker_side, e.taker_fee),
        ):
            writes.append(
                OrderFillRow(
                    order_id,
                    trade_bucket,
                    trade_id,
                    symbol,
                    seq,
                    e.engine_seq,
                    user,
                    is_maker,
                    side,
                    e.price,
                    qty,
                    e.base_amount,
                    e.quote_amount,
                    fee,
                )
            )
            if fill_buckets.get(order_id) != trade_bucket:
                fill_buckets[order_id] = trade_bucket
                writes.append(OrderFillBucketRow(order_id, trade_bucket))
            writes.append(
                UserTradeRow(
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
                )
            )
            self._bucket(writes, UserTradeBucketRow(user, user_bucket))
        for order_id, user, done, order_filled in (
            (maker_order, maker, e.maker_done, maker_filled),
            (taker_order, taker, e.taker_done, taker_filled),
        ):
            if done:
                self._end(writes, user, order_id, STATUS_FILLED, seq)
            else:
                writes.append(OrderStatusRow(order_id, STATUS_OPEN, order_filled, seq))

    def _unlocked(self, e: FundsUnlocked, writes: list[Row] | None) -> None:
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

    def engine_output(self, output: EngineOutput, writes: list[Row] | None) -> None:
        """Fold one engine output into the symbol's depth and, if ``writes`` is a list,
        append its rows: the engine's view of the order, and every level it changed."""
        match output:
            case Trade():
                self._depth_trade(output, writes)
            case OrderRested():
                self._depth_rested(output, writes)
                if writes is not None:
                    writes.append(OrderRestedRow(output.order_id, output.qty_remaining, output.seq))
            case OrderCancelled():
                self._depth_cancelled(output, writes)
                if writes is not None:
                    writes.append(OrderEndedRow(output.order_id, output.reason, output.seq))
            case OrderExpired() | OrderRejected():
                # Neither touches the book: only an order that never rested expires or is
                # rejected, and a rejected reuse of a resting order's id leaves it resting.
                # A cancel that lost the race with the order's end (UNKNOWN_ORDER) says
                # nothing about the order, which ended otherwise; nor does a rejected reuse.
                if writes is not None and (
                    not isinstance(output, OrderRejected) or output.reason not in _NOT_AN_ORDER_END
                ):
                    writes.append(OrderEndedRow(output.order_id, output.reason, output.seq))
            case BookOpened():
                # The listing is projected from balance.events (SymbolListed).
                self._depth_of(output.symbol)
            case _:  # pragma: no cover
                raise TypeError(f"not an engine output: {type(output).__name__}")

    def _depth_of(self, symbol: str) -> _Depth:
        depth = self.depth.get(symbol)
        if depth is None:
            depth = self.depth[symbol] = _Depth()
        return depth

    def _level(
        self,
        symbol: str,
        depth: _Depth,
        side: int,
        price: int,
        lots: int,
        orders: int,
        seq: int,
        writes: list[Row] | None,
    ) -> None:
        """Add ``lots`` and ``orders`` (either may be negative) to a level, dropping it when
        no order rests there, and append the level's new row or its delete."""
        levels = depth.levels[side]
        level = levels.get(price)
        if level is None:
            level = levels[price] = [0, 0]
        level[0] += lots
        level[1] += orders
        rank = price if side == 0 else -price
        if level[1] == 0:
            # The callers checked the output against the resting orders first.
            assert level[0] == 0, (symbol, side, price, level)
            del levels[price]
            if writes is not None:
                writes.append(DepthLevelDelete(symbol, side, rank, seq))
            return
        assert level[0] > 0 and level[1] > 0, (symbol, side, price, level)
        if writes is not None:
            writes.append(DepthLevelRow(symbol, side, rank, price, level[0], level[1], seq))

    def _depth_trade(self, t: Trade, writes: list[Row] | None) -> None:
        # Check first: a failing output must leave the fold state as it was.
        depth = self._depth_of(t.symbol)
        orders = depth.orders
        qty = t.qty
        maker = orders.get(t.maker_order_id)
        if maker is None or maker[0] != t.maker_side or maker[1] != t.price or not 0 < qty <= maker[2] or (
            t.maker_done != (qty == maker[2])
        ):
            raise ProjectionError(
                f"trade {t.trade_id} (engine seq {t.seq}) of {qty} at {t.price} against order {t.maker_order_id}, "
                f"which rests as {maker} (side, price, lots; done {t.maker_done})"
            )
        # A taker rests only while it is being repriced (an amend): it gives up quantity at
        # its old level, and its new state follows in OrderRested or OrderCancelled.
        taker = orders.get(t.taker_order_id)
        if taker is not None and (taker[0] == t.maker_side or qty > taker[2] or t.taker_done != (qty == taker[2])):
            raise ProjectionError(f"trade {t.trade_id} (engine seq {t.seq}): repriced taker {t.taker_order_id} "
                                  f"cannot give {qty}")
        for order_id, order in ((t.maker_order_id, maker), (t.taker_order_id, taker)):
            if order is None:
                continue
            order[2] -= qty
            gone = order[2] == 0
            if gone:
                del orders[order_id]
            self._level(t.symbol, depth, order[0], order[1], -qty, -1 if gone else 0, t.seq, writes)

    def _depth_rested(self, r: OrderRested, writes: list[Row] | None) -> None:
        depth = self._depth_of(r.symbol)
        side, price, qty = int(r.side), r.price, r.qty_remaining
        if price <= 0 or qty <= 0:
            raise ProjectionError(f"order {r.order_id} rests with {qty} lots at price {price} (engine seq {r.seq})")
        order = depth.orders.get(r.order_id)
        if order is None:
            depth.orders[r.order_id] = [side, price, qty]
            self._level(r.symbol, depth, side, price, qty, 1, r.seq, writes)
            return
        # An order rests again only by an amend: a new quantity, a new price, or both.
        if order[0] != side:
            raise ProjectionError(f"order {r.order_id} rests again on the other side (engine seq {r.seq})")
        if order[1] == price:
            self._level(r.symbol, depth, side, price, qty - order[2], 0, r.seq, writes)
        else:
            self._level(r.symbol, depth, side, order[1], -order[2], -1, r.seq, writes)
            self._level(r.symbol, depth, side, price, qty, 1, r.seq, writes)
        order[1], order[2] = price, qty

    def _depth_cancelled(self, c: OrderCancelled, writes: list[Row] | None) -> None:
        depth = self._depth_of(c.symbol)
        order = depth.orders.get(c.order_id)
        if order is None:
            return  # a taker cancelled by self-trade prevention before it rested
        if order[2] != c.qty_remaining:
            raise ProjectionError(
                f"cancel of order {c.order_id} with {c.qty_remaining} lots, but {order[2]} rest (engine seq {c.seq})"
            )
        del depth.orders[c.order_id]
        self._level(c.symbol, depth, order[0], order[1], -order[2], -1, c.seq, writes)
