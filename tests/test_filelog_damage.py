"""The file log never cuts an acknowledged byte: damage is an error naming its offset,
only the final batch is ever cut (with a warning naming its offset), a torn write is
recovered, format-1 logs stay readable, and a reader survives a segment being created."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger import EVENTS, CorruptRecordError, FileLog, FsyncPolicy, LogError, replay
from ledger.app.cli import main as cli_main
from ledger.logs.base import scan
from ledger.logs.file import FRAME_BYTES, HEADER_BYTES, encode_batch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEGMENT_BYTES_MAX = 2048
SECTOR_BYTES = 512


@dataclass(frozen=True)
class Frame:
    segment: str
    position: int  # of its header in the segment
    end: int  # one past its payload
    offset: int  # log offset of its record


@dataclass(frozen=True)
class Built:
    """A log as bytes: its segment files, records, frames, and where its final batch starts."""

    files: dict[str, bytes]
    records: list[bytes]
    frames: list[Frame]
    final_position: int  # in the last segment
    final_offset: int

    @property
    def last(self) -> str:
        return max(self.files)


def build_log(directory: Path, rng: random.Random) -> Built:
    """Three segments, the last holding at least four batches, records of 8 to 120 bytes."""
    records: list[bytes] = []
    with FileLog(directory, fsync=FsyncPolicy.NEVER, segment_bytes_max=SEGMENT_BYTES_MAX) as log:
        while True:
            batch = [rng.randbytes(rng.randint(8, 120)) for _ in range(rng.randint(1, 6))]
            log.append(batch)
            records += batch
            segments = sorted(directory.glob("*.seg"))
            if len(segments) == 3 and len(batch_starts(segments[-1].read_bytes())) >= 4:
                break
    files = {p.name: p.read_bytes() for p in sorted(directory.glob("*.seg"))}
    frames = [frame for name, data in files.items() for frame in parse_frames(name, data)]
    last = files[max(files)]
    final_position = batch_starts(last)[-1]
    final_offset = next(f.offset for f in frames if f.segment == max(files) and f.position == final_position)
    return Built(files, records, frames, final_position, final_offset)


def parse_frames(name: str, data: bytes) -> list[Frame]:
    frames, position, offset = [], HEADER_BYTES, int(name[:-4])
    while position < len(data):
        (length,) = struct.unpack_from("<I", data, position)
        frames.append(Frame(name, position, position + FRAME_BYTES + length, offset))
        position += FRAME_BYTES + length
        offset += 1
    return frames


def batch_starts(data: bytes) -> list[int]:
    starts, position = [], HEADER_BYTES
    while position < len(data):
        length, _left, batch = struct.unpack_from("<III", data, position)
        if batch == position:
            starts.append(position)
        position += FRAME_BYTES + length
    return starts


@dataclass(frozen=True)
class Outcome:
    error: LogError | None
    records: list[bytes]
    recovered: str
    after: dict[str, bytes]  # the files once the log is closed


def open_and_read(directory: Path, files: dict[str, bytes], writer: bool) -> Outcome:
    for old in directory.glob("*.seg"):
        old.unlink()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    records: list[bytes] = []
    recovered = ""
    try:
        with FileLog(directory, readonly=not writer, fsync=FsyncPolicy.NEVER) as log:
            recovered = log.recovered
            records = [v for b in scan(log) for v in b.values]
        error = None
    except LogError as caught:
        error = caught
    after = {p.name: p.read_bytes() for p in sorted(directory.glob("*.seg"))}
    return Outcome(error, records, recovered, after)


def damaged_offsets(built: Built, damage: list[tuple[str, int]]) -> set[int]:
    """The record offsets whose frames hold a damaged byte (a segment header counts as
    its segment's first record)."""
    offsets = set()
    for name, position in damage:
        if position < HEADER_BYTES:
            offsets.add(int(name[:-4]))
        else:
            offsets.add(next(f.offset for f in built.frames if f.segment == name and f.position <= position < f.end))
    return offsets


def check_no_silent_loss(
    built: Built, damaged: dict[str, bytes], damage: list[tuple[str, int]], outcome: Outcome, writer: bool
) -> str:
    """Damage is an error naming a damaged record's offset, with every file left as it
    was; or a reported cut of exactly the final batch, when all the damage is inside it,
    with nothing before it touched. Returns which of the two it was."""
    if outcome.error is not None:
        assert outcome.after == damaged, "an error changed files"
        if isinstance(outcome.error, CorruptRecordError):
            offsets = damaged_offsets(built, damage)
            assert outcome.error.offset in offsets, (outcome.error, offsets)
            assert f"offset {outcome.error.offset}" in str(outcome.error)
        else:
            assert any(position < HEADER_BYTES for _name, position in damage), outcome.error
        return "error"
    assert outcome.records == built.records[: len(outcome.records)], "a record changed silently"
    assert len(outcome.records) == built.final_offset, f"damage {damage} went unnoticed or cut the wrong amount"
    assert all(name == built.last and position >= built.final_position for name, position in damage), damage
    assert f"torn append at offset {built.final_offset}" in outcome.recovered
    if writer:
        assert outcome.after == {**damaged, built.last: damaged[built.last][: built.final_position]}
    else:
        assert outcome.after == damaged
    return "cut"


def damaged_files(built: Built, damage: list[tuple[str, int]], values: list[int]) -> dict[str, bytes]:
    files = {name: bytearray(data) for name, data in built.files.items()}
    for (name, position), value in zip(damage, values, strict=True):
        files[name][position] = value
    return {name: bytes(data) for name, data in files.items()}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    return build_log(tmp_path_factory.mktemp("built"), random.Random(41))


# -- the bit sweep -------------------------------------------------------------------


def sweep_frames(built: Built) -> list[Frame]:
    """A frame at the start, the middle and the end of the first (closed) and the last
    segment: the last one of all is inside the final batch."""
    chosen = []
    for name in (min(built.files), built.last):
        frames = [f for f in built.frames if f.segment == name]
        chosen += [frames[0], frames[len(frames) // 2], frames[-1]]
    return chosen


@pytest.mark.parametrize("writer", [False, True], ids=["read-only", "writer"])
def test_every_bit_of_every_frame_header_field(built: Built, tmp_path: Path, writer: bool) -> None:
    """Length, left, batch, header_crc and crc of a frame at the start, middle and end of
    a closed and of the last segment: damage before the final batch is an error naming
    the frame's record; inside it, an error or a reported cut of it."""
    kinds = {"error": 0, "cut": 0}
    for frame in sweep_frames(built):
        for byte in range(FRAME_BYTES):
            for bit in range(8):
                damage = [(frame.segment, frame.position + byte)]
                damaged = damaged_files(built, damage, [built.files[frame.segment][frame.position + byte] ^ 1 << bit])
                outcome = open_and_read(tmp_path, damaged, writer)
                kind = check_no_silent_loss(built, damaged, damage, outcome, writer)
                if frame.segment != built.last or frame.position < built.final_position:
                    assert kind == "error", (frame, byte, bit)
                    assert isinstance(outcome.error, CorruptRecordError) and outcome.error.offset == frame.offset
                kinds[kind] += 1
    assert sum(kinds.values()) == 6 * FRAME_BYTES * 8


@pytest.mark.parametrize("writer", [False, True], ids=["read-only", "writer"])
def test_every_bit_of_a_segment_header(built: Built, tmp_path: Path, writer: bool) -> None:
    for name in (min(built.files), built.last):
        for byte in range(HEADER_BYTES):
            for bit in range(8):
                files = dict(built.files)
                data = bytearray(files[name])
                data[byte] ^= 1 << bit
                files[name] = bytes(data)
                outcome = open_and_read(tmp_path, files, writer)
                assert outcome.error is not None, (name, byte, bit)
                assert outcome.after == files


# -- random damage --------------------------------------------------------------------


RANDOM_CASES = 3000


def test_random_damage_is_never_silent(built: Built, tmp_path: Path) -> None:
    """1 to 4 bytes anywhere in the log set to other values, seeded, half the cases
    opened by a writer: never a silent loss, never a silently changed record."""
    rng = random.Random(20240601)
    places = [(name, position) for name, data in built.files.items() for position in range(len(data))]
    kinds = {"error": 0, "cut": 0}
    for case in range(RANDOM_CASES):
        damage = rng.sample(places, rng.randint(1, 4))
        values = [(built.files[name][position] + rng.randint(1, 255)) % 256 for name, position in damage]
        damaged = damaged_files(built, damage, values)
        writer = case % 2 == 1
        kinds[check_no_silent_loss(built, damaged, damage, open_and_read(tmp_path, damaged, writer), writer)] += 1
    assert sum(kinds.values()) == RANDOM_CASES


# -- torn writes are recovered ----------------------------------------------------------


@pytest.fixture(scope="module")
def torn_base(tmp_path_factory) -> tuple[bytes, int, list[bytes]]:
    """A one-segment log of four small batches, and a final batch of 30 records spanning
    several sectors: the segment's bytes, where the final batch starts, the records."""
    directory = tmp_path_factory.mktemp("torn")
    rng = random.Random(5)
    records: list[bytes] = []
    with FileLog(directory, fsync=FsyncPolicy.NEVER) as log:
        for _ in range(4):
            batch = [rng.randbytes(rng.randint(10, 60)) for _ in range(3)]
            log.append(batch)
            records += batch
        (segment,) = directory.glob("*.seg")
        final_position = segment.stat().st_size
        batch = [rng.randbytes(100) for _ in range(30)]
        log.append(batch)
        records += batch
    return segment.read_bytes(), final_position, records


def torn_cases(data: bytes, final_position: int, rng: random.Random) -> list[bytes]:
    """What a crash during the final append can leave: the file cut anywhere in the batch,
    and sectors of the batch that never reached the disk (zeros), cut or not."""
    cases = [data[:cut] for cut in range(final_position + 1, len(data), 7)]
    sectors = range(final_position // SECTOR_BYTES, (len(data) - 1) // SECTOR_BYTES + 1)
    for _ in range(150):
        torn = bytearray(data)
        for sector in rng.sample(list(sectors), rng.randint(1, 2)):
            start = max(final_position, sector * SECTOR_BYTES)
            stop = min(len(data), (sector + 1) * SECTOR_BYTES)
            torn[start:stop] = bytes(stop - start)
        cut = rng.choice([len(data), rng.randint(final_position + 1, len(data))])
        cases.append(bytes(torn[:cut]))
    return cases


@pytest.mark.parametrize("writer", [False, True], ids=["read-only", "writer"])
def test_a_torn_final_batch_is_cut_with_its_offset_and_size(torn_base, tmp_path: Path, writer: bool) -> None:
    data, final_position, records = torn_base
    for torn in torn_cases(data, final_position, random.Random(8)):
        if torn == data:
            continue
        outcome = open_and_read(tmp_path, {"00000000000000000000.seg": torn}, writer)
        assert outcome.error is None, outcome.error
        assert outcome.records == records[:12]
        assert "torn append at offset 12" in outcome.recovered
        assert outcome.after["00000000000000000000.seg"] == (torn[:final_position] if writer else torn)


def test_a_torn_batch_reports_how_many_records_went(torn_base, tmp_path: Path) -> None:
    data, final_position, _records = torn_base
    outcome = open_and_read(tmp_path, {"00000000000000000000.seg": data[:-10]}, writer=True)
    assert "torn append at offset 12: the final batch (30 records," in outcome.recovered
    assert f"{len(data) - 10 - final_position} bytes from byte {final_position}" in outcome.recovered


# -- regressions ------------------------------------------------------------------------


@pytest.mark.parametrize("bit", range(16, 32))
def test_a_damaged_length_pointing_past_the_end_is_damage_not_a_torn_tail(built: Built, tmp_path: Path, bit) -> None:
    """Bug: a flipped high bit of a frame's length made the frame seem to run past the end:
    read-only readers stopped there and reported success, and a writer truncated."""
    last = [f for f in built.frames if f.segment == built.last]
    middle = last[len(last) // 2]
    assert middle.offset < built.final_offset
    data = bytearray(built.files[built.last])
    data[middle.position + bit // 8] ^= 1 << (bit % 8)
    files = {**built.files, built.last: bytes(data)}
    for writer in (False, True):
        outcome = open_and_read(tmp_path, files, writer)
        assert isinstance(outcome.error, CorruptRecordError)
        assert outcome.error.offset == middle.offset
        assert outcome.after == files


def test_replay_of_a_log_with_a_damaged_length_fails(built: Built, tmp_path: Path, capsys) -> None:
    last = [f for f in built.frames if f.segment == built.last]
    middle = last[len(last) // 2]
    data = bytearray(built.files[built.last])
    data[middle.position + 2] ^= 0x01
    for name, content in {**built.files, built.last: bytes(data)}.items():
        (tmp_path / name).write_bytes(content)
    assert cli_main(["replay", "--log", str(tmp_path)]) == 2
    assert f"offset {middle.offset}" in capsys.readouterr().err


@pytest.mark.parametrize("size", [0, 8, 12, HEADER_BYTES - 1, HEADER_BYTES])
def test_a_reader_survives_a_segment_being_created(tmp_path: Path, size: int) -> None:
    """Bug: a crash while creating a segment made every read-only open fail."""
    with FileLog(tmp_path, fsync=FsyncPolicy.NEVER) as log:
        log.append([b"a", b"b"])
        log.append([b"c"])
        header = (tmp_path / "00000000000000000000.seg").read_bytes()[:HEADER_BYTES]
    creating = tmp_path / "00000000000000000003.seg"
    creating.write_bytes(header[:size])
    with FileLog(tmp_path, readonly=True) as reader:
        assert reader.end_offset() == 3
        assert [v for b in scan(reader) for v in b.values] == [b"a", b"b", b"c"]
        assert ("interrupted creation" in reader.recovered) == (size < HEADER_BYTES)
        # The writer comes back and goes on; the reader follows.
        with FileLog(tmp_path, fsync=FsyncPolicy.NEVER) as writer:
            assert writer.append([b"d"]) == 3
        assert reader.end_offset() == 4
        assert reader.read(3).values == [b"d"]


def test_a_reader_sees_a_segment_created_while_it_follows(tmp_path: Path) -> None:
    writer = FileLog(tmp_path, fsync=FsyncPolicy.NEVER)
    writer.append([b"a"])
    reader = FileLog(tmp_path, readonly=True)
    (tmp_path / "00000000000000000001.seg").write_bytes(b"LEDGRLOG")  # being created
    assert reader.end_offset() == 1
    assert reader.recovered == ""  # the writer holds its lock: a creation in progress
    writer.close()
    reader.close()


def test_the_torn_tail_warning_names_the_true_offset(tmp_path: Path, caplog) -> None:
    """Bug: every torn-tail message said the log ends at offset 0."""
    with FileLog(tmp_path, fsync=FsyncPolicy.NEVER) as log:
        log.append([b"one", b"two"])
        log.append([b"three"])
        segment = tmp_path / "00000000000000000000.seg"
        good = segment.stat().st_size
    with open(segment, "ab") as f:
        f.write(encode_batch([b"four", b"five"], good)[:-2])
    with FileLog(tmp_path, readonly=True) as reader:
        assert "torn append at offset 3:" in reader.recovered
        assert "(2 records," in reader.recovered and "ignored (read-only)" in reader.recovered
    with FileLog(tmp_path) as writer:
        assert "torn append at offset 3:" in writer.recovered and "truncated" in writer.recovered
        assert writer.end_offset() == 3
    assert "torn append at offset 3" in caplog.text
    assert segment.stat().st_size == good


def test_a_reader_takes_an_incomplete_tail_for_a_batch_in_progress_while_the_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    writer = FileLog(tmp_path, fsync=FsyncPolicy.NEVER)
    writer.append([b"x" * 50])
    segment = tmp_path / "00000000000000000000.seg"
    good = segment.stat().st_size
    with open(segment, "ab") as f:  # the first bytes of the writer's next batch
        f.write(encode_batch([b"y" * 50, b"z" * 50], good)[:30])
    with FileLog(tmp_path, readonly=True) as reader:
        assert reader.end_offset() == 1 and reader.recovered == ""
    writer.close()  # the writer is gone: the tail is a torn append now
    with FileLog(tmp_path, readonly=True) as reader:
        assert reader.end_offset() == 1 and "torn append at offset 1" in reader.recovered


def test_damage_before_the_final_batch_under_a_live_writer_is_an_error(built: Built, tmp_path: Path) -> None:
    for name, content in built.files.items():
        (tmp_path / name).write_bytes(content)
    writer = FileLog(tmp_path, fsync=FsyncPolicy.NEVER)
    writer.append([b"more"])
    last = [f for f in built.frames if f.segment == built.last]
    data = bytearray((tmp_path / built.last).read_bytes())
    data[last[1].position + 9] ^= 0x10  # the batch field of a frame before the final batch
    (tmp_path / built.last).write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match=f"offset {last[1].offset}"):
        FileLog(tmp_path, readonly=True)
    writer.close()


# -- format 1 --------------------------------------------------------------------------


@pytest.fixture
def v1_log(tmp_path: Path) -> Path:
    copy = tmp_path / "v1"
    shutil.copytree(FIXTURES / "filelog-v1", copy)
    return copy


def v1_manifest() -> dict:
    return json.loads((FIXTURES / "filelog-v1.json").read_text())


def records_digest(records: list[bytes]) -> str:
    return hashlib.sha256(b"".join(hashlib.sha256(r).digest() for r in records)).hexdigest()


def v1_frame(payload: bytes, left: int) -> bytes:
    head = struct.pack("<II", len(payload), left)
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head))) + payload


def test_a_format_1_log_reads_and_replays(v1_log: Path) -> None:
    manifest = v1_manifest()
    with FileLog(v1_log, readonly=True) as log:
        assert log.recovered == ""
        records = [v for b in scan(log) for v in b.values]
        core = replay(log)
    assert len(records) == manifest["records"] and records_digest(records) == manifest["records_sha256"]
    assert (core.state_hash(), core.state.seq) == (manifest["state_hash"], manifest["last_seq"])
    assert EVENTS.decode(records[-1]).amount == 2**127 - 1


def test_a_writer_seals_a_format_1_log_and_appends_in_format_2(v1_log: Path) -> None:
    manifest = v1_manifest()
    (v1_segment,) = v1_log.glob("*.seg")
    before = v1_segment.read_bytes()
    with FileLog(v1_log, fsync=FsyncPolicy.NEVER) as log:
        assert log.recovered == ""
        assert log.append([b"after-1", b"after-2"]) == manifest["records"]
    with FileLog(v1_log, fsync=FsyncPolicy.NEVER) as log:
        assert log.append([b"after-3"]) == manifest["records"] + 2
    assert v1_segment.read_bytes() == before
    segments = sorted(v1_log.glob("*.seg"))
    assert [p.name for p in segments] == [v1_segment.name, f"{manifest['records']:020d}.seg"]
    assert struct.unpack_from("<I", segments[1].read_bytes(), 8)[0] == 2
    with FileLog(v1_log, readonly=True) as log:
        records = [v for b in scan(log) for v in b.values]
    assert records_digest(records[: manifest["records"]]) == manifest["records_sha256"]
    assert records[manifest["records"] :] == [b"after-1", b"after-2", b"after-3"]


def test_a_torn_format_1_tail_is_cut_with_its_offset(v1_log: Path) -> None:
    manifest = v1_manifest()
    (v1_segment,) = v1_log.glob("*.seg")
    size = v1_segment.stat().st_size
    with open(v1_segment, "ab") as f:
        f.write((v1_frame(b"torn-1", 1) + v1_frame(b"torn-2", 0))[:-3])
    with FileLog(v1_log, readonly=True) as log:
        assert f"torn append at offset {manifest['records']}" in log.recovered
        assert log.end_offset() == manifest["records"]
    with FileLog(v1_log, fsync=FsyncPolicy.NEVER) as log:
        assert f"torn append at offset {manifest['records']}" in log.recovered
    assert v1_segment.stat().st_size == size


@pytest.mark.parametrize("bit", [17, 20, 27])
def test_a_damaged_format_1_length_is_an_error_when_records_follow(v1_log: Path, bit: int) -> None:
    (v1_segment,) = v1_log.glob("*.seg")
    data = bytearray(v1_segment.read_bytes())
    position, offset = 16, 0
    while offset < 100:  # the frame of record 100
        position += 12 + struct.unpack_from("<I", data, position)[0]
        offset += 1
    data[position + bit // 8] ^= 1 << (bit % 8)
    v1_segment.write_bytes(bytes(data))
    for readonly in (True, False):
        with pytest.raises(CorruptRecordError, match="offset 100"):
            FileLog(v1_log, readonly=readonly)
    assert v1_segment.read_bytes() == bytes(data)
