"""Settlement: projects balance.events and engine.outputs into a queryable store.

The projector (``settlement.projector``) reads each stream from its log (file or Kafka),
checks its ``seq`` (gaps, conflicting duplicates and malformed records are recorded and
stop that stream; nothing is skipped in silence) and writes idempotent, versioned rows
into a store: SQLite (``settlement.sqlite``, the embedded default) or ScyllaDB/Cassandra
(``settlement.cql``). ``settlement.verify`` compares a store with a fresh replay.

>>> from settlement import open_store
>>> open_store("sqlite::memory:").name
'sqlite::memory:'
"""

from __future__ import annotations

import re
from typing import Any

from settlement.projector import HALT, REFETCH, ProjectionReport, Projector, Source, StreamReport, file_sources
from settlement.store import Checkpoint, Fault, Queries, Store, StoreError, dump
from settlement.verify import VerifyReport, verify_store


def open_store(url: str, **options: Any) -> Store:
    """Open a store from ``sqlite:PATH`` (``sqlite::memory:`` for a throwaway one) or
    ``cql://HOST[:PORT][/KEYSPACE]``; ``options`` go to the store's constructor. A CQL
    store's credentials and TLS come from ``LEDGER_CQL_*`` variables
    (``settlement.cql.connection_options``), never from the URL."""
    if "@" in url and not url.startswith("sqlite:"):
        raise ValueError("store URL: credentials inside the URL are refused (set LEDGER_CQL_USERNAME and "
                         "LEDGER_CQL_PASSWORD); the URL is not repeated here")
    if url.startswith("sqlite:"):
        from settlement.sqlite import SQLiteStore

        path = url[len("sqlite:") :]
        if not path:
            raise ValueError(f"store {url!r}: no path after sqlite:")
        return SQLiteStore(path, **options)
    match = re.match(r"^cql://([^:/]+)(?::(\d+))?(?:/([a-z][a-z0-9_]*))?$", url)
    if match:
        from settlement.cql import KEYSPACE_DEFAULT, CqlStore, connection_options

        host, port, keyspace = match.groups()
        return CqlStore((host,), int(port or 9042), keyspace or KEYSPACE_DEFAULT, **connection_options(), **options)
    raise ValueError(f"store {url!r}: use sqlite:PATH or cql://HOST:PORT/KEYSPACE")


__all__ = [
    "HALT",
    "REFETCH",
    "Checkpoint",
    "Fault",
    "ProjectionReport",
    "Projector",
    "Queries",
    "Source",
    "Store",
    "StoreError",
    "StreamReport",
    "VerifyReport",
    "dump",
    "file_sources",
    "open_store",
    "verify_store",
]
