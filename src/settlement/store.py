"""The store interface every projection backend implements, and the queries users make.

A store holds the logical tables of ``settlement.model`` plus two of the projector's own:
``stream_checkpoints`` (per stream: the last seq applied and where to read on) and
``sequence_gaps`` (every gap, conflict or malformed record found, open or resolved).
``commit`` applies a batch of writes and only then moves the stream's checkpoint, so a
checkpoint never covers a write that did not happen.

Queries read partitions newest first, bucket by bucket, using the bucket tables; no
query scans a table except the audit ones (``all_balances``, ``trade_count``, ``dump``),
which ``ledger verify`` and the tests use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import msgspec

from ledger.logs import layout
from settlement.model import TABLES, Row, bucket_of

# Fault kinds (the ``sequence_gaps.kind`` column).
FAULT_GAP = "gap"  # seq > last + 1 (a log starting after seq 1 is one too)
FAULT_CONFLICT = "conflict"  # a seq seen again with a different payload
FAULT_MALFORMED = "malformed"  # a record that does not decode, or contradicts the stream

# A value of a key column (``rows``' partition key and ``before``).
KeyValue = int | str

# How many rows one query page returns at most, whatever the caller asks.
PAGE_ROWS_MAX = 1_000
# Price levels per side a depth query returns by default, and at most: a reader wants
# the top of the book, and a bounded answer keeps one query one small partition read.
DEPTH_LEVELS_DEFAULT = 20
DEPTH_LEVELS_MAX = 100


class Checkpoint(msgspec.Struct, frozen=True):
    """A stream's progress: every event up to ``seq`` is applied; ``next_offset`` is the
    source offset just after the event with that seq."""

    stream: str
    seq: int
    next_offset: int


class SavedState(msgspec.Struct, frozen=True):
    """The projector's fold state of a stream after the event with ``seq``; reading on
    from ``next_offset`` continues it (``settlement.model.Projection.restore``)."""

    stream: str
    seq: int
    next_offset: int
    state: bytes


class Fault(msgspec.Struct, frozen=True):
    """A sequence fault found in a stream. For a gap the missing range is
    ``expected .. received - 1``; for a conflict, ``expected`` is the seq that came again
    with other bytes and ``received`` the last seq taken in when it did; for a malformed
    record, ``expected`` is the seq that was due (``received`` the seq it carried, or -1
    if it did not decode). ``detail`` names the log and offset. ``first_seen_ms`` is the
    wall-clock time of the first detection (metadata, never a key); a later detection of
    the same open fault updates ``received`` and ``detail``, and one at the same place as
    a resolved fault replaces it whole, with its own range, detail and time."""

    stream: str
    expected: int
    kind: str
    received: int
    detail: str
    first_seen_ms: int
    resolved: bool = False

    @property
    def missing(self) -> tuple[int, int] | None:
        """The inclusive range of missing seqs, for a gap."""
        if self.kind != FAULT_GAP:
            return None
        return (self.expected, self.received - 1)


def resolvable(faults: list[Fault], stream: str, applied_seq: int) -> list[Fault]:
    """The stream's open faults that ``applied_seq`` has put behind it: a gap once all
    its missing seqs are applied, a malformed record once the seq it stood for is, a
    conflict once the stream has gone past where it stopped it."""

    def behind(f: Fault) -> bool:
        if f.kind == FAULT_GAP:
            return f.received - 1 <= applied_seq
        if f.kind == FAULT_CONFLICT:
            return f.received < applied_seq
        return f.expected <= applied_seq

    return [f for f in faults if not f.resolved and f.stream == stream and behind(f)]


class StoreError(Exception):
    """A store could not be reached or written; the message names the store."""


class Store(Protocol):
    """A projection backend (SQLite, CQL)."""

    name: str

    def setup(self) -> None:
        """Create the tables if they do not exist (idempotent)."""
        ...

    def checkpoint(self, stream: str) -> Checkpoint | None:
        """The stream's checkpoint, or None if nothing was applied yet."""
        ...

    def commit(self, writes: Sequence[Row], checkpoint: Checkpoint, state: bytes | None = None) -> None:
        """Apply ``writes``, then (only once they all succeeded) store ``checkpoint``, and
        with it ``state``: the projector's fold state at the checkpoint, if given."""
        ...

    def load_state(self, stream: str) -> SavedState | None:
        """The last fold state saved for ``stream``, or None."""
        ...

    def flush(self) -> None:
        """Wait until every commit handed to ``commit`` is written (a store may write
        them in the background); raise the first failure."""
        ...

    def record_fault(self, fault: Fault) -> None:
        """Record (or record again, idempotently) a fault."""
        ...

    def resolve_faults(self, stream: str, applied_seq: int) -> list[Fault]:
        """Mark resolved the stream's open gaps whose missing seqs are all applied now
        (``expected <= applied_seq``); return them."""
        ...

    def faults(self, open_only: bool = True) -> list[Fault]:
        """Faults, oldest stream and seq first."""
        ...

    def rows(
        self, table: str, key: dict[str, KeyValue], limit: int, before: tuple[KeyValue, ...] | None = None
    ) -> list[dict[str, Any]]:
        """Rows of one partition of ``table``, newest first (clustering descending), at
        most ``limit``; with ``before``, only rows whose clustering key is below it."""
        ...

    def scan(self, table: str) -> Iterator[dict[str, Any]]:
        """Every row of ``table`` (audit and tests only: a full scan)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def _clamp(limit: int) -> int:
    if limit <= 0:
        raise ValueError(f"limit {limit} is not positive")
    return min(limit, PAGE_ROWS_MAX)


class Queries:
    """The reads users make, over any ``Store``.

    >>> from settlement.sqlite import SQLiteStore
    >>> q = Queries(SQLiteStore(":memory:"))
    >>> q.balances(1001)
    {}
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def balances(self, user: int) -> dict[str, tuple[int, int]]:
        """A user's (available, locked) per asset."""
        rows = self.store.rows("balances", {"user": user}, PAGE_ROWS_MAX)
        return {r["asset"]: (r["available"], r["locked"]) for r in sorted(rows, key=lambda r: r["asset"])}

    def _paged(
        self,
        buckets_table: str,
        table: str,
        key: dict[str, KeyValue],
        limit: int,
        before: tuple[KeyValue, ...] | None,
        bucket_of_before: int | None,
    ) -> list[dict[str, Any]]:
        limit = _clamp(limit)
        out: list[dict[str, Any]] = []
        for b in self.store.rows(buckets_table, key, PAGE_ROWS_MAX):
            bucket = b["bucket"]
            if bucket_of_before is not None and bucket > bucket_of_before:
                continue
            page_before = before if bucket_of_before == bucket else None
            out.extend(self.store.rows(table, {**key, "bucket": bucket}, limit - len(out), page_before))
            if len(out) >= limit:
                break
        return out

    def ledger(self, user: int, asset: str, limit: int = 100, before_seq: int | None = None) -> list[dict[str, Any]]:
        """A user's balance changes of one asset, newest first; page on with the last
        row's ``seq`` as ``before_seq``."""
        return self._paged(
            "ledger_buckets",
            "balance_ledger",
            {"user": user, "asset": asset},
            limit,
            None if before_seq is None else (before_seq,),
            None if before_seq is None else bucket_of(before_seq),
        )

    def user_trades(self, user: int, limit: int = 100, before_seq: int | None = None) -> list[dict[str, Any]]:
        """A user's trades, newest first."""
        return self._paged(
            "user_trade_buckets",
            "user_trades",
            {"user": user},
            limit,
            None if before_seq is None else (before_seq,),
            None if before_seq is None else bucket_of(before_seq),
        )

    def recent_trades(self, symbol: str, limit: int = 100, before_trade_id: int | None = None) -> list[dict[str, Any]]:
        """A symbol's trades, newest first."""
        return self._paged(
            "symbol_trade_buckets",
            "settled_trades",
            {"symbol": symbol},
            limit,
            None if before_trade_id is None else (before_trade_id,),
            None if before_trade_id is None else bucket_of(before_trade_id),
        )

    def open_orders(self, user: int) -> list[dict[str, Any]]:
        """A user's open orders, newest first."""
        return self.store.rows("open_orders", {"user": user}, PAGE_ROWS_MAX)

    def order_fills(
        self, order_id: int, limit: int = 100, before_trade_id: int | None = None
    ) -> list[dict[str, Any]]:
        """One order's fills, newest first (one row per trade it took part in, maker or
        taker; ``fee`` is what this order paid). Page on with the last row's
        ``trade_id`` as ``before_trade_id``. The fills' ``qty`` add up to the order's
        ``filled_qty``."""
        return self._paged(
            "order_fill_buckets",
            "order_fills",
            {"order_id": order_id},
            limit,
            None if before_trade_id is None else (before_trade_id,),
            None if before_trade_id is None else bucket_of(before_trade_id),
        )

    def depth(self, symbol: str, levels: int = DEPTH_LEVELS_DEFAULT) -> dict[str, Any]:
        """The top ``levels`` price levels of each side of the symbol's book, best first:
        ``{"bids": [...], "asks": [...], "engine_seq": n}``, each level ``{"price",
        "qty", "orders"}`` (ticks, resting lots, resting orders).

        ``engine_seq`` is the symbol's engine stream checkpoint, read before the levels:
        they hold every output up to it. On a store that writes a commit's rows one by one
        (CQL) they may also hold part of the commit after it; SQLite's commits are atomic,
        so there they are exactly as of ``engine_seq``."""
        if not 0 < levels <= DEPTH_LEVELS_MAX:
            raise ValueError(f"depth of {symbol}: levels {levels} is not in 1..{DEPTH_LEVELS_MAX}")
        checkpoint = self.store.checkpoint(layout.output_stream(symbol))
        out: dict[str, Any] = {"engine_seq": checkpoint.seq if checkpoint else 0}
        for name, side in (("bids", 0), ("asks", 1)):
            rows = self.store.rows("depth_levels", {"symbol": symbol, "side": side}, levels)
            found = [{"price": r["price"], "qty": r["qty"], "orders": r["orders"]} for r in rows]
            # Best first (the clustering order); a stored level is never empty.
            assert all(level["qty"] > 0 and level["orders"] > 0 for level in found), (symbol, name, found)
            prices = [level["price"] for level in found]
            assert prices == sorted(prices, reverse=side == 0), (symbol, name, prices)
            out[name] = found
        return out

    def order(self, order_id: int) -> dict[str, Any] | None:
        """One order: as accepted, its status and filled quantity, the engine's view."""
        found = self.store.rows("orders", {"order_id": order_id}, 1)
        return found[0] if found else None


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every projected table as sorted tuples (for comparing two stores)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for name, table in TABLES.items():
        columns = [c.name for c in table.columns]
        rows = [tuple(row.get(c) for c in columns) for row in store.scan(name)]
        out[name] = sorted(rows, key=repr)
    return out
