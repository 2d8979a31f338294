"""Shared fixtures. Hypothesis profiles: 'ci' (default here) runs more examples."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# -- real services ----------------------------------------------------------------------
# Tests marked `kafka` or `cassandra` run against the servers scripts/services.sh starts.
# Where LEDGER_REQUIRE_SERVICES=1 (scripts/test.sh, and so CI) a skipped service test
# fails the whole run, naming the test: a green run must mean the real servers were used.

_skipped_service_tests: list[str] = []


def pytest_runtest_logreport(report) -> None:  # noqa: ANN001 - pytest hook
    if report.skipped and ("kafka" in report.keywords or "cassandra" in report.keywords):
        _skipped_service_tests.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ANN001 - pytest hook
    if os.environ.get("LEDGER_REQUIRE_SERVICES") == "1" and _skipped_service_tests:
        names = "\n  ".join(_skipped_service_tests)
        print(f"\nFAILED: {len(_skipped_service_tests)} test(s) needing Kafka/Cassandra were skipped:\n  {names}")
        session.exitstatus = 1


from support import CASSANDRA_PORT, KAFKA_BOOTSTRAP  # noqa: E402 - needs the path above


def _kafka_up() -> str | None:
    try:
        from confluent_kafka.admin import AdminClient

        metadata = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP, "socket.timeout.ms": 3000}).list_topics(
            timeout=5
        )
        return None if metadata.brokers else "no brokers in metadata"
    except Exception as error:  # noqa: BLE001 - any failure means the service is unusable
        return repr(error)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The real broker's address; skips (and so fails the run under
    LEDGER_REQUIRE_SERVICES=1) if it does not answer."""
    problem = _kafka_up()
    if problem:
        pytest.skip(f"Kafka at {KAFKA_BOOTSTRAP} is not serving: {problem}")
    return KAFKA_BOOTSTRAP


@pytest.fixture
def kafka_log_factory(kafka_bootstrap, request):
    """Makes KafkaLogs on fresh topics named after the test."""
    import re
    import uuid

    from ledger.logs.kafka import KafkaLog, ensure_topic

    def make(transactional: bool = False):
        name = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)[:150]
        topic = f"test-{name}-{uuid.uuid4().hex[:8]}"
        ensure_topic(kafka_bootstrap, topic)
        return KafkaLog(kafka_bootstrap, topic, transactional_id=f"tx-{topic}" if transactional else None)

    return make


@pytest.fixture(scope="session")
def cassandra_session():
    """A session on the real Cassandra (protocol v4); skips if it does not answer."""
    try:
        from cassandra.cluster import Cluster

        cluster = Cluster(["127.0.0.1"], port=CASSANDRA_PORT, protocol_version=4, connect_timeout=10)
        session = cluster.connect()
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"Cassandra on 127.0.0.1:{CASSANDRA_PORT} is not serving: {error!r}")
    yield session
    cluster.shutdown()
