"""The embedded log: append-only segment files in one directory.

Layout: ``DIR/00000000000000000000.seg``, named by the offset of its first record. A
segment of format 2 starts with a 20-byte header ``<8s magic><u32 format><u32 schema>
<u32 crc32 of those 16 bytes>``; then frames, each a 20-byte header and the payload::

    0  u32 length      payload bytes (at most RECORD_BYTES_MAX)
    4  u32 left        records after this one in its batch (0: the batch's last frame)
    8  u32 batch       byte position in the segment of the first frame of its batch
    12 u32 header_crc  crc32 of bytes 0..12
    16 u32 crc         crc32 of bytes 0..16 and the payload
    20 payload

``header_crc`` lets a frame's length be trusted before its payload is there, so a damaged
length is damage, not a torn write; ``batch`` ties every frame to its batch, so recovery
knows where the final batch starts even past a damaged frame. A batch is durable only
once its last frame (``left == 0``) is intact, which makes ``append`` atomic: after a
crash a reader sees a batch whole or not at all. Format 1 (read, never written) has a
16-byte segment header without the crc and 12-byte frames ``<length><left><crc>``, the
crc covering length, left and the payload.

Durability is explicit: ``fsync=FsyncPolicy.ALWAYS`` (the default) fsyncs the segment
after every append, and the directory when a segment is created, before ``append``
returns. ``FsyncPolicy.NEVER`` leaves flushing to the OS: a crash of the process loses
nothing, a crash of the machine can lose recent appends (tests and benchmarks only).

Recovery: only the final batch of the last segment may be incomplete, and only it is
ever cut (truncated by a writer, ignored by a read-only log), with ``recovered`` and a
logged warning naming its offset and size. Pages reach the disk in any order before an
fsync, so damage inside the final batch cannot be told from a torn write; damage
anywhere before it is ``CorruptRecordError`` naming the record's offset, and nothing is
truncated. A read-only log that finds an incomplete final batch while the writer holds
its lock takes it for a batch in progress.
"""

from __future__ import annotations

import bisect
import enum
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ledger.logs.base import CorruptRecordError, LogError, LogMissingError, ReadBatch, WriterFencedError
from ledger.protocol.events import SCHEMA_VERSION
from ledger.protocol.limits import INDEX_STRIDE_RECORDS, READ_RECORDS_MAX, RECORD_BYTES_MAX, SEGMENT_BYTES_MAX

log = logging.getLogger(__name__)

MAGIC = b"LEDGRLOG"
FORMAT_VERSION = 2
_SEGMENT_HEAD = struct.Struct("<8sII")  # magic, format, schema: the same in every format
_SEGMENT_CRC = struct.Struct("<I")
_FRAME_HEAD = struct.Struct("<III")  # length, left, batch: what header_crc covers
_FRAME_CRCS = struct.Struct("<II")  # header_crc, crc
_BATCH = struct.Struct("<I")
HEADER_BYTES = 20
FRAME_BYTES = 20
# crc32 of any bytes followed by their own crc32 (little-endian) is this constant: a
# frame's first 16 bytes are intact exactly when their crc32 is it.
_RESIDUE = 0x2144DF1C
_SUFFIX = ".seg"
# Bytes read from a segment at a time (more than one largest frame).
_READ_CHUNK_BYTES = 4 * 1024 * 1024
# Frame positions are u32, so a segment never grows past this.
_SEGMENT_POSITION_MAX = 2**32 - 1
# Looking for intact frames past a damaged one tests every byte position that is not in
# a run of zeros; a torn write leaves zeros and intact frames, so this bounds only the
# search through garbage. Past it, the tail is corruption, never a torn write.
_RESYNC_BYTES_MAX = 8 * 1024 * 1024
_NONZERO = re.compile(rb"[^\x00]")
# The smallest unit a crash leaves unwritten: a torn write reads back as zero sectors (or
# a file cut short), never as flipped bits.
_SECTOR_BYTES = 512
# A read-only log probes the writer's lock with a shared lock for microseconds; a writer
# that finds the lock taken retries this long before concluding another writer has it.
_LOCK_ATTEMPTS = 20
_LOCK_RETRY_S = 0.005


