"""The embedded projection store: SQLite, the same logical tables as the CQL store.

A commit is one SQLite transaction holding the batch's rows and the stream's checkpoint,
so after a crash the checkpoint and the rows always agree. The database runs in WAL mode
with ``synchronous=NORMAL``: a process crash loses nothing committed; a power loss may
lose the last commits, which the projector then re-applies from the log (every write is
idempotent).

Amounts (``varint``) are stored as decimal TEXT: SQLite integers stop at 64 bits and
amounts go to 2**127 - 1. Versioned writes are upserts guarded by their version column,
so an older write never overwrites a newer one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from msgspec.structs import astuple

from settlement.model import ROW_TYPES, TABLES, Delete, Row, Table, VersionedRow
from settlement.store import Checkpoint, Fault, KeyValue, SavedState, StoreError, resolvable

_SQL_TYPES = {"bigint": "INTEGER", "int": "INTEGER", "boolean": "INTEGER", "text": "TEXT", "varint": "TEXT"}

# How long a writer waits for another connection's lock before failing.
BUSY_TIMEOUT_MS = 10_000


def _q(name: str) -> str:
    return f'"{name}"'


# Tables some write deletes from. SQLite has no write timestamps, so a delete leaves a
# tombstone (the row with ``_deleted_at`` = the delete's version) that an older write
# cannot bring back, exactly as a CQL tombstone with its timestamp does. Reads skip
# tombstones; they are kept (one small row per deleted key).
_TOMBSTONED = frozenset(t.TABLE for t in ROW_TYPES if issubclass(t, Delete))
_DELETED = '"_deleted_at"'


def _create_table(table: Table) -> str:
    columns = ", ".join(f"{_q(c.name)} {_SQL_TYPES[c.type]}" for c in table.columns)
    if table.name in _TOMBSTONED:
        columns += f", {_DELETED} INTEGER"
    key = ", ".join(_q(c) for c in (*table.partition, *table.clustering))
    return f"CREATE TABLE IF NOT EXISTS {_q(table.name)} ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID"


class _Statement:
    __slots__ = ("sql", "varint_positions")

    def __init__(self, sql: str, varint_positions: tuple[int, ...]) -> None:
        self.sql = sql
        # Where the row's amounts are among its values (stored as decimal TEXT).
        self.varint_positions = varint_positions


def _statement(row_type: type[Row]) -> _Statement:
    """The statement that writes a row of ``row_type``; its parameters are the row's
    values in field order."""
    table = TABLES[row_type.TABLE]
    types = {c.name: c.type for c in table.columns}
    key = (*table.partition, *table.clustering)
    fields = row_type.__struct_fields__
    varints = tuple(i for i, f in enumerate(fields) if types.get(f) == "varint")
    t = _q(table.name)
    conflict = f"ON CONFLICT ({', '.join(_q(c) for c in key)})"
    if issubclass(row_type, Delete):
        # The tombstone takes the delete's version, the field after the key values. Like a
        # CQL tombstone it removes only what is older: a key written again after it was
        # deleted (a depth level that empties and fills again) stays when the older delete
        # is re-applied. The live row's version is the column of the table's versioned row.
        (version,) = {w.VERSION for w in ROW_TYPES if w.TABLE == row_type.TABLE and issubclass(w, VersionedRow)}
        v = _q(version)
        names = ", ".join(_q(c) for c in key)
        marks = ", ".join("?" for _ in key)
        sql = (
            f"INSERT INTO {t} ({names}, {_DELETED}) VALUES ({marks}, ?) {conflict} DO UPDATE SET "
            f"{_DELETED} = excluded.{_DELETED} WHERE ({t}.{_DELETED} IS NULL OR excluded.{_DELETED} > {t}.{_DELETED}) "
            f"AND ({t}.{v} IS NULL OR excluded.{_DELETED} > {t}.{v})"
        )
        return _Statement(sql, varints)
    names = ", ".join(_q(c) for c in fields)
    marks = ", ".join("?" for _ in fields)
    updates = ", ".join(f"{_q(c)} = excluded.{_q(c)}" for c in fields if c not in key)
    sql = f"INSERT INTO {t} ({names}) VALUES ({marks}) {conflict} "
    if not updates:
        sql += "DO NOTHING"
    elif issubclass(row_type, VersionedRow):
        v = _q(row_type.VERSION)
        newer = f"(excluded.{v} >= {t}.{v} OR {t}.{v} IS NULL)"
        if table.name in _TOMBSTONED:
            # A write newer than the row's delete brings it back; an older one does not.
            sql += (
                f"DO UPDATE SET {updates}, {_DELETED} = NULL WHERE {newer} AND "
                f"({t}.{_DELETED} IS NULL OR excluded.{v} > {t}.{_DELETED})"
            )
        else:
            sql += f"DO UPDATE SET {updates} WHERE {newer}"
    else:
        # An ImmutableRow: re-writing it writes the same values.
        assert table.name not in _TOMBSTONED
        sql += f"DO UPDATE SET {updates}"
    return _Statement(sql, varints)


class SQLiteStore:
    """The projection in one SQLite file (``":memory:"`` for a throwaway one).

    >>> store = SQLiteStore(":memory:")
    >>> store.checkpoint("balance.events") is None
    True
    """

    def __init__(self, path: str | Path) -> None:
        self.name = f"sqlite:{path}"
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as error:
            raise StoreError(f"{self.name}: cannot open: {error}") from None
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._statements = {row_type: _statement(row_type) for row_type in ROW_TYPES}
        self.setup()

    def setup(self) -> None:
        db = self._db
        for table in TABLES.values():
            db.execute(_create_table(table))
        db.execute(
            'CREATE TABLE IF NOT EXISTS "stream_checkpoints" ("stream" TEXT PRIMARY KEY, "seq" INTEGER, '
            '"next_offset" INTEGER) WITHOUT ROWID'
        )
        db.execute(
            'CREATE TABLE IF NOT EXISTS "projector_states" ("stream" TEXT PRIMARY KEY, "seq" INTEGER, '
            '"next_offset" INTEGER, "state" BLOB) WITHOUT ROWID'
        )
        db.execute(
            'CREATE TABLE IF NOT EXISTS "sequence_gaps" ("stream" TEXT, "expected" INTEGER, "kind" TEXT, '
            '"received" INTEGER, "detail" TEXT, "first_seen_ms" INTEGER, "resolved" INTEGER, '
            'PRIMARY KEY ("stream", "expected", "kind")) WITHOUT ROWID'
        )

    def checkpoint(self, stream: str) -> Checkpoint | None:
        row = self._db.execute(
            'SELECT "stream", "seq", "next_offset" FROM "stream_checkpoints" WHERE "stream" = ?', (stream,)
        ).fetchone()
        return None if row is None else Checkpoint(*row)

    def load_state(self, stream: str) -> SavedState | None:
        row = self._db.execute(
            'SELECT "stream", "seq", "next_offset", "state" FROM "projector_states" WHERE "stream" = ?', (stream,)
        ).fetchone()
        return None if row is None else SavedState(row[0], row[1], row[2], bytes(row[3]))

    def commit(self, writes: Sequence[Row], checkpoint: Checkpoint, state: bytes | None = None) -> None:
        db = self._db
        statements = self._statements
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for row in writes:
                    st = statements[type(row)]
                    values = astuple(row)
                    if st.varint_positions:
                        text = list(values)
                        for i in st.varint_positions:
                            text[i] = str(text[i])
                        db.execute(st.sql, text)
                    else:
                        db.execute(st.sql, values)
                db.execute(
                    'INSERT INTO "stream_checkpoints" ("stream", "seq", "next_offset") VALUES (?, ?, ?) '
                    'ON CONFLICT ("stream") DO UPDATE SET "seq" = excluded."seq", '
                    '"next_offset" = excluded."next_offset" '
                    'WHERE excluded."seq" >= "stream_checkpoints"."seq"',
                    (checkpoint.stream, checkpoint.seq, checkpoint.next_offset),
                )
                if state is not None:
                    db.execute(
                        'INSERT INTO "projector_states" VALUES (?, ?, ?, ?) ON CONFLICT ("stream") DO UPDATE SET '
                        '"seq" = excluded."seq", "next_offset" = excluded."next_offset", "state" = excluded."state" '
                        'WHERE excluded."seq" >= "projector_states"."seq"',
                        (checkpoint.stream, checkpoint.seq, checkpoint.next_offset, state),
                    )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as error:
            raise StoreError(
                f"{self.name}: commit for {checkpoint.stream} up to seq {checkpoint.seq}: {error}"
            ) from None

    def flush(self) -> None:
        """Nothing to wait for: a commit is written when ``commit`` returns."""

    def record_fault(self, fault: Fault) -> None:
        # A later detection of an open fault (a retry, a restart, a partly repaired log)
        # updates its range and keeps the first detection's time; one that follows a
        # resolved fault is a new fault and replaces it whole.
        self._db.execute(
            'INSERT INTO "sequence_gaps" VALUES (?, ?, ?, ?, ?, ?, ?) '
            'ON CONFLICT ("stream", "expected", "kind") DO UPDATE SET "received" = excluded."received", '
            '"detail" = excluded."detail", "first_seen_ms" = CASE WHEN "resolved" THEN '
            'excluded."first_seen_ms" ELSE "first_seen_ms" END, "resolved" = excluded."resolved"',
            (
                fault.stream,
                fault.expected,
                fault.kind,
                fault.received,
                fault.detail,
                fault.first_seen_ms,
                int(fault.resolved),
            ),
        )

    def resolve_faults(self, stream: str, applied_seq: int) -> list[Fault]:
        found = resolvable(self.faults(open_only=True), stream, applied_seq)
        for f in found:
            self._db.execute(
                'UPDATE "sequence_gaps" SET "resolved" = 1 WHERE "stream" = ? AND "expected" = ? AND "kind" = ?',
                (f.stream, f.expected, f.kind),
            )
        return found

    def faults(self, open_only: bool = True) -> list[Fault]:
        sql = 'SELECT * FROM "sequence_gaps"'
        if open_only:
            sql += ' WHERE "resolved" = 0'
        rows = self._db.execute(sql + ' ORDER BY "stream", "expected", "kind"').fetchall()
        return [Fault(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

    def _decode_row(self, table: Table, row: Sequence[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column, value in zip(table.columns, row, strict=True):
            if value is not None:
                if column.type == "varint":
                    value = int(value)
                elif column.type == "boolean":
                    value = bool(value)
            out[column.name] = value
        return out

    def rows(
        self, table: str, key: dict[str, KeyValue], limit: int, before: tuple[KeyValue, ...] | None = None
    ) -> list[dict[str, Any]]:
        t = TABLES[table]
        names = ", ".join(_q(c.name) for c in t.columns)
        where = [f"{_q(c)} = ?" for c in t.partition]
        params: list[Any] = [key[c] for c in t.partition]
        if before:
            cols = t.clustering[: len(before)]
            where.append(f"({', '.join(_q(c) for c in cols)}) < ({', '.join('?' for _ in cols)})")
            params.extend(before)
        if table in _TOMBSTONED:
            where.append(f"{_DELETED} IS NULL")
        order = ", ".join(f"{_q(c)} DESC" for c in t.clustering)
        sql = f"SELECT {names} FROM {_q(table)} WHERE {' AND '.join(where)}"
        if order:
            sql += f" ORDER BY {order}"
        sql += " LIMIT ?"
        params.append(limit)
        return [self._decode_row(t, r) for r in self._db.execute(sql, params)]

    def scan(self, table: str) -> Iterator[dict[str, Any]]:
        t = TABLES[table]
        names = ", ".join(_q(c.name) for c in t.columns)
        live = f" WHERE {_DELETED} IS NULL" if table in _TOMBSTONED else ""
        for row in self._db.execute(f"SELECT {names} FROM {_q(table)}{live}"):
            yield self._decode_row(t, row)

    def close(self) -> None:
        self._db.close()


__all__ = ["SQLiteStore"]
