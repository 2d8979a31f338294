"""The embedded log: append-only segment files in one directory.

Layout: ``DIR/00000000000000000000.seg``, named by the offset of its first record. A
segment starts with a 16-byte header (magic, format version, schema version); then
frames, each ``<u32 payload length><u32 records left in its batch><u32 crc32>`` followed
by the payload. The crc covers the first two header fields and the payload. A batch is
durable only once its last frame (``left == 0``) is intact, which makes ``append``
atomic: after a crash a reader sees a batch whole or not at all.

Durability is explicit: ``fsync=FsyncPolicy.ALWAYS`` (the default) fsyncs the segment
after every append, and the directory when a segment is created, before ``append``
returns. ``FsyncPolicy.NEVER`` leaves flushing to the OS: a crash of the process loses
nothing, a crash of the machine can lose recent appends (tests and benchmarks only).

Recovery on open: a batch cut short at the end of the last segment (a crash in the middle
of an append: a partial frame, a frame whose bytes did not all reach the disk, or a batch
missing its last frame) is truncated away, and ``recovered`` says what was cut. A frame
that fails its checksum with intact data after it is corruption, not a torn write:
opening or reading raises ``CorruptRecordError`` with the record's offset, and nothing
is truncated.
"""

from __future__ import annotations

import bisect
import enum
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ledger.logs.base import CorruptRecordError, LogError, ReadBatch
from ledger.protocol.events import SCHEMA_VERSION
from ledger.protocol.limits import INDEX_STRIDE_RECORDS, READ_RECORDS_MAX, RECORD_BYTES_MAX, SEGMENT_BYTES_MAX

log = logging.getLogger(__name__)

MAGIC = b"LEDGRLOG"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sII")
_FRAME = struct.Struct("<III")
_LENGTH_LEFT = struct.Struct("<II")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size
FRAME_BYTES = _FRAME.size
_SUFFIX = ".seg"
# Bytes read from a segment at a time while reading records.
_READ_CHUNK_BYTES = 4 * 1024 * 1024


class FsyncPolicy(enum.Enum):
    """When appends reach the disk."""

    ALWAYS = "always"
    NEVER = "never"


def _frame_crc(length_and_left: bytes | memoryview, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(length_and_left))


class _Segment:
    __slots__ = ("base", "path", "count", "index", "size")

    def __init__(self, base: int, path: Path) -> None:
        self.base = base
        self.path = path
        self.count = -1  # records; -1 until known
        self.index: list[int] | None = None  # byte position of every STRIDE-th record
        self.size = 0