class FsyncPolicy(enum.Enum):
    """When appends reach the disk."""

    ALWAYS = "always"
    NEVER = "never"


class _Format:
    """How one format version frames records. ``fields`` unpacks (length, left, crc) from
    a frame; ``crc`` covers the frame's first ``covered`` bytes and its payload."""

    __slots__ = ("version", "header_bytes", "frame_bytes", "fields", "covered")

    def __init__(self, version: int, header_bytes: int, frame_bytes: int, fields: str, covered: int) -> None:
        self.version = version
        self.header_bytes = header_bytes
        self.frame_bytes = frame_bytes
        self.fields = struct.Struct(fields)
        self.covered = covered


_V1 = _Format(1, 16, 12, "<III", 8)
_V2 = _Format(2, HEADER_BYTES, FRAME_BYTES, "<II8xI", 16)
_FORMATS = {1: _V1, 2: _V2}
_HEADER_BYTES_MAX = max(f.header_bytes for f in _FORMATS.values())


def _segment_header() -> bytes:
    head = _SEGMENT_HEAD.pack(MAGIC, FORMAT_VERSION, SCHEMA_VERSION)
    return head + _SEGMENT_CRC.pack(zlib.crc32(head))


def encode_batch(records: Sequence[bytes], batch_position: int) -> bytes:
    """The format-2 frames of ``records`` as one batch starting at ``batch_position``."""
    parts: list[bytes] = []
    add = parts.append
    pack_head, pack_crcs, crc32 = _FRAME_HEAD.pack, _FRAME_CRCS.pack, zlib.crc32
    left = len(records)
    for record in records:
        left -= 1
        head = pack_head(len(record), left, batch_position)
        add(head)
        # The crc over bytes 0..16 is _RESIDUE, so the frame crc starts from it.
        add(pack_crcs(crc32(head), crc32(record, _RESIDUE)))
        add(record)
    return b"".join(parts)


# Why a walk over frames stopped.
_LIMIT = 0  # it took in the records it was asked for
_END = 1  # the data ends where a frame would start
_SHORT = 2  # the data ends inside a frame (its header, or past an intact length)
_DAMAGED = 3  # a frame fails its checksum
_MISPLACED = 4  # a frame passes its checksum but does not belong where it is

# What a walk does with each frame.
_READ = 0  # verify it and keep its payload
_RECOVER = 1  # verify it, check its place in its batch, index it
_INDEX = 2  # verify its header only (format 2), check its place, index it
_SKIP = 3  # verify its header only (format 2): passing records a read does not return


class _Cursor:
    """Where a walk is: the next frame's byte position and record number in the segment,
    and the start of the batch it is in."""

    __slots__ = ("position", "count", "batch_position", "batch_count", "left_expected")

    def __init__(self, position: int, count: int) -> None:
        self.position = position
        self.count = count
        self.batch_position = position  # checking walks start at a batch boundary
        self.batch_count = count
        self.left_expected = -1  # the next frame's ``left`` inside a batch; -1 at its start


def _walk(
    fmt: _Format,
    cursor: _Cursor,
    data: bytes,
    origin: int,
    count_max: int,
    mode: int,
    values: list[bytes] | None,
    index: list[int] | None,
) -> int:
    """Walk the frames of ``data`` (which holds the segment's bytes from ``origin``) from
    ``cursor`` until ``count_max`` records or a stop; advance ``cursor``; return why it
    stopped. The one loop every reader, recovery and indexing runs: the hottest of a
    replay, so locals only and one frame a turn."""
    frame_bytes, covered, unpack = fmt.frame_bytes, fmt.covered, fmt.fields.unpack_from
    crc32, batch_field = zlib.crc32, _BATCH.unpack_from
    v2 = fmt.version >= 2
    verify, checking = mode <= _RECOVER, _READ < mode < _SKIP
    at, count = cursor.position - origin, cursor.count
    batch_at, batch_count, left_expected = cursor.batch_position - origin, cursor.batch_count, cursor.left_expected
    end = len(data)
    reason = _LIMIT
    while count < count_max:
        if end - at < frame_bytes:
            reason = _END if at == end else _SHORT
            break
        length, left, crc = unpack(data, at)
        stop = at + frame_bytes + length
        if stop > end:
            header_bad = length > RECORD_BYTES_MAX or (v2 and crc32(data[at : at + 16]) != _RESIDUE)
            reason = _DAMAGED if header_bad else _SHORT
            break
        if verify:
            payload = data[at + frame_bytes : stop]
            if crc32(payload, crc32(data[at : at + covered])) != crc:
                reason = _DAMAGED
                break
            if values is not None:
                values.append(payload)
        elif v2 and crc32(data[at : at + 16]) != _RESIDUE:
            reason = _DAMAGED
            break
        if checking:
            if (
                length > RECORD_BYTES_MAX
                or (left_expected >= 0 and left != left_expected)
                or (v2 and batch_field(data, at + 8)[0] != origin + batch_at)
            ):
                reason = _MISPLACED
                break
            if index is not None and count % INDEX_STRIDE_RECORDS == 0:
                index.append(origin + at)
            left_expected = left - 1
        count += 1
        at = stop
        if left == 0:
            batch_at, batch_count = at, count
    cursor.position, cursor.count = origin + at, count
    cursor.batch_position, cursor.batch_count, cursor.left_expected = origin + batch_at, batch_count, left_expected
    return reason


