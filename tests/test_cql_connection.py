"""CQL connections for real deployments: credentials and TLS from the environment, never
echoed; replication settings validated before they reach CREATE KEYSPACE; a store opened
to read creates nothing."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import uuid

import pytest

from settlement import StoreError, open_store
from settlement.cql import check_replication, connection_options
from support import CASSANDRA_PORT

SECRET = "cql-s3cret-never-printed"
CA_BUNDLE = ssl.get_default_verify_paths().openssl_cafile


def test_replication_is_written_from_validated_parts_only() -> None:
    assert check_replication({"class": "SimpleStrategy", "replication_factor": 3}) == (
        "{'class': 'SimpleStrategy', 'replication_factor': 3}"
    )
    assert check_replication({"class": "NetworkTopologyStrategy", "dc-east": "3", "dc_west": 2}) == (
        "{'class': 'NetworkTopologyStrategy', 'dc-east': 3, 'dc_west': 2}"
    )


@pytest.mark.parametrize(
    ("replication", "problem"),
    [
        ({"class": "EverywhereStrategy", "replication_factor": 1}, "replication class"),
        ({"class": "SimpleStrategy", "replication_factor": "1}; DROP KEYSPACE trading; --"}, "not a factor"),
        ({"class": "NetworkTopologyStrategy", "dc1': 1}; DROP KEYSPACE trading; --": 1}, "not a data centre"),
        ({"class": "SimpleStrategy", "replication_factor": 0}, "not a factor"),
        ({"class": "SimpleStrategy", "replication_factor": 1000}, "not a factor"),
        ({"class": "SimpleStrategy", "replication_factor": True}, "not a factor"),
        ({"class": "SimpleStrategy", "dc1": 3}, "only replication_factor"),
        ({"class": "NetworkTopologyStrategy"}, "no replication_factor"),
    ],
)
def test_a_bad_replication_map_is_refused_saying_what(replication: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_replication(replication)


def test_credentials_and_tls_come_from_the_environment() -> None:
    from cassandra.auth import PlainTextAuthProvider

    assert connection_options({}) == {}
    options = connection_options({"LEDGER_CQL_USERNAME": "projector", "LEDGER_CQL_PASSWORD": SECRET,
                                  "LEDGER_CQL_SSL_CA": CA_BUNDLE})
    assert isinstance(options["auth_provider"], PlainTextAuthProvider)
    assert options["auth_provider"].username == "projector"
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"LEDGER_CQL_PASSWORD": SECRET}, "both"),
        ({"LEDGER_CQL_SSL_CERT": "/x.pem"}, "both"),
        ({"LEDGER_CQL_SSL_CA": "/nonexistent/ca.pem"}, "TLS settings"),
    ],
)
def test_incomplete_connection_settings_are_refused_without_the_secret(environ: dict, problem: str) -> None:
    with pytest.raises(StoreError, match=problem) as refused:
        connection_options(environ)
    assert SECRET not in str(refused.value)


def test_credentials_inside_a_store_url_are_refused_without_repeating_them() -> None:
    with pytest.raises(ValueError, match="not repeated") as refused:
        open_store(f"cql://admin:{SECRET}@127.0.0.1:9042/trading")
    assert SECRET not in str(refused.value)


@pytest.mark.cassandra
def test_a_store_opened_with_credentials_works_and_tls_is_really_used(cassandra_session, monkeypatch) -> None:
    keyspace = f"conn_{uuid.uuid4().hex[:10]}"
    url = f"cql://127.0.0.1:{CASSANDRA_PORT}/{keyspace}"
    # The test server allows everyone: credentials are offered and the store works.
    monkeypatch.setenv("LEDGER_CQL_USERNAME", "projector")
    monkeypatch.setenv("LEDGER_CQL_PASSWORD", SECRET)
    store = open_store(url)
    try:
        assert store.checkpoint("balance.events") is None
    finally:
        store.close()
        cassandra_session.execute(f"DROP KEYSPACE {keyspace}")
    # TLS to a plaintext server fails to connect: the settings reach the driver.
    monkeypatch.setenv("LEDGER_CQL_SSL_CA", CA_BUNDLE)
    with pytest.raises(StoreError, match="cannot connect") as refused:
        open_store(url)
    assert SECRET not in str(refused.value)


@pytest.mark.cassandra
def test_reading_commands_on_a_mistyped_keyspace_create_nothing(cassandra_session) -> None:
    keyspace = f"typo_{uuid.uuid4().hex[:10]}"
    url = f"cql://127.0.0.1:{CASSANDRA_PORT}/{keyspace}"
    with pytest.raises(StoreError, match="does not exist; nothing was created"):
        open_store(url, create=False)
    done = subprocess.run([sys.executable, "-m", "ledger.app.cli", "gaps", "--store", url], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert keyspace not in {row.keyspace_name for row in cassandra_session.execute(
        "SELECT keyspace_name FROM system_schema.keyspaces")}


@pytest.mark.cassandra
def test_ledger_project_creates_a_fresh_keyspace_and_gaps_then_reads_it(cassandra_session, tmp_path) -> None:
    from ledger.app.demo import run_demo
    from ledger.logs.file import FsyncPolicy

    run_demo(tmp_path / "demo", users=20, orders=300, progress=False, fsync=FsyncPolicy.NEVER)
    keyspace = f"fresh_{uuid.uuid4().hex[:10]}"
    url = f"cql://127.0.0.1:{CASSANDRA_PORT}/{keyspace}"
    try:
        for argv in (["project", "--log", str(tmp_path / "demo"), "--store", url], ["gaps", "--store", url]):
            done = subprocess.run([sys.executable, "-m", "ledger.app.cli", *argv], capture_output=True, text=True,
                                  timeout=180, env=dict(os.environ))
            assert done.returncode == 0, done.stderr
    finally:
        cassandra_session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
