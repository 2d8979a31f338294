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
