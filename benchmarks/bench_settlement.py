"""The settlement projector: file logs into Cassandra and into SQLite, and the lag while
following a live log.

    python benchmarks/bench_settlement.py [--trades 200000] [--cql 127.0.0.1:9042] [--no-cql]
                                          [--baseline-rows 200000] [--follow-seconds 10] [--json]

1. Makes the logs: the demo workload (seed 42) with enough orders for ``--trades`` trades.
2. Projects them into a fresh SQLite file and a fresh Cassandra keyspace (``ledger
   project`` in-process), and reports trades/s, events/s and rows/s.
3. The ceiling, in the same run: the same rows (the projector's own writes, first
   ``--baseline-rows`` of them) inserted into another fresh keyspace by plain
   cassandra-driver code: one prepared INSERT per row, ``execute_concurrent`` with 128
   in flight; and the same rows in unlogged batches of the store's size. Rates are rows/s,
   so a sample gives the ceiling without taking an hour.
4. Lag: a writer thread appends balance.events at ``--follow-rate`` events/s (batches of
   100) while the projector follows into SQLite; the lag of a batch is the time from its
   append to the commit whose checkpoint covers it. Reports p50 and p99.

Targets (issue): at least 20,000 trades/s into Cassandra, and at least 70% of the plain
concurrent insert's rate.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ledger.app.demo import run_demo
from ledger.logs.base import scan
from ledger.logs.file import FileLog, FsyncPolicy
from ledger.protocol.codec import EVENTS, OUTPUTS
from settlement.model import Projection, Row
from settlement.projector import BALANCE, Projector, Source, file_sources
from settlement.sqlite import SQLiteStore
from settlement.store import Checkpoint

# Orders of the demo workload per settled trade (measured: 36,000 orders, 20,171 trades).
ORDERS_PER_TRADE = 1.79


def make_logs(root: Path, trades: int) -> dict[str, Any]:
    started = time.perf_counter()
    summary = run_demo(root, orders=int(trades * ORDERS_PER_TRADE), seed=42, progress=False, fsync=FsyncPolicy.NEVER)
    return {
        "trades": summary.trades,
        "balance_events": summary.events,
        "engine_outputs": summary.engine_outputs,
        "seconds": round(time.perf_counter() - started, 2),
    }


def all_writes(root: Path) -> list[Row]:
    projection = Projection()
    writes: list[Row] = []
    for source in file_sources(str(root)):
        for batch in scan(source.log):
            for raw in batch.values:
                if source.kind == BALANCE:
                    projection.balance_event(EVENTS.decode(raw), writes)
                else:
                    projection.engine_output(OUTPUTS.decode(raw), writes)
        source.log.close()
    return writes


def project(store: Any, root: Path, logs: dict[str, Any], rows: int) -> dict[str, Any]:
    sources = file_sources(str(root))
    started = time.perf_counter()
    report = Projector(store, sources).run()
    seconds = time.perf_counter() - started
    for source in sources:
        source.log.close()
    events = logs["balance_events"] + logs["engine_outputs"]
    return {
        "ok": report.ok,
        "seconds": round(seconds, 2),
        "trades_per_s": round(logs["trades"] / seconds),
        "events_per_s": round(events / seconds),
        "rows_per_s": round(rows / seconds),
    }


def cql_baselines(host: str, port: int, writes: list[Row]) -> dict[str, Any]:
    from cassandra.concurrent import execute_concurrent
    from cassandra.query import BatchStatement, BatchType

    from settlement.cql import BATCH_ROWS_MAX, CqlStore

    out: dict[str, Any] = {"rows": len(writes)}
    for label in ("plain_concurrent", "plain_batched"):
        store = CqlStore((host,), port, f"bench_{uuid.uuid4().hex[:10]}")
        bound = [store._bound(w) for w in writes]  # the very statements and values
        started = time.perf_counter()
        if label == "plain_concurrent":
            execute_concurrent(store._session, bound, concurrency=128, raise_on_first_error=True)
        else:
            batches = []
            for start in range(0, len(bound), BATCH_ROWS_MAX):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for statement, params in bound[start : start + BATCH_ROWS_MAX]:
                    batch.add(statement, params)
                batches.append((batch, ()))
            execute_concurrent(store._session, batches, concurrency=store.in_flight_max, raise_on_first_error=True)
        seconds = time.perf_counter() - started
        out[label] = {"seconds": round(seconds, 2), "rows_per_s": round(len(writes) / seconds)}
        store.drop()
        store.close()
    return out


class _TimedStore:
    """Wraps a store to note when each checkpoint was committed."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.commits: list[tuple[int, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def commit(self, writes: Sequence[Row], checkpoint: Checkpoint, state: bytes | None = None) -> None:
        self.store.commit(writes, checkpoint, state)
        self.commits.append((checkpoint.seq, time.perf_counter()))


