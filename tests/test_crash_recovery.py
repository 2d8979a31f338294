"""Crash recovery of the UBSCore service (``ledger run ubscore``): kill -9 at random
points, restart, and the output is exactly what an uninterrupted run produces (nothing
lost, nothing doubled). One drill, run on every log backend the service deploys on: file
logs and the real Kafka. (No engine runs here, so the service only answers commands.)"""

from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledger import COMMANDS, EVENTS, FileLog, FsyncPolicy, SequenceError
from ledger.app.services import Stopper, UBSCoreService, run_services
from ledger.app.streams import MemoryStreams
from ledger.logs import layout
from ledger.logs.base import LogError, scan
from ledger.rebuild import replay
from support import seeded_commands

COMMAND_COUNT = 20_000
# Commands per append while writing the stage's input (a bounded producer batch on Kafka).
APPEND_COMMANDS_MAX = 5_000
# Bounds that only turn a hung stage into a failure; they do not shape the drill.
KILL_WAIT_S_MAX = 120
EXIT_WAIT_S_MAX = 60
FINISH_S_MAX = 600


@functools.cache
def commands_of(seed: int) -> tuple[Any, ...]:
    return tuple(seeded_commands(seed=seed, count=COMMAND_COUNT))


@pytest.fixture(scope="module")
def commands() -> list:
    return list(commands_of(21))


def uninterrupted_hash(commands: list) -> tuple[str, int]:
    streams = MemoryStreams()
    streams.commands(writer=True).append([COMMANDS.encode(c) for c in commands])
    run_services([UBSCoreService(streams, batch_inputs=200, batch_wait_ms=0)], Stopper(), idle_exit_s=0.05)
    core = replay(streams.events())
    return core.state_hash(), core.state.seq


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


@dataclass(frozen=True)
class Drill:
    """How hard one backend is hit. Kill targets are output offsets drawn from
    [target_first, final seq - target_margin); each kill follows a random pause of up to
    pause_s_max after its target, so kills land inside batches too."""

    commands_seed: int
    kills_seed: int
    kills: int
    target_first: int
    target_margin: int
    batch_commands: int
    poll_s: float
    pause_s_max: float


# Kafka's stage is slower to start and its batches larger, so its targets begin later.
FILE_DRILL = Drill(21, 1234, 6, target_first=500, target_margin=500, batch_commands=20, poll_s=0.005,
                   pause_s_max=0.02)
KAFKA_DRILL = Drill(22, 99, 5, target_first=2_000, target_margin=0, batch_commands=100, poll_s=0.01,
                    pause_s_max=0.05)


@dataclass(frozen=True)
class StageLogs:
    """The stage's logs on one backend, and how to run and watch it there."""

    drill: Drill
    commands: Any  # the stage's input: append, then close before the stage starts
    open_events: Callable[[], Any]  # a reader of the stage's output (closed by the fixture)
    argv: list[str]  # `ledger run ubscore` on these logs
    events_written: Callable[[], int]  # progress probe: the output's end offset


def _stage_argv(drill: Drill, *logs: str) -> list[str]:
    return [sys.executable, "-m", "ledger.app.cli", "run", "ubscore", *logs, "--batch", str(drill.batch_commands),
            "--batch-wait-ms", "0", "--idle-exit-s", "2", "--log-every-s", "0"]


def _file_events_written(events_dir: Path) -> int:
    if not events_dir.is_dir():
        return 0
    try:
        with FileLog(events_dir, readonly=True) as events:
            return events.end_offset()
    except LogError:  # a segment being created right now: look again later
        return 0


@pytest.fixture(params=["file", pytest.param("kafka", marks=pytest.mark.kafka)])
def stage_logs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StageLogs]:
    opened: list[Any] = []

    def keep(log: Any) -> Any:
        opened.append(log)
        return log

    if request.param == "file":
        commands_dir, events_dir = layout.operations_dir(tmp_path), layout.events_dir(tmp_path)
        yield StageLogs(
            FILE_DRILL,
            keep(FileLog(commands_dir, fsync=FsyncPolicy.NEVER)),
            lambda: keep(FileLog(events_dir, readonly=True)),
            _stage_argv(FILE_DRILL, "--dir", str(tmp_path)),
            lambda: _file_events_written(events_dir),
        )
    else:
        import uuid

        from ledger.logs.kafka import KafkaLog, ensure_topic
        from support import KAFKA_BOOTSTRAP

        request.getfixturevalue("kafka_bootstrap")  # skips (and so fails CI) if down
        prefix = f"crash-{uuid.uuid4().hex[:8]}-"
        for topic in (layout.OPERATIONS, layout.EVENTS):
            ensure_topic(KAFKA_BOOTSTRAP, prefix + topic)
        source = keep(KafkaLog(KAFKA_BOOTSTRAP, prefix + layout.OPERATIONS))
        watcher = keep(KafkaLog(KAFKA_BOOTSTRAP, prefix + layout.EVENTS))
        yield StageLogs(
            KAFKA_DRILL,
            source,
            lambda: keep(KafkaLog(KAFKA_BOOTSTRAP, prefix + layout.EVENTS)),
            _stage_argv(KAFKA_DRILL, "--kafka", KAFKA_BOOTSTRAP, "--topic-prefix", prefix),
            watcher.end_offset,
        )
    for log in opened:
        log.close()


def test_ubscore_stage_killed_at_random_points_loses_and_doubles_nothing(stage_logs: StageLogs) -> None:
    drill = stage_logs.drill
    commands = list(commands_of(drill.commands_seed))
    expected_hash, expected_seq = uninterrupted_hash(commands)
    for start in range(0, len(commands), APPEND_COMMANDS_MAX):
        stage_logs.commands.append([COMMANDS.encode(c) for c in commands[start : start + APPEND_COMMANDS_MAX]])
    stage_logs.commands.close()
    rng = random.Random(drill.kills_seed)
    kills = 0
    # Kill once the output passes a random offset (a timed kill races the stage's speed and
    # may find it finished), after a random pause so kills land inside batches too.
    targets = [rng.randrange(drill.target_first, expected_seq - drill.target_margin) for _ in range(drill.kills)]
    for target in sorted(targets):
        process = subprocess.Popen(stage_logs.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + KILL_WAIT_S_MAX
        while process.poll() is None and time.monotonic() < deadline and stage_logs.events_written() < target:
            time.sleep(drill.poll_s)
        time.sleep(rng.uniform(0.0, drill.pause_s_max))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=EXIT_WAIT_S_MAX)
    final = subprocess.run(stage_logs.argv, capture_output=True, text=True, timeout=FINISH_S_MAX)
    assert final.returncode == 0, final.stderr
    assert kills >= 3, "the stage finished before it could be killed; the test proved nothing"
    assert_exactly_once(stage_logs.open_events(), len(commands), expected_hash, expected_seq)


def test_a_second_writer_is_detected_not_forked(tmp_path: Path, commands) -> None:
    streams = MemoryStreams()
    streams.commands(writer=True).append([COMMANDS.encode(c) for c in commands[:500]])
    first = UBSCoreService(streams, batch_inputs=100, batch_wait_ms=0)
    second = UBSCoreService(streams, batch_inputs=100, batch_wait_ms=0)
    first.open()
    second.open()
    first.step()
    with pytest.raises(SequenceError, match="another writer"):
        second.step()
