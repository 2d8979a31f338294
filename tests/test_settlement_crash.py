"""Crash recovery of the projector: kill -9 (a separate process) at random points while it
projects a workload of over 20,000 trades, restart it each time; the tables must then
equal those of an uninterrupted run, row for row, and `ledger verify` must find no
difference. Run on SQLite and on the real Cassandra."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ledger.app.demo import run_demo
from ledger.logs.file import FsyncPolicy
from settlement import Projector, dump, file_sources
from settlement.sqlite import SQLiteStore
from support import CASSANDRA_PORT

pytestmark = pytest.mark.slow

# The demo workload with this many orders (seed 42) settles 20,171 trades.
ORDERS = 36_000
TRADES_MIN = 20_000
KILLS = 4
# How long one run may go before the test kills it anyway (a hung projector fails below).
KILL_WAIT_S_MAX = 120


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[tuple[Any, ...]]]]:
    """The logs of the workload, and the tables of an uninterrupted projection of them."""
    root = tmp_path_factory.mktemp("settlement-crash") / "logs"
    summary = run_demo(root, orders=ORDERS, seed=42, progress=False, fsync=FsyncPolicy.NEVER)
    assert summary.checks_ok and summary.trades >= TRADES_MIN
    reference = SQLiteStore(":memory:")
    sources = file_sources(str(root))
    assert Projector(reference, sources).run().ok
    for source in sources:
        source.log.close()
    return root, dump(reference)


def project_command(root: Path, store_url: str) -> list[str]:
    # A saved fold state every 5,000 events: restarts begin from one, or from the start.
    return [
        sys.executable,
        "-m",
        "ledger.app.cli",
        "project",
        "--log",
        str(root),
        "--store",
        store_url,
        "--json",
        "--state-every",
        "5000",
    ]


def kill_repeatedly(root: Path, store_url: str, open_store: Any, rng: random.Random) -> list[int]:
    """Start the projector and SIGKILL it once its checkpoint passes a random seq (plus a
    random pause, so kills land between a batch's writes and its checkpoint too); do
    that KILLS times. Returns the balance stream's checkpoint after each kill."""
    final_seq = sum(1 for _ in _events(root))
    targets = sorted(rng.randrange(1_000, final_seq - 1_000) for _ in range(KILLS))
    seen = []
    for target in targets:
        process = subprocess.Popen(project_command(root, store_url), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + KILL_WAIT_S_MAX
        store = None
        while process.poll() is None and time.monotonic() < deadline:
            try:
                store = store or open_store()
                checkpoint = store.checkpoint("balance.events")
            except Exception:  # noqa: BLE001 - the schema may not exist yet
                checkpoint = None
            if checkpoint is not None and checkpoint.seq >= target:
                time.sleep(rng.uniform(0.0, 0.2))
                break
            time.sleep(0.02)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        store = store or open_store()
        checkpoint = store.checkpoint("balance.events")
        store.close()
        seen.append(checkpoint.seq if checkpoint else 0)
    return seen


def _events(root: Path) -> Any:
    from ledger.logs.base import scan
    from ledger.logs.file import FileLog

    with FileLog(root / "balance.events", readonly=True) as log:
        for batch in scan(log):
            yield from batch.values


def finish_and_check(root: Path, store_url: str, open_store: Any, reference: dict, seen: list[int]) -> None:
    final = subprocess.run(project_command(root, store_url), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    balance = msgspec.json.decode(final.stdout)["streams"][0]
    assert balance["restored_from_seq"] > 0, "the last restart should have begun from a saved state"
    store = open_store()
    try:
        last = store.checkpoint("balance.events")
        assert last is not None
        # The kills landed while the projection was under way, not before or after it.
        assert sum(1 for s in seen if 0 < s < last.seq) >= KILLS - 1, f"checkpoints at the kills: {seen}"
        assert dump(store) == reference
        assert store.faults(open_only=False) == []
    finally:
        store.close()
    verify = subprocess.run(
        [sys.executable, "-m", "ledger.app.cli", "verify", "--log", str(root), "--store", store_url],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "verify:       ok" in verify.stdout


@dataclass(frozen=True)
class ProjectionStore:
    """An empty projection store of one backend: its URL for the command line, how to open
    it from the test, and the seed of the kills aimed at it."""

    url: str
    open: Callable[[], Any]
    kills_seed: int


@pytest.fixture(params=["sqlite", pytest.param("cql", marks=pytest.mark.cassandra)])
def projection_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProjectionStore]:
    if request.param == "sqlite":
        path = tmp_path / "projection.db"
        yield ProjectionStore(f"sqlite:{path}", lambda: SQLiteStore(path), kills_seed=5)
        return
    request.getfixturevalue("cassandra_session")  # skips (and so fails CI) if down
    from settlement.cql import CqlStore

    keyspace = f"crash_{uuid.uuid4().hex[:12]}"

    def open_store() -> CqlStore:
        return CqlStore(("127.0.0.1",), CASSANDRA_PORT, keyspace)

    open_store().close()  # create the schema once, so the first kill lands in the writes
    try:
        yield ProjectionStore(f"cql://127.0.0.1:{CASSANDRA_PORT}/{keyspace}", open_store, kills_seed=6)
    finally:
        store = open_store()
        store.drop()
        store.close()


def test_projector_killed_at_random_points_equals_an_uninterrupted_run(
    workload, projection_store: ProjectionStore
) -> None:
    root, reference = workload
    store = projection_store
    seen = kill_repeatedly(root, store.url, store.open, random.Random(store.kills_seed))
    finish_and_check(root, store.url, store.open, reference, seen)
