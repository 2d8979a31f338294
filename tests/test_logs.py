"""One suite for every log backend (memory, file), plus the file log's crash recovery."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledger import CorruptRecordError, FileLog, FsyncPolicy, LogError, MemoryLog
from ledger.logs.base import scan
from ledger.logs.file import FRAME_BYTES, HEADER_BYTES, encode_batch


@pytest.fixture(params=["memory", "file", pytest.param("kafka", marks=pytest.mark.kafka)])
def make_log(request, tmp_path):
    opened = []

    def make():
        if request.param == "memory":
            log = MemoryLog()
        elif request.param == "file":
            log = FileLog(tmp_path / "log", fsync=FsyncPolicy.NEVER, segment_bytes_max=4096)
        else:
            log = request.getfixturevalue("kafka_log_factory")()
        opened.append(log)
        return log

    yield make
    for log in opened:
        log.close()


def test_append_returns_first_offset_and_reads_back(make_log) -> None:
    log = make_log()
    assert log.end_offset() == 0
    assert log.append([b"a", b"bb"]) == 0
    assert log.append([b"ccc"]) == 2
    assert log.end_offset() == 3
    batch = log.read(0)
    assert (batch.offsets, batch.values, batch.next_offset) == ([0, 1, 2], [b"a", b"bb", b"ccc"], 3)
    assert log.read(2).values == [b"ccc"]
    assert log.read(3).values == []


def test_reads_from_any_offset_across_segments(make_log) -> None:
    log = make_log()
    records = [f"record-{i}".encode() * (1 + i % 7) for i in range(3000)]
    for start in range(0, len(records), 97):
        log.append(records[start : start + 97])
    assert log.end_offset() == len(records)
    for offset in (0, 1, 96, 97, 1234, 2999, 2500):
        assert log.read(offset, 5).values == records[offset : offset + 5]
    assert [v for b in scan(log) for v in b.values] == records


def test_file_log_reopens_with_everything(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, segment_bytes_max=2048) as log:
        for i in range(500):
            log.append([f"{i}".encode()])
    assert len(list(path.glob("*.seg"))) > 1
    with FileLog(path) as log:
        assert log.end_offset() == 500
        assert log.recovered == ""
        assert log.read(499).values == [b"499"]
        assert log.append([b"500"]) == 500


def test_file_log_refuses_a_second_writer(tmp_path: Path) -> None:
    with FileLog(tmp_path / "log"), pytest.raises(LogError, match="another process"):
        FileLog(tmp_path / "log")


def test_crash_mid_append_loses_only_the_partial_batch(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path) as log:
        log.append([b"one", b"two"])
        log.append([b"three"])
    segment = next(path.glob("*.seg"))
    good_size = segment.stat().st_size
    # A crash while appending a batch of two: the first frame whole, the second cut.
    payload_a, payload_b = b"four", b"five-and-more"
    with open(segment, "ab") as f:
        f.write(encode_batch([payload_a, payload_b], good_size)[:-5])
    with FileLog(path) as log:
        assert log.end_offset() == 3
        assert "torn append" in log.recovered
        assert [v for b in scan(log) for v in b.values] == [b"one", b"two", b"three"]
        assert log.append([b"again"]) == 3
    assert segment.stat().st_size == good_size + FRAME_BYTES + len(b"again")


def test_torn_tail_of_zeros_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path) as log:
        log.append([b"x"])
    with open(next(path.glob("*.seg")), "ab") as f:
        f.write(b"\0" * 100)
    with FileLog(path) as log:
        assert log.end_offset() == 1 and "torn append" in log.recovered


def test_flipped_byte_is_detected_with_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path) as log:
        log.append([b"alpha", b"bravo", b"charlie", b"delta"])
    segment = next(path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    # Flip one payload byte of record 2 ("charlie").
    position = HEADER_BYTES + 2 * FRAME_BYTES + len(b"alpha") + len(b"bravo") + FRAME_BYTES + 3
    assert data[position : position + 1] == b"r"
    data[position] ^= 0x01
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError) as caught:
        FileLog(path)
    assert caught.value.offset == 2
    assert "offset 2" in str(caught.value)
    # A reader that opened before the flip sees it on read, with the same offset.
    assert segment.read_bytes() == bytes(data)


def test_flip_in_a_closed_segment_is_caught_on_read(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with FileLog(path, segment_bytes_max=256) as log:
        for i in range(40):
            log.append([f"rec{i:03d}".encode()])
    first = sorted(path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[HEADER_BYTES + FRAME_BYTES + 1] ^= 0xFF  # record 0's payload
    first.write_bytes(bytes(data))
    with FileLog(path, readonly=True) as log:
        assert log.read(1, 1).values == [b"rec001"]
        with pytest.raises(CorruptRecordError, match="offset 0"):
            log.read(0, 1)


def test_fsync_always_syncs(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    with FileLog(tmp_path / "log", fsync=FsyncPolicy.ALWAYS) as log:
        before = len(calls)
        log.append([b"x"])
        assert len(calls) == before + 1
    with FileLog(tmp_path / "log2", fsync=FsyncPolicy.NEVER) as log:
        before = len(calls)
        log.append([b"x"])
        assert len(calls) == before


def test_a_crash_while_creating_a_segment_leaves_every_offset_readable(tmp_path: Path) -> None:
    """The segment file was cut inside its header; the reopened writer must index the
    records it then appends from the first one (a stale entry once made every read past
    INDEX_STRIDE_RECORDS return records from the segment's start)."""
    from ledger.protocol.limits import INDEX_STRIDE_RECORDS

    (tmp_path / "00000000000000000000.seg").write_bytes(b"LEDG")
    log = FileLog(tmp_path, fsync=FsyncPolicy.NEVER)
    count = INDEX_STRIDE_RECORDS + 10
    log.append([str(i).encode() for i in range(count)])
    for offset in (0, INDEX_STRIDE_RECORDS - 1, INDEX_STRIDE_RECORDS, count - 1):
        assert log.read(offset, 1).values == [str(offset).encode()]
    log.close()


def test_a_read_only_log_follows_its_writer_batch_by_batch(tmp_path: Path) -> None:
    """Another process's reader sees complete batches as they land, across segment
    rollovers, and never a batch still being written."""
    writer = FileLog(tmp_path, fsync=FsyncPolicy.NEVER, segment_bytes_max=4096)
    reader = FileLog(tmp_path, readonly=True)
    assert reader.end_offset() == 0
    written: list[bytes] = []
    for batch in range(40):
        records = [f"{batch}-{i}".encode() * 10 for i in range(7)]
        writer.append(records)
        written += records
        assert reader.end_offset() == len(written)
    assert len(list(tmp_path.glob("*.seg"))) > 3, "the test must cross segment rollovers"
    assert [v for b in scan(reader) for v in b.values] == written
    # A batch whose last frame is not there yet stays invisible, then appears whole.
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    whole = segment.read_bytes()
    writer.append([b"x" * 50, b"y" * 50])
    complete = segment.read_bytes()
    segment.write_bytes(complete[: len(whole) + FRAME_BYTES + 50 + 5])
    assert reader.end_offset() == len(written)
    segment.write_bytes(complete)
    assert reader.end_offset() == len(written) + 2
    assert reader.read(len(written), 2).values == [b"x" * 50, b"y" * 50]
    writer.close()
    reader.close()


def test_a_following_reader_raises_on_corruption_instead_of_stalling(tmp_path: Path) -> None:
    """A corrupt record under a following reader is an error naming its offset, never a
    silent stop (nor a silent skip); so is a segment that shrinks under it."""
    writer = FileLog(tmp_path, fsync=FsyncPolicy.NEVER, segment_bytes_max=2048)
    reader = FileLog(tmp_path, readonly=True)
    writer.append([b"a" * 100, b"b" * 100])
    assert reader.end_offset() == 2
    writer.append([b"c" * 100])
    writer.append([b"d" * 100])
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(segment.read_bytes())
    third = HEADER_BYTES + 2 * (FRAME_BYTES + 100)
    data[third + FRAME_BYTES + 5] ^= 0xFF  # a payload byte of record 2
    segment.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match="offset 2") as caught:
        reader.end_offset()
    assert caught.value.offset == 2
    writer.close()

    shrinking = tmp_path / "shrinking"
    writer = FileLog(shrinking, fsync=FsyncPolicy.NEVER)
    writer.append([b"x" * 50, b"y" * 50])
    follower = FileLog(shrinking, readonly=True)
    assert follower.end_offset() == 2
    (only,) = shrinking.glob("*.seg")
    only.write_bytes(only.read_bytes()[: HEADER_BYTES + FRAME_BYTES + 50])
    with pytest.raises(LogError, match="shrank"):
        follower.end_offset()
    writer.close()
