"""The log interface every stage reads and writes, and the in-memory log for tests.

A log is one ordered stream of opaque records (one partition of a topic): ``append`` a
batch, ``read`` from an offset, ask the ``end_offset``. Offsets are positions, not
sequence numbers: in Kafka they can have holes (transaction markers), so readers judge
completeness by the ``seq`` inside the records, and a read says where to continue with
``next_offset`` rather than assuming offset + 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from ledger.protocol.limits import READ_RECORDS_MAX


class LogError(Exception):
    """A log could not be read or written; the message names the log and offset."""


class LogMissingError(LogError):
    """The log does not exist (yet): a reader started before its writer made it."""


class WriterFencedError(LogError):
    """Another writer owns this log: a file log another process holds open for writing,
    or a Kafka transactional id a newer producer has claimed. The stream has one writer;
    this one must stop (retrying would fork the stream or fence the newer writer)."""


class CorruptRecordError(LogError):
    """A stored record failed its checksum or framing; ``offset`` is its log offset."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


class ReadBatch(msgspec.Struct, frozen=True, gc=False):
    """Records read from a log: ``values[i]`` is at ``offsets[i]``; continue at
    ``next_offset``."""

    offsets: list[int]
    values: list[bytes]
    next_offset: int


@runtime_checkable
class Log(Protocol):
    """One ordered stream of records."""

    name: str

    def append(self, records: Sequence[bytes]) -> int:
        """Append records atomically in order; return the offset of the first one."""
        ...

    def read(self, offset: int, max_records: int = READ_RECORDS_MAX) -> ReadBatch:
        """Up to ``max_records`` records starting at ``offset`` (empty at the end)."""
        ...

    def end_offset(self) -> int:
        """The offset the next appended record will get."""
        ...

    def close(self) -> None:
        """Release files or connections."""
        ...


def scan(log: Log, offset: int = 0, until: int | None = None) -> Iterator[ReadBatch]:
    """Batches from ``offset`` up to ``until`` (default: the end offset when the scan
    starts, so records appended meanwhile are not chased forever)."""
    end = log.end_offset() if until is None else until
    while offset < end:
        batch = log.read(offset, min(READ_RECORDS_MAX, end - offset))
        if not batch.values:
            if batch.next_offset <= offset:
                raise LogError(f"{log.name}: no records at offset {offset} before end {end}")
            offset = batch.next_offset
            continue
        if batch.offsets[-1] >= end:
            keep = sum(1 for o in batch.offsets if o < end)
            batch = ReadBatch(batch.offsets[:keep], batch.values[:keep], end)
        yield batch
        offset = batch.next_offset


class MemoryLog:
    """A log in a Python list: same interface and semantics as the file and Kafka logs."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._records: list[bytes] = []

    def append(self, records: Sequence[bytes]) -> int:
        first = len(self._records)
        for record in records:
            if not isinstance(record, (bytes, bytearray, memoryview)):
                raise TypeError(f"{self.name}: records are bytes, got {type(record).__name__}")
        self._records.extend(bytes(r) for r in records)
        return first

    def read(self, offset: int, max_records: int = READ_RECORDS_MAX) -> ReadBatch:
        if offset < 0:
            raise LogError(f"{self.name}: negative offset {offset}")
        values = self._records[offset : offset + max_records]
        return ReadBatch(list(range(offset, offset + len(values))), values, offset + len(values))

    def end_offset(self) -> int:
        return len(self._records)

    def close(self) -> None:
        pass