class FileLog:
    """A durable, checksummed, append-only log in directory ``path``.

    >>> import tempfile
    >>> with FileLog(tempfile.mkdtemp()) as flog:
    ...     flog.append([b"a", b"b"]), flog.read(1).values
    (0, [b'b'])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
        readonly: bool = False,
        segment_bytes_max: int = SEGMENT_BYTES_MAX,
    ) -> None:
        self.path = Path(path)
        self.name = f"file log {self.path}"
        self.fsync = fsync
        self.readonly = readonly
        self.segment_bytes_max = segment_bytes_max
        self.recovered: str = ""
        self._lock_fd = -1
        self._out: BinaryIO | None = None
        if readonly:
            if not self.path.is_dir():
                raise LogError(f"{self.name}: no such directory")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise LogError(f"{self.name}: another process has it open for writing") from None
        self._segments: list[_Segment] = []
        for entry in sorted(self.path.glob("*" + _SUFFIX)):
            try:
                base = int(entry.name[: -len(_SUFFIX)])
            except ValueError:
                raise LogError(f"{self.name}: unexpected file {entry.name}") from None
            self._segments.append(_Segment(base, entry))
        for i, segment in enumerate(self._segments[:-1]):
            segment.count = self._segments[i + 1].base - segment.base
            if segment.count < 0:
                raise LogError(f"{self.name}: segments out of order at {segment.path.name}")
        if self._segments:
            self._recover(self._segments[-1])
        elif not readonly:
            self._new_segment(0)
        self._bases = [s.base for s in self._segments]

    # -- recovery -------------------------------------------------------------------

    def _check_header(self, segment: _Segment, data: bytes) -> None:
        magic, fmt, schema = _HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise LogError(f"{self.name}: {segment.path.name} is not a log segment")
        if fmt != FORMAT_VERSION or schema > SCHEMA_VERSION:
            raise LogError(
                f"{self.name}: {segment.path.name} has format {fmt} schema {schema}; "
                f"this library reads format {FORMAT_VERSION} up to schema {SCHEMA_VERSION}"
            )

    def _recover(self, segment: _Segment) -> None:
        """Scan the last segment, index it, and cut a torn batch off its end."""
        data = segment.path.read_bytes()
        if len(data) < HEADER_BYTES:
            # Crashed while creating the segment: nothing in it was ever acknowledged.
            self._note_torn(segment, 0, len(data))
            if not self.readonly:
                with open(segment.path, "wb") as f:
                    f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, SCHEMA_VERSION))
                    os.fsync(f.fileno())
            # The index gets its first entry with the first record, as for a new segment.
            segment.count, segment.index, segment.size = 0, [], HEADER_BYTES
            return
        self._check_header(segment, data)
        index: list[int] = []
        position = HEADER_BYTES
        committed_position, committed_count, count = HEADER_BYTES, 0, 0
        end = len(data)
        while position < end:
            if end - position < FRAME_BYTES:
                break
            length, left, crc = _FRAME.unpack_from(data, position)
            payload_end = position + FRAME_BYTES + length
            if payload_end > end:
                break
            if _frame_crc(data[position : position + 8], data[position + FRAME_BYTES : payload_end]) != crc:
                if payload_end == end or not any(data[payload_end:]):
                    break  # the last frame's bytes did not all reach the disk
                raise CorruptRecordError(
                    f"{self.name}: record at offset {segment.base + count} "
                    f"({segment.path.name} byte {position}) fails its checksum",
                    segment.base + count,
                )
            if count % INDEX_STRIDE_RECORDS == 0:
                index.append(position)
            count += 1
            position = payload_end
            if left == 0:
                committed_position, committed_count = position, count
        if committed_position < end:
            self._note_torn(segment, committed_position, end)
            if not self.readonly:
                with open(segment.path, "r+b") as f:
                    f.truncate(committed_position)
                    os.fsync(f.fileno())
        segment.count = committed_count
        segment.index = index[: (committed_count + INDEX_STRIDE_RECORDS - 1) // INDEX_STRIDE_RECORDS]
        segment.size = committed_position

    def _note_torn(self, segment: _Segment, good_bytes: int, file_bytes: int) -> None:
        action = "ignored (read-only)" if self.readonly else "truncated"
        self.recovered = (
            f"{segment.path.name}: torn append of {file_bytes - good_bytes} bytes after byte "
            f"{good_bytes} {action}; the log ends at offset {segment.base + max(segment.count, 0)}"
        )
        log.warning("%s: %s", self.name, self.recovered)

    # -- writing --------------------------------------------------------------------

    def _new_segment(self, base: int) -> None:
        segment = _Segment(base, self.path / f"{base:020d}{_SUFFIX}")
        with open(segment.path, "wb") as f:
            f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, SCHEMA_VERSION))
            if self.fsync is FsyncPolicy.ALWAYS:
                os.fsync(f.fileno())
        if self.fsync is FsyncPolicy.ALWAYS:
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        segment.count, segment.index, segment.size = 0, [], HEADER_BYTES
        self._segments.append(segment)
        self._bases = [s.base for s in self._segments]
        if self._out is not None:
            self._out.close()
            self._out = None

    def append(self, records: Sequence[bytes]) -> int:
        """Append ``records`` as one atomic batch; durable on return under ALWAYS."""
        if self.readonly:
            raise LogError(f"{self.name}: opened read-only")
        if not records:
            return self.end_offset()
        parts: list[bytes] = []
        add = parts.append
        pack_head, pack_crc, crc32 = _LENGTH_LEFT.pack, _CRC.pack, zlib.crc32
        left = len(records)
        for record in records:
            left -= 1
            size = len(record)
            if size > RECORD_BYTES_MAX:
                raise LogError(f"{self.name}: record of {size} bytes over RECORD_BYTES_MAX {RECORD_BYTES_MAX}")
            head = pack_head(size, left)
            add(head)
            add(pack_crc(crc32(record, crc32(head))))  # _frame_crc, inlined
            add(record)
        buffer = b"".join(parts)
        segment = self._segments[-1]
        if segment.count > 0 and segment.size + len(buffer) > self.segment_bytes_max:
            self._new_segment(segment.base + segment.count)
            segment = self._segments[-1]
        out = self._out
        if out is None:
            out = self._out = open(segment.path, "ab", buffering=0)  # noqa: SIM115  # type: ignore[assignment]
        first = segment.base + segment.count
        out.write(buffer)
        if self.fsync is FsyncPolicy.ALWAYS:
            os.fsync(out.fileno())
        assert segment.index is not None
        position = segment.size
        for record in records:
            if segment.count % INDEX_STRIDE_RECORDS == 0:
                segment.index.append(position)
            segment.count += 1
            position += FRAME_BYTES + len(record)
        segment.size = position
        return first

    # -- following a writer (read-only) ---------------------------------------------

    def _refresh(self) -> None:
        """Take in complete batches appended since the last look, in the last segment
        and in segments created since. A batch still being written stays invisible; a
        tail that cannot be a write in progress is corruption, and raises."""
        while True:
            if self._segments:
                last = self._segments[-1]
                try:
                    size = os.stat(last.path).st_size
                except FileNotFoundError:
                    raise LogError(f"{self.name}: {last.path.name} disappeared") from None
                if size < last.size:
                    # Records already handed out are gone: offsets would be reused.
                    raise LogError(
                        f"{self.name}: {last.path.name} shrank from {last.size} to {size} bytes under a reader"
                    )
                if size > last.size:
                    self._scan_tail(last, size)
                    if last.size < size:
                        self._check_stalled(last)
                if last.count == 0:
                    return
                base = last.base + last.count
            else:
                base = 0
            # A writer starts a segment only after its previous one holds complete
            # batches, and names it by the offset that follows them.
            following = _Segment(base, self.path / f"{base:020d}{_SUFFIX}")
            try:
                with open(following.path, "rb") as f:
                    header = f.read(HEADER_BYTES)
            except FileNotFoundError:
                return
            if len(header) < HEADER_BYTES:
                return  # being created
            self._check_header(following, header)
            following.count, following.index, following.size = 0, [], HEADER_BYTES
            self._segments.append(following)
            self._bases.append(base)

    def _check_stalled(self, segment: _Segment) -> None:
        """``segment`` has bytes past its last complete batch. That is a write in
        progress, unless the writer has already moved on to a later segment (it rolls
        over only after a complete batch): then those bytes are corrupt."""
        later = [p for p in self.path.glob("*" + _SUFFIX) if p.name > segment.path.name]
        if not later:
            return
        # The writer never touches a segment again once it has started the next, so the
        # file is final now: look once more (it may have finished the batch meanwhile).
        size = os.stat(segment.path).st_size
        self._scan_tail(segment, size)
        if segment.size < size:
            offset = segment.base + segment.count
            raise CorruptRecordError(
                f"{self.name}: record at offset {offset} ({segment.path.name} byte {segment.size}) is not a "
                f"complete record, and the writer has gone on to {min(later).name}",
                offset,
            )

    def _scan_tail(self, segment: _Segment, size: int) -> None:
        """Extend ``segment`` by the complete batches between its known end and ``size``."""
        assert segment.index is not None
        with open(segment.path, "rb") as f:
            if segment.count == 0 and segment.size == HEADER_BYTES:
                # Opened while the writer was creating it: check the header now.
                self._check_header(segment, f.read(HEADER_BYTES))
            f.seek(segment.size)
            data = f.read(size - segment.size)
        position, count = 0, segment.count
        index = segment.index
        committed_position, committed_count, committed_index = 0, count, len(index)
        end = len(data)
        while end - position >= FRAME_BYTES:
            length, left, crc = _FRAME.unpack_from(data, position)
            payload_end = position + FRAME_BYTES + length
            if payload_end > end:
                break  # not all written yet
            if _frame_crc(data[position : position + 8], data[position + FRAME_BYTES : payload_end]) != crc:
                if any(data[payload_end:]):
                    # Intact data after a frame that fails its checksum: corruption, as
                    # recovery rules, not a write in progress (a batch is one write).
                    raise CorruptRecordError(
                        f"{self.name}: record at offset {segment.base + count} "
                        f"({segment.path.name} byte {segment.size + position}) fails its checksum",
                        segment.base + count,
                    )
                break
            if count % INDEX_STRIDE_RECORDS == 0:
                index.append(segment.size + position)
            count += 1
            position = payload_end
            if left == 0:
                committed_position, committed_count, committed_index = position, count, len(index)
        del index[committed_index:]
        segment.count = committed_count
        segment.size += committed_position

    # -- reading --------------------------------------------------------------------

    def end_offset(self) -> int:
        """The offset the next record will get. A read-only log first takes in the
        batches a writer (another process) has completed since it last looked."""
        if self.readonly:
            self._refresh()
        if not self._segments:
            return 0
        last = self._segments[-1]
        return last.base + last.count

    def _build_index(self, segment: _Segment) -> None:
        index: list[int] = []
        with open(segment.path, "rb") as f:
            header = f.read(HEADER_BYTES)
            self._check_header(segment, header)
            position = HEADER_BYTES
            for i in range(segment.count):
                if i % INDEX_STRIDE_RECORDS == 0:
                    index.append(position)
                f.seek(position)
                head = f.read(FRAME_BYTES)
                if len(head) < FRAME_BYTES:
                    raise CorruptRecordError(
                        f"{self.name}: {segment.path.name} ends before record {segment.base + i}",
                        segment.base + i,
                    )
                position += FRAME_BYTES + _FRAME.unpack(head)[0]
        segment.index = index

    def read(self, offset: int, max_records: int = READ_RECORDS_MAX) -> ReadBatch:
        """Up to ``max_records`` records from ``offset``, each verified by its checksum."""
        end = self.end_offset()
        if offset < 0 or offset > end:
            raise LogError(f"{self.name}: offset {offset} outside 0..{end}")
        values: list[bytes] = []
        at = offset
        while at < end and len(values) < max_records:
            values.extend(self._read_segment(at, max_records - len(values)))
            at = offset + len(values)
        return ReadBatch(list(range(offset, at)), values, at)

    def _read_segment(self, offset: int, max_records: int) -> list[bytes]:
        """Records from ``offset`` to at most the end of the segment holding it."""
        which = bisect.bisect_right(self._bases, offset) - 1
        segment = self._segments[which]
        if segment.index is None:
            self._build_index(segment)
        assert segment.index is not None
        within = offset - segment.base
        count = min(max_records, segment.count - within)
        stride_start = within // INDEX_STRIDE_RECORDS
        position = segment.index[stride_start]
        skip = within - stride_start * INDEX_STRIDE_RECORDS
        values: list[bytes] = []
        append = values.append
        unpack = _FRAME.unpack_from
        crc32 = zlib.crc32
        with open(segment.path, "rb") as f:
            f.seek(position)
            data = f.read(_READ_CHUNK_BYTES)
            size = len(data)
            at = 0
            current = offset - skip
            end = offset + count
            # The hottest loop of a replay: one frame a turn, locals only.
            while current < end:
                if size - at < FRAME_BYTES:
                    data = data[at:] + f.read(_READ_CHUNK_BYTES)
                    size = len(data)
                    at = 0
                    if size < FRAME_BYTES:
                        raise CorruptRecordError(
                            f"{self.name}: {segment.path.name} ends before record {current}", current
                        )
                length, _left, crc = unpack(data, at)
                start = at + FRAME_BYTES
                stop = start + length
                if stop > size:
                    data = data[at:] + f.read(max(_READ_CHUNK_BYTES, stop - at))
                    size = len(data)
                    at = 0
                    start = FRAME_BYTES
                    stop = start + length
                    if stop > size:
                        raise CorruptRecordError(
                            f"{self.name}: {segment.path.name} ends inside record {current}", current
                        )
                if current >= offset:
                    payload = data[start:stop]
                    if crc32(payload, crc32(data[at : at + 8])) != crc:
                        raise CorruptRecordError(f"{self.name}: record at offset {current} fails its checksum", current)
                    append(payload)
                current += 1
                at = stop
        return values

    def close(self) -> None:
        """Close files and release the writer's lock."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> FileLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
