"""Crash recovery of the UBSCore stage: kill -9 at random points, restart, and the output
is exactly what an uninterrupted run produces (nothing lost, nothing doubled)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger import COMMANDS, EVENTS, FileLog, FsyncPolicy, MemoryLog, SequenceError
from ledger.app.stage import UBSCoreStage
from ledger.logs.base import LogError, scan
from ledger.replay import replay
from support import seeded_commands

COMMAND_COUNT = 20_000


@pytest.fixture(scope="module")
def commands() -> list:
    return seeded_commands(seed=21, count=COMMAND_COUNT)


def uninterrupted_hash(commands: list) -> tuple[str, int]:
    source, sink = MemoryLog(), MemoryLog()
    source.append([COMMANDS.encode(c) for c in commands])
    stage = UBSCoreStage(source, sink)
    stage.run(batch_commands=200)
    return stage.core.state_hash(), stage.core.state.seq


def assert_exactly_once(events_log, command_count: int, expected_hash: str, expected_seq: int) -> None:
    offsets: list[int] = []
    for batch in scan(events_log):
        for raw in batch.values:
            event = EVENTS.decode(raw)
            offset = getattr(event, "input_offset", None)
            if offset is not None:
                offsets.append(offset)
    # Every command answered exactly once, in order (replay also checks seq contiguity).
    assert offsets == list(range(command_count))
    core = replay(events_log)
    assert (core.state_hash(), core.state.seq) == (expected_hash, expected_seq)
    assert core.state.conservation_problems() == []


def test_stage_killed_at_random_points_loses_and_doubles_nothing(tmp_path: Path, commands) -> None:
    expected_hash, expected_seq = uninterrupted_hash(commands)
    commands_dir, events_dir = tmp_path / "ops", tmp_path / "events"
    with FileLog(commands_dir, fsync=FsyncPolicy.NEVER) as log:
        log.append([COMMANDS.encode(c) for c in commands])
    rng = random.Random(1234)
    argv = [sys.executable, "-m", "ledger.app.cli", "run", "ubscore", "--commands", str(commands_dir),
            "--events", str(events_dir), "--batch", "20"]
    kills = 0
    # Kill once the output passes a random seq (a timed kill races the stage's speed and
    # may find it finished), after a random pause so kills land inside batches too.
    for target in sorted(rng.randrange(500, expected_seq - 500) for _ in range(6)):
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline and _events_written(events_dir) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.02))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
    final = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert kills >= 3, "the stage finished before it could be killed; the test proved nothing"
    with FileLog(events_dir, readonly=True) as events:
        assert_exactly_once(events, len(commands), expected_hash, expected_seq)


def _events_written(events_dir: Path) -> int:
    if not events_dir.is_dir():
        return 0
    try:
        with FileLog(events_dir, readonly=True) as events:
            return events.end_offset()
    except LogError:  # a segment being created right now: look again later
        return 0


def test_a_second_writer_is_detected_not_forked(tmp_path: Path, commands) -> None:
    source, sink = MemoryLog(), MemoryLog()
    source.append([COMMANDS.encode(c) for c in commands[:500]])
    first = UBSCoreStage(source, sink)
    second = UBSCoreStage(source, sink)
    first.step(100)
    with pytest.raises(SequenceError, match="another writer"):
        second.step(100)