def _walk_file(
    f: BinaryIO,
    fmt: _Format,
    cursor: _Cursor,
    count_max: int,
    mode: int,
    values: list[bytes] | None = None,
    index: list[int] | None = None,
) -> int:
    """``_walk`` over an open segment from ``cursor``, a chunk at a time, to a stop
    that more bytes cannot move (the file's end at the latest)."""
    f.seek(cursor.position)
    origin = cursor.position
    data = f.read(_READ_CHUNK_BYTES)
    while True:
        reason = _walk(fmt, cursor, data, origin, count_max, mode, values, index)
        if reason not in (_END, _SHORT):
            return reason
        more = f.read(_READ_CHUNK_BYTES)
        if not more:
            return reason
        data = data[cursor.position - origin :] + more
        origin = cursor.position


def _frame_intact(fmt: _Format, data: bytes, at: int) -> bool:
    """A frame at ``at`` whose header (format 2), or whole frame (format 1), is intact."""
    if fmt.version >= 2:
        return zlib.crc32(data[at : at + 16]) == _RESIDUE
    length, _left, crc = fmt.fields.unpack_from(data, at)
    stop = at + fmt.frame_bytes + length
    return (
        length <= RECORD_BYTES_MAX
        and stop <= len(data)
        and zlib.crc32(data[at + fmt.frame_bytes : stop], zlib.crc32(data[at : at + fmt.covered])) == crc
    )


def _later_batch(fmt: _Format, data: bytes, start: int, batch_position: int) -> int | None:
    """Where ``data`` (a segment's bytes from ``batch_position``, the start of its last
    incomplete batch) shows, at or after ``start``, a batch that begins after that one:
    an intact frame of another batch, or bytes past an intact last frame of this one.
    None if everything from ``start`` on can be part of the final batch. Format 1 frames
    do not name their batch, so any intact frame counts."""
    window = fmt.frame_bytes if fmt.version >= 2 else 12
    end = len(data)
    at = start
    scanned = 0
    while at + window <= end:
        if not data[at]:
            match = _NONZERO.search(data, at)
            if match is None:
                return None
            if match.start() - at >= window:
                at = match.start() - window + 1  # an all-zero window is no frame
                continue
        if not _frame_intact(fmt, data, at):
            at += 1
            scanned += 1
            if scanned > _RESYNC_BYTES_MAX:
                return at
            continue
        length, left, _crc = fmt.fields.unpack_from(data, at)
        if fmt.version < 2 or _BATCH.unpack_from(data, at + 8)[0] != batch_position:
            return at
        at += fmt.frame_bytes + length
        if left == 0 and _NONZERO.search(data, at) is not None:
            return at
    return None


def _zero_sector(data: bytes, origin: int, start: int, stop: int) -> bool:
    """Whether ``data[start:stop]`` (``data`` holds the file's bytes from ``origin``)
    meets a sector whose bytes in that range are all zeros: what damage from a torn
    write looks like."""
    stop = min(stop, len(data))
    at = start
    while at < stop:
        sector_end = (origin + at) // _SECTOR_BYTES * _SECTOR_BYTES + _SECTOR_BYTES - origin
        if not any(data[at : min(stop, sector_end)]):
            return True
        at = sector_end
    return False


