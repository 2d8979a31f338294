"""The real Cassandra answers CQL as the settlement store will use it: protocol v4,
prepared statements, varint amounts up to AMOUNT_MAX, writes with explicit timestamps
(last write by timestamp wins, whatever the arrival order)."""

from __future__ import annotations

import uuid

import pytest

from ledger import AMOUNT_MAX

pytestmark = pytest.mark.cassandra


def test_varint_amounts_and_timestamped_writes_round_trip(cassandra_session) -> None:
    session = cassandra_session
    keyspace = f"test_{uuid.uuid4().hex[:10]}"
    session.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    )
    try:
        session.execute(f"CREATE TABLE {keyspace}.balances (user bigint, asset text, available varint, "
                        "PRIMARY KEY (user, asset))")
        insert = session.prepare(
            f"INSERT INTO {keyspace}.balances (user, asset, available) VALUES (?, ?, ?) USING TIMESTAMP ?"
        )
        # Applied out of order: the write with the higher timestamp (later seq) must win.
        session.execute(insert, (7, "ETH", AMOUNT_MAX, 2))
        session.execute(insert, (7, "ETH", 5, 1))
        row = session.execute(f"SELECT available FROM {keyspace}.balances WHERE user = 7 AND asset = 'ETH'").one()
        assert row.available == AMOUNT_MAX
    finally:
        session.execute(f"DROP KEYSPACE {keyspace}")