def follow_lag(root: Path, rate: int, seconds: float) -> dict[str, Any]:
    source = FileLog(root / "balance.events", readonly=True)
    records = [raw for batch in scan(source) for raw in batch.values]
    source.close()
    batch_events = 100
    total = min(len(records), int(rate * seconds))
    with tempfile.TemporaryDirectory() as tmp:
        live = FileLog(Path(tmp) / "live", fsync=FsyncPolicy.NEVER)
        store = _TimedStore(SQLiteStore(Path(tmp) / "follow.db"))
        projector = Projector(store, [Source("balance.events", live, BALANCE)], batch_events=2_000)
        appended: list[tuple[int, float]] = []

        def writer() -> None:
            started = time.perf_counter()
            for start in range(0, total, batch_events):
                due = started + start / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                live.append(records[start : start + batch_events])
                appended.append((min(start + batch_events, total), time.perf_counter()))
            time.sleep(0.5)
            projector.stop()

        thread = threading.Thread(target=writer)
        thread.start()
        projector.run(follow=True, max_seconds=seconds + 30)
        thread.join()
        live.close()
    lags = []
    commits = store.commits
    j = 0
    for last_seq, at in appended:
        while j < len(commits) and commits[j][0] < last_seq:
            j += 1
        if j == len(commits):
            break
        lags.append((commits[j][1] - at) * 1000)
    lags.sort()
    return {
        "rate_events_per_s": rate,
        "events": total,
        "batches_measured": len(lags),
        "lag_ms_p50": round(statistics.median(lags), 1),
        "lag_ms_p99": round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 1),
        "lag_ms_max": round(lags[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trades", type=int, default=200_000)
    parser.add_argument("--cql", default="127.0.0.1:9042", help="HOST:PORT of Cassandra or ScyllaDB")
    parser.add_argument("--no-cql", action="store_true", help="SQLite and lag only")
    parser.add_argument("--baseline-rows", type=int, default=200_000, help="rows for the plain-driver ceiling")
    parser.add_argument("--follow-rate", type=int, default=5_000, help="events/s appended while following")
    parser.add_argument("--follow-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "logs"
        result["logs"] = logs = make_logs(root, args.trades)
        writes = all_writes(root)
        result["rows"] = len(writes)
        sqlite = SQLiteStore(Path(tmp) / "bench.db")
        result["sqlite"] = project(sqlite, root, logs, len(writes))
        sqlite.close()
        if not args.no_cql:
            from settlement.cql import CqlStore

            host, port = args.cql.rsplit(":", 1)
            store = CqlStore((host,), int(port), f"bench_{uuid.uuid4().hex[:10]}")
            result["cql"] = project(store, root, logs, len(writes))
            store.drop()
            store.close()
            result["cql_ceiling"] = cql_baselines(host, int(port), writes[: args.baseline_rows])
            ours = result["cql"]["rows_per_s"]
            for label in ("plain_concurrent", "plain_batched"):
                ceiling = result["cql_ceiling"][label]
                ceiling["ours_over_it"] = round(ours / ceiling["rows_per_s"], 2)
        result["follow_sqlite"] = follow_lag(root, args.follow_rate, args.follow_seconds)
    if args.json:
        print(msgspec.json.encode(result).decode())
        return
    logs = result["logs"]
    print(f"logs: {logs['trades']:,} trades, {logs['balance_events']:,} balance events, "
          f"{logs['engine_outputs']:,} engine outputs -> {result['rows']:,} rows ({logs['seconds']} s to make)")
    for name in ("sqlite", "cql"):
        if name in result:
            r = result[name]
            print(f"{name:>7}: {r['trades_per_s']:>8,} trades/s  {r['events_per_s']:>8,} events/s  "
                  f"{r['rows_per_s']:>8,} rows/s  ({r['seconds']} s, ok={r['ok']})")
    if "cql_ceiling" in result:
        c = result["cql_ceiling"]
        for label in ("plain_concurrent", "plain_batched"):
            print(f"ceiling {label}: {c[label]['rows_per_s']:,} rows/s over {c['rows']:,} rows; "
                  f"projector / it = {c[label]['ours_over_it']}")
    f = result["follow_sqlite"]
    print(f"follow (SQLite, {f['rate_events_per_s']:,} events/s appended): lag p50 {f['lag_ms_p50']} ms, "
          f"p99 {f['lag_ms_p99']} ms, max {f['lag_ms_max']} ms over {f['batches_measured']} batches")
    print("targets: 20,000 trades/s into Cassandra; at least 0.70 of the plain concurrent insert")


if __name__ == "__main__":
    main()
