"""The projection in ScyllaDB or Apache Cassandra, over cassandra-driver (CQL protocol v4).

* Prepared statements only, each marked idempotent: every write is keyed by the event
  and carries absolute values, so the driver (and a restarted projector) may repeat it.
* ``USING TIMESTAMP version`` on every projected write, the version being the seq of the
  event that made it: a re-applied or late write never overwrites a newer one, and an
  open order deleted at seq s is not brought back by a replay of its acceptance (seq < s).
* No lightweight transactions, counters, secondary indexes or materialized views, so the
  same code runs on ScyllaDB with tablets.
* Commits are pipelined: one writer thread writes them in order while the projector
  decodes and maps the next batch; ``flush`` waits for them (the projector flushes at
  the end of every pass, and before anything reads the store back).
* Writes go out in UNLOGGED batches of ``BATCH_ROWS_MAX`` rows (no atomicity is needed:
  each row is idempotent), at most ``in_flight_max`` requests at a time; the stream's
  checkpoint is written only after every write of the commit succeeded.

cassandra-driver is imported only here.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from msgspec.structs import astuple

from settlement.model import ROW_TYPES, TABLES, Delete, Row, Table
from settlement.store import Checkpoint, Fault, KeyValue, SavedState, StoreError, resolvable

# Rows sent together in one UNLOGGED batch (one request). One request per row costs the
# Python driver and the server far more than the rows themselves: measured here, 16-row
# batches gave 28,000 rows/s, 32 rows 35,000, 128 rows 62,000, against 3,700 for one row
# per request. 100 rows of ours are at most about 30 KiB, under the server's batch failure
# threshold (50 KiB by default on Cassandra, 1 MiB on ScyllaDB); Cassandra logs a warning
# for batches over 5 KiB unless batch_size_warn_threshold is raised (our test server's is).
BATCH_ROWS_MAX = 100
# Batches in flight at once from one projector: enough to keep a node's write path busy,
# few enough that a slow node pushes back instead of queueing timeouts.
IN_FLIGHT_MAX = 8
# Commits waiting for the writer thread while the projector prepares the next: the
# projector's decoding and mapping overlap the server's work on the previous commit.
PIPELINE_COMMITS_MAX = 2
# Attempts in all at a batch's writes (they are idempotent) before the commit fails and
# the checkpoint stays where it was.
WRITE_TRIES_MAX = 3
# Per-request timeout.
REQUEST_TIMEOUT_S = 30.0
# Rows a full-table scan (audit) fetches per page.
SCAN_PAGE_ROWS = 5_000
KEYSPACE_DEFAULT = "trading"

_CQL_TYPES = {"bigint": "bigint", "int": "int", "boolean": "boolean", "text": "text", "varint": "varint"}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,47}$")

# Replication: the strategies a keyspace may name, and the shape of a data centre's name.
# Nothing from a caller reaches CREATE KEYSPACE without passing these.
REPLICATION_CLASSES = frozenset(
    {
        "SimpleStrategy",
        "NetworkTopologyStrategy",
        "org.apache.cassandra.locator.SimpleStrategy",
        "org.apache.cassandra.locator.NetworkTopologyStrategy",
    }
)
REPLICATION_FACTOR_MAX = 32
_DATACENTER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

# Connection settings come from the environment, never from a URL or the command line:
# a user and password (PasswordAuthenticator) and TLS (a CA bundle to verify the nodes,
# optionally a client certificate and key).
ENV_USERNAME = "LEDGER_CQL_USERNAME"
ENV_PASSWORD = "LEDGER_CQL_PASSWORD"
ENV_SSL_CA = "LEDGER_CQL_SSL_CA"
ENV_SSL_CERT = "LEDGER_CQL_SSL_CERT"
ENV_SSL_KEY = "LEDGER_CQL_SSL_KEY"


def check_replication(replication: Mapping[str, Any]) -> str:
    """The CQL text of a validated replication map: a known strategy class, and for each
    data centre (or ``replication_factor``) a whole factor in 1..REPLICATION_FACTOR_MAX."""
    strategy = replication.get("class")
    if strategy not in REPLICATION_CLASSES:
        raise ValueError(f"replication class {strategy!r}: use one of {', '.join(sorted(REPLICATION_CLASSES))}")
    parts = [f"'class': '{strategy}'"]
    factors = {k: v for k, v in replication.items() if k != "class"}
    if not factors:
        raise ValueError("replication: no replication_factor or data centre given")
    for key, value in sorted(factors.items()):
        if not isinstance(key, str) or not _DATACENTER.match(key):
            raise ValueError(f"replication: {key!r} is not a data centre name")
        if strategy.endswith("SimpleStrategy") and key != "replication_factor":
            raise ValueError(f"replication: SimpleStrategy takes only replication_factor, not {key!r}")
        factor = int(value) if isinstance(value, str) and value.isdigit() else value
        if type(factor) is not int or not 1 <= factor <= REPLICATION_FACTOR_MAX:
            raise ValueError(f"replication: {key} = {value!r} is not a factor in 1..{REPLICATION_FACTOR_MAX}")
        parts.append(f"'{key}': {factor}")
    return "{" + ", ".join(parts) + "}"


def connection_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The driver's ``auth_provider`` and ``ssl_context`` from the ``LEDGER_CQL_*``
    variables (empty when none is set). A password is never put in an error."""
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    username, password = env.get(ENV_USERNAME), env.get(ENV_PASSWORD)
    if (username is None) != (password is None):
        raise StoreError(f"cql: set both {ENV_USERNAME} and {ENV_PASSWORD}, or neither")
    if username is not None:
        from cassandra.auth import PlainTextAuthProvider

        options["auth_provider"] = PlainTextAuthProvider(username=username, password=password)
    ca, cert, key = env.get(ENV_SSL_CA), env.get(ENV_SSL_CERT), env.get(ENV_SSL_KEY)
    if (cert is None) != (key is None):
        raise StoreError(f"cql: set both {ENV_SSL_CERT} and {ENV_SSL_KEY}, or neither")
    if ca is not None or cert is not None:
        import ssl

        try:
            context = ssl.create_default_context(cafile=ca)
            if cert is not None:
                context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as error:
            raise StoreError(f"cql: TLS settings ({ENV_SSL_CA}, {ENV_SSL_CERT}, {ENV_SSL_KEY}): {error}") from None
        options["ssl_context"] = context
    return options