class _Segment:
    __slots__ = ("base", "path", "count", "index", "size", "fmt", "damaged_at")

    def __init__(self, base: int, path: Path) -> None:
        self.base = base
        self.path = path
        self.count = -1  # records; -1 until known
        self.index: list[int] | None = None  # byte position of every STRIDE-th record
        self.size = 0  # bytes taken in: the end of the last complete batch
        self.fmt: _Format | None = None  # None until the header has been read
        self.damaged_at = -1  # offset of a record whose frame header is damaged, if known

    def empty(self, fmt: _Format) -> None:
        self.fmt, self.count, self.index, self.size = fmt, 0, [], fmt.header_bytes


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
                raise LogMissingError(f"{self.name}: no such directory")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
        self._segments: list[_Segment] = []
        try:
            self._open_segments()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        self._lock_fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        for _attempt in range(_LOCK_ATTEMPTS):
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(_LOCK_RETRY_S)
        os.close(self._lock_fd)
        self._lock_fd = -1
        raise WriterFencedError(f"{self.name}: another process has it open for writing")

    def _writer_active(self) -> bool:
        """Whether a writer holds the lock (a read-only log's question, asked without
        keeping any lock)."""
        try:
            fd = os.open(self.path / "LOCK", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases the shared lock
        return False

    def _open_segments(self) -> None:
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
        elif not self.readonly:
            self._new_segment(0)
        self._bases = [s.base for s in self._segments]

    # -- recovery -------------------------------------------------------------------

    def _read_header(self, segment: _Segment, data: bytes) -> _Format | None:
        """The format of a segment starting with ``data``; None while it is too short to
        hold its header, or when ``data`` is all zeros (a creation that never reached the
        disk: pass the whole file for that to mean anything)."""
        if len(data) < _SEGMENT_HEAD.size:
            return None
        magic, version, schema = _SEGMENT_HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            if not any(data):
                return None
            raise LogError(f"{self.name}: {segment.path.name} is not a log segment")
        fmt = _FORMATS.get(version)
        if fmt is None or schema > SCHEMA_VERSION:
            raise LogError(
                f"{self.name}: {segment.path.name} has format {version} schema {schema}; this library reads "
                f"formats {min(_FORMATS)} to {max(_FORMATS)} up to schema {SCHEMA_VERSION}"
            )
        if len(data) < fmt.header_bytes:
            return None
        if fmt.version >= 2 and zlib.crc32(data[: _SEGMENT_HEAD.size]) != _SEGMENT_CRC.unpack_from(data, 16)[0]:
            raise LogError(f"{self.name}: {segment.path.name} has a damaged header")
        return fmt

    def _recover(self, segment: _Segment) -> None:
        """Take in the last segment at open; cut (writer) or ignore (read-only) an
        incomplete final batch, and move a writer off a format-1 segment."""
        tail_bytes = self._take_in(segment)
        writing = not self.readonly
        if segment.fmt is None:
            if writing or not self._writer_active():
                self._note(
                    f"{segment.path.name}: {tail_bytes} bytes, an interrupted creation holding no records; "
                    + ("header rewritten" if writing else "ignored (read-only)")
                )
            if writing:
                self._write_header(segment.path)
                segment.empty(_V2)
            return
        if tail_bytes and (writing or not self._writer_active()):
            self._note_cut(segment, tail_bytes)
            if writing:
                with open(segment.path, "r+b") as f:
                    f.truncate(segment.size)
                    os.fsync(f.fileno())
        if writing and segment.fmt.version < FORMAT_VERSION:
            # Format-1 segments stay as they are; new records go to a format-2 segment.
            if segment.count == 0:
                self._write_header(segment.path)
                segment.empty(_V2)
            else:
                self._new_segment(segment.base + segment.count)

    def _take_in(self, segment: _Segment, tail_may_be_final: bool = True) -> int:
        """Extend ``segment`` by the complete batches past its known end; return the
        bytes left after them (an incomplete final batch, or a segment too short for its
        header). Damage before the final batch raises ``CorruptRecordError``; so does any
        leftover when ``tail_may_be_final`` is false."""
        with open(segment.path, "rb") as f:
            if segment.fmt is None:
                whole = f.read()
                fmt = self._read_header(segment, whole)
                if fmt is None:
                    segment.count, segment.index, segment.size = 0, [], 0
                    return len(whole)
                del whole
                segment.empty(fmt)
            fmt = segment.fmt
            assert fmt is not None and segment.index is not None
            cursor = _Cursor(segment.size, segment.count)
            reason = _walk_file(f, fmt, cursor, 2**63, _RECOVER, None, segment.index)
            del segment.index[(cursor.batch_count + INDEX_STRIDE_RECORDS - 1) // INDEX_STRIDE_RECORDS :]
            segment.count, segment.size = cursor.batch_count, cursor.batch_position
            f.seek(cursor.batch_position)
            tail = f.read()
        if not tail:
            return 0
        at = cursor.position - cursor.batch_position
        if reason == _MISPLACED:
            raise self._corrupt(segment, cursor, "is not where its batch says it is")
        if reason == _DAMAGED or (reason == _SHORT and fmt.version < 2):
            later = _later_batch(fmt, tail, at + 1, cursor.batch_position)
            if later is not None:
                raise self._corrupt(
                    segment, cursor, f"fails its checksum, and records follow it (byte {cursor.batch_position + later})"
                )
        if reason == _DAMAGED:
            frame_end = at + fmt.frame_bytes
            if fmt.version >= 2 and zlib.crc32(tail[at : at + 16]) == _RESIDUE:
                frame_end += fmt.fields.unpack_from(tail, at)[0]  # the length is intact
            if not _zero_sector(tail, cursor.batch_position, at, frame_end):
                raise self._corrupt(segment, cursor, "fails its checksum, and its damage is not a torn write's zeros")
        if not tail_may_be_final:
            raise self._corrupt(segment, cursor, "is incomplete, and the writer has gone on to a later segment")
        return len(tail)

    def _corrupt(self, segment: _Segment, cursor: _Cursor, what: str) -> CorruptRecordError:
        offset = segment.base + cursor.count
        return CorruptRecordError(
            f"{self.name}: record at offset {offset} ({segment.path.name} byte {cursor.position}) {what}", offset
        )

    def _note_cut(self, segment: _Segment, tail_bytes: int) -> None:
        assert segment.fmt is not None
        fmt = segment.fmt
        with open(segment.path, "rb") as f:
            f.seek(segment.size)
            first = f.read(fmt.frame_bytes)
        records = "an unknown number of records"
        if fmt.version >= 2 and len(first) == fmt.frame_bytes and zlib.crc32(first[:16]) == _RESIDUE:
            records = f"{fmt.fields.unpack_from(first)[1] + 1} records"
        action = "ignored (read-only)" if self.readonly else "truncated"
        self._note(
            f"{segment.path.name}: torn append at offset {segment.base + segment.count}: the final batch "
            f"({records}, {tail_bytes} bytes from byte {segment.size}) is incomplete or damaged; {action}"
        )

    def _note(self, message: str) -> None:
        if message != self.recovered:
            self.recovered = message
            log.warning("%s: %s", self.name, message)

    # -- writing --------------------------------------------------------------------

    def _write_header(self, path: Path) -> None:
        with open(path, "wb") as f:
            f.write(_segment_header())
            if self.fsync is FsyncPolicy.ALWAYS:
                os.fsync(f.fileno())

    def _new_segment(self, base: int) -> None:
        segment = _Segment(base, self.path / f"{base:020d}{_SUFFIX}")
        self._write_header(segment.path)
        if self.fsync is FsyncPolicy.ALWAYS:
            dir_fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        segment.empty(_V2)
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
        batch_bytes = 0
        for record in records:
            size = len(record)
            if size > RECORD_BYTES_MAX:
                raise LogError(f"{self.name}: record of {size} bytes over RECORD_BYTES_MAX {RECORD_BYTES_MAX}")
            batch_bytes += FRAME_BYTES + size
        segment = self._segments[-1]
        if segment.count > 0 and segment.size + batch_bytes > self.segment_bytes_max:
            self._new_segment(segment.base + segment.count)
            segment = self._segments[-1]
        if segment.size + batch_bytes > _SEGMENT_POSITION_MAX:
            raise LogError(f"{self.name}: a batch of {batch_bytes} bytes does not fit in a segment")
        buffer = encode_batch(records, segment.size)
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
                if size > last.size and self._take_in(last):
                    self._check_stalled(last)
                if last.count == 0:
                    return
                base = last.base + last.count
            else:
                base = 0
            # A writer starts a segment only after its previous one holds complete
            # batches, and names it by the offset that follows them.
            following = _Segment(base, self.path / f"{base:020d}{_SUFFIX}")
            if not following.path.exists():
                return
            following.count, following.index = 0, []
            self._segments.append(following)
            self._bases.append(base)

    def _check_stalled(self, segment: _Segment) -> None:
        """``segment`` has bytes past its last complete batch. That is a write in
        progress, unless the writer has already moved on to a later segment (it rolls
        over only after a complete batch): then those bytes are corrupt."""
        later = [p for p in self.path.glob("*" + _SUFFIX) if p.name > segment.path.name]
        if later:
            # The writer never touches a segment again once it has started the next, so
            # the file is final now: look once more (it may have finished meanwhile).
            self._take_in(segment, tail_may_be_final=False)
        elif segment.fmt is not None and not self._writer_active():
            self._note_cut(segment, os.stat(segment.path).st_size - segment.size)

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
        """Index a closed segment by its frame headers (payloads are verified on read)."""
        with open(segment.path, "rb") as f:
            fmt = self._read_header(segment, f.read(_HEADER_BYTES_MAX))
            if fmt is None:
                raise CorruptRecordError(
                    f"{self.name}: {segment.path.name} ends inside its header, before record {segment.base}",
                    segment.base,
                )
            index: list[int] = []
            cursor = _Cursor(fmt.header_bytes, 0)
            reason = _walk_file(f, fmt, cursor, segment.count, _INDEX, None, index)
            file_bytes = os.fstat(f.fileno()).st_size
        if reason == _LIMIT and cursor.position < file_bytes:
            raise CorruptRecordError(
                f"{self.name}: {segment.path.name} has {file_bytes - cursor.position} bytes after its "
                f"{segment.count} records (byte {cursor.position}), which the next segment's name accounts for",
                segment.base + segment.count,
            )
        segment.fmt, segment.index = fmt, index
        if reason == _LIMIT and cursor.batch_count == segment.count:
            return
        # Records before the damage stay readable; reads that reach it raise.
        segment.damaged_at = segment.base + (cursor.batch_count if reason == _LIMIT else cursor.count)
        del index[(segment.damaged_at - segment.base + INDEX_STRIDE_RECORDS - 1) // INDEX_STRIDE_RECORDS :]

    def _damaged(self, segment: _Segment, offset: int) -> CorruptRecordError:
        return CorruptRecordError(
            f"{self.name}: record at offset {offset} ({segment.path.name}) has a damaged or missing frame, "
            f"or the segment does not end where its {segment.count} records do",
            offset,
        )

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
        assert segment.index is not None and segment.fmt is not None
        count = min(max_records, segment.base + segment.count - offset)
        if segment.damaged_at >= 0 and offset + count > segment.damaged_at:
            if offset >= segment.damaged_at:
                raise self._damaged(segment, segment.damaged_at)
            count = segment.damaged_at - offset
        within = offset - segment.base
        stride = within // INDEX_STRIDE_RECORDS
        skip = within - stride * INDEX_STRIDE_RECORDS
        values: list[bytes] = []
        cursor = _Cursor(segment.index[stride], stride * INDEX_STRIDE_RECORDS)
        with open(segment.path, "rb") as f:
            reason = _walk_file(f, segment.fmt, cursor, within, _SKIP) if skip else _LIMIT
            if reason == _LIMIT:
                reason = _walk_file(f, segment.fmt, cursor, within + count, _READ, values)
        if reason != _LIMIT:
            record = segment.base + cursor.count
            what = "fails its checksum" if reason == _DAMAGED else "is cut short: the segment ends inside it"
            raise CorruptRecordError(f"{self.name}: record at offset {record} ({segment.path.name}) {what}", record)
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
