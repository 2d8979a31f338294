"""``scripts/pipeline.sh``: up starts the three services against the suite's Kafka and
Cassandra (a topic prefix and a keyspace of its own), ``ledger load`` feeds them,
``ledger verify`` passes on the projection with every command answered, and down stops
every process it started. A finalizer runs ``down`` whatever happens, and every wait is
bounded, so a failure never leaves a service running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.app.streams import KafkaStreams
from support import CASSANDRA_PORT, KAFKA_BOOTSTRAP

pytestmark = [pytest.mark.kafka, pytest.mark.cassandra]

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("ubscore", "engine", "project")
# Bounds that only turn a hang into a failure.
SCRIPT_S_MAX = 120
QUIET_S_MAX = 180
# The streams' ends unchanged this long: the services are done with the load.
QUIET_S = 3.0


class Deployment:
    def __init__(self, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:10]
        self.prefix = f"plsh-{tag}-"
        self.keyspace = f"plsh_{tag}"
        self.store = f"cql://127.0.0.1:{CASSANDRA_PORT}/{self.keyspace}"
        self.state = tmp_path / "pipeline"
        self.env = dict(os.environ)
        self.env.update(
            PIPELINE_TOPIC_PREFIX=self.prefix,
            PIPELINE_STORE=self.store,
            PIPELINE_KAFKA=KAFKA_BOOTSTRAP,
            PIPELINE_STATE=str(self.state),
            PIPELINE_STOP_WAIT_S="20",
            PYTHON=sys.executable,
            PYTHONPATH=os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )

    def script(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(ROOT / "scripts" / "pipeline.sh"), command],
            capture_output=True, text=True, timeout=SCRIPT_S_MAX, env=self.env,
        )

    def ledger(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ledger.app.cli", *argv],
            capture_output=True, text=True, timeout=SCRIPT_S_MAX, env=self.env,
        )

    def pids(self) -> dict[str, int]:
        return {p.stem: int(p.read_text()) for p in self.state.glob("*.pid")}

    def ends(self, streams: KafkaStreams) -> tuple[int, ...]:
        logs = [streams.commands(), streams.events()] + [streams.outputs(s) for s in streams.output_symbols()]
        try:
            return tuple(log.end_offset() for log in logs)
        finally:
            for log in logs:
                log.close()

    def logs(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.state.glob("*.log"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def deployment(tmp_path: Path, kafka_bootstrap: str, cassandra_session: Any) -> Iterator[Deployment]:
    made = Deployment(tmp_path)
    try:
        yield made
    finally:
        pids = made.pids()
        made.script("down")
        for pid in pids.values():  # down failed to stop one: do not leave it running
            if _alive(pid):
                os.kill(pid, 9)
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {made.keyspace}", timeout=120)


def test_pipeline_script_up_load_verify_down(deployment: Deployment) -> None:
    up = deployment.script("up")
    assert up.returncode == 0, up.stderr + deployment.logs()
    pids = deployment.pids()
    assert set(pids) == set(SERVICES) and all(_alive(pid) for pid in pids.values()), up.stderr
    status = deployment.script("status")
    assert status.returncode == 0 and status.stderr.count(": running (pid") == 3, status.stderr
    again = deployment.script("up")  # a second up starts nothing new
    assert again.returncode == 0 and deployment.pids() == pids and "already running" in again.stderr

    load = deployment.ledger("load", "--kafka", KAFKA_BOOTSTRAP, "--topic-prefix", deployment.prefix,
                             "--orders", "3000", "--users", "100")
    assert load.returncode == 0, load.stderr
    assert "3,408 commands sent" in load.stdout

    streams = KafkaStreams(KAFKA_BOOTSTRAP, topic_prefix=deployment.prefix)
    deadline = time.monotonic() + QUIET_S_MAX
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        ends = deployment.ends(streams)
        if ends != last:
            last, since = ends, time.monotonic()
        elif len(ends) == 5 and ends[1] > ends[0] and time.monotonic() - since >= QUIET_S:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the streams did not settle in {QUIET_S_MAX} s: {last}\n{deployment.logs()}")

    # The logs are quiet; the projector may still be writing them into Cassandra (a busy
    # machine): verify again while its checkpoint is short of the log's last seq.
    deadline = time.monotonic() + QUIET_S_MAX
    while True:
        verify = deployment.ledger("verify", "--kafka", KAFKA_BOOTSTRAP, "--topic-prefix", deployment.prefix,
                                   "--store", deployment.store, "--commands", "balance.operations")
        behind = re.search(r"seq 1\.\.(\d+); store checkpoint at seq (\d+)", verify.stdout)
        if verify.returncode == 0 or behind is None or behind[1] == behind[2] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert verify.returncode == 0, verify.stdout + verify.stderr + deployment.logs()
    assert "verify:       ok" in verify.stdout and "3,408 commands" in verify.stdout
    assert "every command answered exactly once" in verify.stdout

    down = deployment.script("down")
    assert down.returncode == 0, down.stderr
    assert not any(_alive(pid) for pid in pids.values()), down.stderr
    assert deployment.pids() == {}
    assert down.stderr.count(" stopped (pid ") == 3
    # SIGTERM finished the batch in hand: each service exited 0 and printed its counters.
    logs = deployment.logs()
    assert all(f"{name}: " in logs and " retries" in logs for name in SERVICES)
    assert "Traceback" not in logs
    status = deployment.script("status")
    assert status.returncode == 1 and status.stderr.count("not running") == 3


def test_pipeline_script_refuses_without_servers_and_starts_nothing(tmp_path: Path) -> None:
    """up on a machine where scripts/services.sh reports no server: one message saying
    to start them, exit 1, no service started."""
    env = dict(os.environ)
    env.update(PIPELINE_STATE=str(tmp_path / "pipeline"), KAFKA_PORT="1", CASSANDRA_PORT="1", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "pipeline.sh"), "up"],
                          capture_output=True, text=True, timeout=SCRIPT_S_MAX, env=env)
    assert done.returncode == 1
    assert "bash scripts/services.sh up" in done.stderr
    assert not list((tmp_path / "pipeline").glob("*.pid"))


def test_pipeline_script_usage(tmp_path: Path) -> None:
    env = dict(os.environ, PIPELINE_STATE=str(tmp_path / "pipeline"))
    done = subprocess.run(["bash", str(ROOT / "scripts" / "pipeline.sh"), "restart"],
                          capture_output=True, text=True, timeout=SCRIPT_S_MAX, env=env)
    assert done.returncode == 2 and "usage" in done.stderr