def _q(name: str) -> str:
    return f'"{name}"'


def _create_table(keyspace: str, table: Table) -> str:
    columns = ", ".join(f"{_q(c.name)} {_CQL_TYPES[c.type]}" for c in table.columns)
    partition = ", ".join(_q(c) for c in table.partition)
    key = f"({partition})" + "".join(f", {_q(c)}" for c in table.clustering)
    sql = f"CREATE TABLE IF NOT EXISTS {keyspace}.{_q(table.name)} ({columns}, PRIMARY KEY ({key}))"
    if table.clustering:
        order = ", ".join(f"{_q(c)} DESC" for c in table.clustering)
        sql += f" WITH CLUSTERING ORDER BY ({order})"
    return sql


class CqlStore:
    """The projection in keyspace ``keyspace`` of a CQL cluster.

    ``replication`` is the keyspace's replication map (default: SimpleStrategy, factor
    1, for one node); ``tablets`` adds ScyllaDB's ``tablets = {'enabled': ...}`` option
    when not None (Cassandra does not know it). The keyspace and tables are created if
    missing; an existing keyspace keeps its settings. With ``create=False`` (a store
    opened only to read) nothing is created: the keyspace must hold a projection.
    ``auth_provider`` and ``ssl_context`` go to the driver (``connection_options`` makes
    them from the environment).
    """

    def __init__(
        self,
        hosts: Sequence[str] = ("127.0.0.1",),
        port: int = 9042,
        keyspace: str = KEYSPACE_DEFAULT,
        replication: dict[str, Any] | None = None,
        tablets: bool | None = None,
        in_flight_max: int = IN_FLIGHT_MAX,
        consistency: str = "LOCAL_QUORUM",
        create: bool = True,
        auth_provider: Any = None,
        ssl_context: Any = None,
    ) -> None:
        if not _NAME.match(keyspace):
            raise ValueError(f"keyspace {keyspace!r}: lower-case letters, digits and _, at most 48")
        if not 1 <= in_flight_max <= 4096:
            raise ValueError(f"in_flight_max {in_flight_max}: 1 to 4096")
        from cassandra import ConsistencyLevel
        from cassandra.cluster import Cluster

        self.name = f"cql://{hosts[0]}:{port}/{keyspace}"
        self.keyspace = keyspace
        self.in_flight_max = in_flight_max
        self._replication = check_replication(replication or {"class": "SimpleStrategy", "replication_factor": 1})
        self._tablets = tablets
        self._consistency = getattr(ConsistencyLevel, consistency)
        try:
            self._cluster = Cluster(
                list(hosts),
                port=port,
                protocol_version=4,
                connect_timeout=10,
                auth_provider=auth_provider,
                ssl_context=ssl_context,
            )
            self._session = self._cluster.connect()
        except Exception as error:  # noqa: BLE001 - the driver raises several unrelated types
            raise StoreError(f"{self.name}: cannot connect: {type(error).__name__}: {error}") from None
        self._session.default_timeout = REQUEST_TIMEOUT_S
        # Per row type: its prepared statement, where its version is among its values, and
        # whether it is a delete.
        self._writes: dict[type[Row], tuple[Any, int | None, bool]] = {}
        self._reads: dict[tuple[str, int], Any] = {}
        # Commits go through one writer thread, in order (see ``commit``).
        self._queue: queue.Queue[tuple[list[Row], Checkpoint, bytes | None] | None] = queue.Queue(
            PIPELINE_COMMITS_MAX
        )
        self._writer: threading.Thread | None = None
        self._failure: StoreError | None = None
        if create:
            self.setup()
        else:
            self._check_projection()
            self._prepare()

    def _check_projection(self) -> None:
        """For a store opened only to read: the keyspace must hold a projection already."""
        existing = self._session.cluster.metadata.keyspaces.get(self.keyspace)
        needed = {*TABLES, "stream_checkpoints", "projector_states", "sequence_gaps"}
        missing = sorted(needed - set(existing.tables if existing is not None else ()))
        if missing:
            self._cluster.shutdown()
            what = "does not exist" if existing is None else f"is not a projection (no table {missing[0]})"
            raise StoreError(f"{self.name}: keyspace {self.keyspace} {what}; nothing was created")

    # -- schema -------------------------------------------------------------------------

    def setup(self) -> None:
        ks = self.keyspace
        sql = f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {self._replication}"
        if self._tablets is not None:
            sql += f" AND tablets = {{'enabled': {'true' if self._tablets else 'false'}}}"
        run = self._session.execute
        run(sql)
        for table in TABLES.values():
            run(_create_table(ks, table))
        run(
            f'CREATE TABLE IF NOT EXISTS {ks}."stream_checkpoints" ("stream" text PRIMARY KEY, "seq" bigint, '
            '"next_offset" bigint)'
        )
        run(
            f'CREATE TABLE IF NOT EXISTS {ks}."projector_states" ("stream" text PRIMARY KEY, "seq" bigint, '
            '"next_offset" bigint, "state" blob)'
        )
        run(
            f'CREATE TABLE IF NOT EXISTS {ks}."sequence_gaps" ("stream" text, "expected" bigint, "kind" text, '
            '"received" bigint, "detail" text, "first_seen_ms" bigint, "resolved" boolean, '
            'PRIMARY KEY (("stream"), "expected", "kind"))'
        )
        self._prepare()

    def _prepare(self) -> None:
        ks = self.keyspace
        prepare = self._session.prepare
        for row_type in ROW_TYPES:
            table = TABLES[row_type.TABLE]
            fields = row_type.__struct_fields__
            if issubclass(row_type, Delete):
                where = " AND ".join(f"{_q(c)} = ?" for c in (*table.partition, *table.clustering))
                cql = f"DELETE FROM {ks}.{_q(table.name)} USING TIMESTAMP ? WHERE {where}"
            else:
                names = ", ".join(_q(c) for c in fields)
                marks = ", ".join("?" for _ in fields)
                cql = f"INSERT INTO {ks}.{_q(table.name)} ({names}) VALUES ({marks}) USING TIMESTAMP ?"
            statement = prepare(cql)
            statement.is_idempotent = True
            statement.consistency_level = self._consistency
            version_at = None if row_type.VERSION is None else fields.index(row_type.VERSION)
            self._writes[row_type] = (statement, version_at, issubclass(row_type, Delete))
        self._checkpoint_write = prepare(
            f'INSERT INTO {ks}."stream_checkpoints" ("stream", "seq", "next_offset") VALUES (?, ?, ?) USING TIMESTAMP ?'
        )
        self._checkpoint_write.consistency_level = self._consistency
        self._checkpoint_write.is_idempotent = True  # versioned by USING TIMESTAMP seq
        self._checkpoint_read = prepare(
            f'SELECT "stream", "seq", "next_offset" FROM {ks}."stream_checkpoints" WHERE "stream" = ?'
        )
        self._checkpoint_read.consistency_level = self._consistency
        self._state_write = prepare(
            f'INSERT INTO {ks}."projector_states" ("stream", "seq", "next_offset", "state") VALUES (?, ?, ?, ?) '
            "USING TIMESTAMP ?"
        )
        self._state_write.consistency_level = self._consistency
        self._state_write.is_idempotent = True
        self._state_read = prepare(
            f'SELECT "stream", "seq", "next_offset", "state" FROM {ks}."projector_states" WHERE "stream" = ?'
        )
        self._state_read.consistency_level = self._consistency
        self._fault_write = prepare(
            f'INSERT INTO {ks}."sequence_gaps" ("stream", "expected", "kind", "received", "detail", '
            '"first_seen_ms", "resolved") VALUES (?, ?, ?, ?, ?, ?, ?)'
        )
        self._fault_reopen = prepare(
            f'UPDATE {ks}."sequence_gaps" SET "received" = ?, "detail" = ?, "resolved" = ? '
            'WHERE "stream" = ? AND "expected" = ? AND "kind" = ?'
        )
        self._fault_resolve = prepare(
            f'UPDATE {ks}."sequence_gaps" SET "resolved" = true WHERE "stream" = ? AND "expected" = ? AND "kind" = ?'
        )
        self._fault_lookup = prepare(
            f'SELECT "resolved" FROM {ks}."sequence_gaps" WHERE "stream" = ? AND "expected" = ? AND "kind" = ?'
        )

    # -- writes -------------------------------------------------------------------------

    def _bound(self, row: Row) -> tuple[Any, tuple[Any, ...]]:
        statement, version_at, is_delete = self._writes[type(row)]
        values = astuple(row)
        # A row without a version field is the same fact whoever writes it: version 0.
        version = 0 if version_at is None else values[version_at]
        if is_delete:
            # The key values, without the version field that follows them.
            return statement, (version, *values[:-1])
        return statement, (*values, version)

    def commit(self, writes: Sequence[Row], checkpoint: Checkpoint, state: bytes | None = None) -> None:
        """Hand the commit to the writer thread and return; it is written (rows, then
        checkpoint, commits in order) while the caller prepares the next one. At most
        ``PIPELINE_COMMITS_MAX`` wait; a failed commit is raised by the next call here or
        by ``flush``, and no later checkpoint is written after it."""
        self._raise_failure()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name=f"{self.name} writer", daemon=True)
            self._writer.start()
        self._queue.put((list(writes), checkpoint, state))

    def flush(self) -> None:
        """Wait until every commit handed over is written; raise the first failure."""
        self._queue.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is None:
            return
        # The writer skips every commit while a failure stands; wait until it has gone
        # through all that were handed over, so none after the failed one is written.
        # Then raise it once and clear it: no checkpoint moved past the failed commit, so
        # a new Projector on this store resumes cleanly.
        self._queue.join()
        failure, self._failure = self._failure, None
        assert failure is not None
        raise failure

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            writes, checkpoint, state = item
            try:
                if self._failure is None:
                    self._commit_now(writes, checkpoint, state)
            except StoreError as error:
                self._failure = error
            except Exception as error:  # noqa: BLE001 - surfaced to the projector, not lost
                self._failure = StoreError(f"{self.name}: commit of {checkpoint.stream} failed: {error!r}")
            finally:
                self._queue.task_done()

    def _commit_now(self, writes: Sequence[Row], checkpoint: Checkpoint, state: bytes | None) -> None:
        from cassandra.concurrent import execute_concurrent
        from cassandra.query import BatchStatement, BatchType

        bound = [self._bound(w) for w in writes]
        pending: list[tuple[Any, tuple[Any, ...]]] = []
        for start in range(0, len(bound), BATCH_ROWS_MAX):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=self._consistency)
            batch.is_idempotent = True
            for statement, params in bound[start : start + BATCH_ROWS_MAX]:
                batch.add(statement, params)
            pending.append((batch, ()))
        errors: list[Any] = []
        for _attempt in range(WRITE_TRIES_MAX):
            if not pending:
                break
            results = execute_concurrent(
                self._session, pending, concurrency=self.in_flight_max, raise_on_first_error=False
            )
            errors = [result for ok, result in results if not ok]
            pending = [pending[i] for i, (ok, _result) in enumerate(results) if not ok]
        if pending:
            raise StoreError(
                f"{self.name}: {len(pending)} write batches for {checkpoint.stream} up to seq {checkpoint.seq} "
                f"failed after {WRITE_TRIES_MAX} tries; first error: {errors[0]!r}"
            )
        try:
            self._session.execute(
                self._checkpoint_write,
                (checkpoint.stream, checkpoint.seq, checkpoint.next_offset, checkpoint.seq),
            )
            if state is not None:
                self._session.execute(
                    self._state_write,
                    (checkpoint.stream, checkpoint.seq, checkpoint.next_offset, state, checkpoint.seq),
                )
        except Exception as error:  # noqa: BLE001
            raise StoreError(
                f"{self.name}: checkpoint of {checkpoint.stream} at seq {checkpoint.seq}: {error}"
            ) from None

    def load_state(self, stream: str) -> SavedState | None:
        self.flush()
        row = self._session.execute(self._state_read, (stream,)).one()
        return None if row is None else SavedState(row[0], row[1], row[2], bytes(row[3]))

    def checkpoint(self, stream: str) -> Checkpoint | None:
        self.flush()
        row = self._session.execute(self._checkpoint_read, (stream,)).one()
        return None if row is None else Checkpoint(row[0], row[1], row[2])

    def record_fault(self, fault: Fault) -> None:
        # A later detection of an open fault updates its range and keeps the first
        # detection's time; one that follows a resolved fault is a new fault and replaces
        # it whole (its own range, detail and time).
        found = self._session.execute(self._fault_lookup, (fault.stream, fault.expected, fault.kind)).one()
        if found is None or found[0]:
            self._session.execute(
                self._fault_write,
                (
                    fault.stream,
                    fault.expected,
                    fault.kind,
                    fault.received,
                    fault.detail,
                    fault.first_seen_ms,
                    fault.resolved,
                ),
            )
        else:
            self._session.execute(
                self._fault_reopen,
                (fault.received, fault.detail, fault.resolved, fault.stream, fault.expected, fault.kind),
            )

    def resolve_faults(self, stream: str, applied_seq: int) -> list[Fault]:
        found = resolvable(self.faults(open_only=True), stream, applied_seq)
        for f in found:
            self._session.execute(self._fault_resolve, (f.stream, f.expected, f.kind))
        return found

    def faults(self, open_only: bool = True) -> list[Fault]:
        self.flush()
        rows = self._session.execute(
            f'SELECT "stream", "expected", "kind", "received", "detail", "first_seen_ms", "resolved" '
            f'FROM {self.keyspace}."sequence_gaps"'
        )
        out = [Fault(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]
        if open_only:
            out = [f for f in out if not f.resolved]
        return sorted(out, key=lambda f: (f.stream, f.expected, f.kind))

    # -- reads --------------------------------------------------------------------------

    def rows(
        self, table: str, key: dict[str, KeyValue], limit: int, before: tuple[KeyValue, ...] | None = None
    ) -> list[dict[str, Any]]:
        self.flush()  # a read sees every commit handed over before it
        t = TABLES[table]
        width = len(before) if before else 0
        statement = self._reads.get((table, width))
        if statement is None:
            names = ", ".join(_q(c.name) for c in t.columns)
            where = " AND ".join(f"{_q(c)} = ?" for c in t.partition)
            if width:
                cols = t.clustering[:width]
                where += f" AND ({', '.join(_q(c) for c in cols)}) < ({', '.join('?' for _ in cols)})"
            statement = self._session.prepare(f"SELECT {names} FROM {self.keyspace}.{_q(table)} WHERE {where} LIMIT ?")
            statement.consistency_level = self._consistency
            self._reads[(table, width)] = statement
        params = [key[c] for c in t.partition]
        if width and before:
            params.extend(before)
        params.append(limit)
        columns = [c.name for c in t.columns]
        return [dict(zip(columns, row, strict=True)) for row in self._session.execute(statement, params)]

    def scan(self, table: str) -> Iterator[dict[str, Any]]:
        from cassandra.query import SimpleStatement

        self.flush()

        t = TABLES[table]
        columns = [c.name for c in t.columns]
        names = ", ".join(_q(c) for c in columns)
        statement = SimpleStatement(f"SELECT {names} FROM {self.keyspace}.{_q(table)}", fetch_size=SCAN_PAGE_ROWS)
        statement.consistency_level = self._consistency
        for row in self._session.execute(statement):
            yield dict(zip(columns, row, strict=True))

    def drop(self) -> None:
        """Drop the whole keyspace (tests, and rebuilding a projection from scratch)."""
        self._session.execute(f"DROP KEYSPACE IF EXISTS {self.keyspace}")

    def close(self) -> None:
        """Write what is pending (raising a failure), then disconnect."""
        try:
            if self._writer is not None:
                self.flush()
        finally:
            if self._writer is not None:
                self._queue.put(None)
                self._writer.join()
                self._writer = None
            self._cluster.shutdown()
