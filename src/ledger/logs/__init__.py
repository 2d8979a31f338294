"""Logs: one interface (append a batch, read from an offset, ask the end offset) and its
implementations: ``MemoryLog`` (tests), ``FileLog`` (the embedded default) and
``KafkaLog`` (``ledger.logs.kafka``; imported on first use so that ``import ledger``
does not load confluent-kafka). ``ledger.logs.layout`` names a deployment's streams.

This layer imports only ``ledger.protocol``.
"""

from typing import Any

from ledger.logs.base import CorruptRecordError, Log, LogError, MemoryLog, ReadBatch, WriterFencedError, scan
from ledger.logs.file import FileLog, FsyncPolicy


def __getattr__(name: str) -> Any:
    if name in ("KafkaLog", "ensure_topic"):
        from ledger.logs import kafka

        return getattr(kafka, name)
    raise AttributeError(f"module 'ledger.logs' has no attribute {name!r}")


__all__ = [
    "CorruptRecordError",
    "FileLog",
    "FsyncPolicy",
    "KafkaLog",
    "Log",
    "LogError",
    "WriterFencedError",
    "MemoryLog",
    "ReadBatch",
    "ensure_topic",
    "scan",
]
