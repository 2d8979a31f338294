"""The gateway's bridge (``ledger.app.gateway.bridge``) on file logs, with the real
UBSCore and engines in this process: a request whose offset in balance.operations was
found only after the tailer had passed its answer (a crash around its append, or an
append whose outcome was not known) still gets that answer, at a restart and at run
time; an answer written after the search is the tailer's."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ledger import COMMANDS, EVENTS
from ledger.app.gateway import bridge as bridge_module
from ledger.app.gateway.bridge import GATEWAY_REQUEST_ID_BASE, Bridge, Sent, request_digest
from ledger.app.services import EngineService, Stopper, UBSCoreService, run_services
from ledger.app.streams import FileStreams, MemoryStreams
from ledger.logs.base import ReadBatch
from ledger.logs.file import FsyncPolicy
from ledger.protocol.codec import check_command
from ledger.protocol.commands import Deposit
from support import records, seeded_commands

# Bounds that only turn a hang into a failure.
SETTLE_S_MAX = 30

SCOPE = "user:7"
KEY = "retry-me"
BODY = b'{"user": 7, "asset": "USDT", "amount": "5"}'
DIGEST = request_digest("POST", "/v1/deposits", BODY)
DEPOSIT = Deposit(7, 0, "USDT", 5 * 10**6)


def run_exchange(streams: Any) -> None:
    """UBSCore and the engines until nothing is left to do (answers and settlements)."""
    run_services([UBSCoreService(streams, 50, 0), EngineService(streams, None, 50, 0)], Stopper(),
                 idle_exit_s=0.05, summary_every_s=0)


def answer_of(streams: Any, offset: int) -> bytes:
    """The record of balance.events whose input_offset is ``offset``."""
    (found,) = [raw for raw in records(streams.events())
                if getattr(EVENTS.decode(raw), "input_offset", None) == offset]
    return found


def crashed_row(db_path: Path, ops_hint: int) -> tuple[int, bytes]:
    """A request row as a crash around its append leaves it (no offset, no answer), made
    as the bridge's writer makes one; (ref, its record)."""
    with sqlite3.connect(str(db_path), isolation_level=None) as db:
        ref = db.execute(
            "INSERT INTO requests (scope, idem_key, digest, user, request_id, created_ms, ops_hint) "
            "VALUES (?, ?, ?, 7, 0, ?, ?)",
            (SCOPE, KEY, DIGEST, int(time.time() * 1000), ops_hint),
        ).lastrowid
        assert ref is not None
        record = check_command(msgspec.structs.replace(DEPOSIT, request_id=GATEWAY_REQUEST_ID_BASE + ref))
        db.execute("UPDATE requests SET request_id = ?, record = ? WHERE ref = ?",
                   (GATEWAY_REQUEST_ID_BASE + ref, record, ref))
    return ref, record


def save_tail(db_path: Path, events_offset: int) -> None:
    with sqlite3.connect(str(db_path), isolation_level=None) as db:
        db.execute("INSERT OR REPLACE INTO gateway_tail (id, events_offset) VALUES (1, ?)", (events_offset,))


def retry(bridge: Bridge) -> Sent:
    return asyncio.run(bridge.send(DEPOSIT, SCOPE, KEY, DIGEST, None))


def wait_for(check: Any, what: str) -> Any:
    deadline = time.monotonic() + SETTLE_S_MAX
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
    return found


@pytest.fixture
def streams(tmp_path: Path) -> FileStreams:
    streams = FileStreams(tmp_path / "logs", FsyncPolicy("never"))
    streams.create_inputs()
    return streams


@pytest.fixture
def bridge(tmp_path: Path, streams: FileStreams) -> Iterator[Bridge]:
    made = Bridge(tmp_path / "gateway.db", streams.commands(writer=True), streams.events(), streams.events())
    try:
        yield made
    finally:
        made.close()


def append_around(bridge: Bridge, record: bytes) -> int:
    """Append ``record`` between traded commands (so balance.events interleaves answers
    with settlements, which have no input_offset); its offset."""
    commands = [COMMANDS.encode(c) for c in seeded_commands(seed=3, count=400, users=6)]
    half = len(commands) // 2
    bridge.commands.append(commands[:half])
    at = bridge.commands.append([record])
    bridge.commands.append(commands[half:])
    return at


def test_a_row_located_at_a_restart_gets_the_answer_the_tailer_passed(
    tmp_path: Path, streams: FileStreams, bridge: Bridge
) -> None:
    db = tmp_path / "gateway.db"
    ref, record = crashed_row(db, bridge.commands.end_offset())
    at = append_around(bridge, record)
    run_exchange(streams)
    answer = answer_of(streams, at)
    save_tail(db, streams.events().end_offset())  # the tailer had passed the answer
    bridge.start()
    assert bridge.stored(ref) == (SCOPE, GATEWAY_REQUEST_ID_BASE + ref, at, answer)
    assert retry(bridge) == Sent(ref, GATEWAY_REQUEST_ID_BASE + ref, at, answer, replayed=True)


def test_a_located_row_without_its_answer_gets_it_at_a_restart(
    tmp_path: Path, streams: FileStreams, bridge: Bridge
) -> None:
    # A crash between the row's offset being found (and stored) and its answer being
    # looked for: the row has an offset, and the saved position is past its answer.
    db = tmp_path / "gateway.db"
    ref, record = crashed_row(db, bridge.commands.end_offset())
    at = append_around(bridge, record)
    run_exchange(streams)
    with sqlite3.connect(str(db), isolation_level=None) as conn:
        conn.execute('UPDATE requests SET "offset" = ? WHERE ref = ?', (at, ref))
    save_tail(db, streams.events().end_offset())
    bridge.start()
    assert bridge.stored(ref) == (SCOPE, GATEWAY_REQUEST_ID_BASE + ref, at, answer_of(streams, at))


@pytest.mark.parametrize("recent", [bridge_module.RECENT_ANSWERS_MAX, 1], ids=["in-memory", "evicted"])
def test_a_retry_at_run_time_gets_the_answer_the_tailer_passed(
    tmp_path: Path, streams: FileStreams, bridge: Bridge, monkeypatch: pytest.MonkeyPatch, recent: int
) -> None:
    # With one answer kept in memory, the row's is gone from it: found in balance.events.
    monkeypatch.setattr(bridge_module, "RECENT_ANSWERS_MAX", recent)
    bridge.start()
    db = tmp_path / "gateway.db"
    ref, record = crashed_row(db, bridge.commands.end_offset())  # an append whose outcome was not known
    at = append_around(bridge, record)
    run_exchange(streams)
    end = streams.events().end_offset()
    wait_for(lambda: bridge.tail_offset >= end, "the tailer reaches the end of balance.events")
    assert bridge.stored(ref) == (SCOPE, GATEWAY_REQUEST_ID_BASE + ref, None, None)
    answer = answer_of(streams, at)
    assert retry(bridge) == Sent(ref, GATEWAY_REQUEST_ID_BASE + ref, at, answer, replayed=True)
    assert bridge.stored(ref) == (SCOPE, GATEWAY_REQUEST_ID_BASE + ref, at, answer)


def test_a_row_with_an_offset_the_tailer_passed_is_searched_again_at_a_retry(
    tmp_path: Path, streams: FileStreams, bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The row has its offset but no answer, the tailer is past the answer, and the answer
    # is no longer in memory: how a search that failed (a log error) leaves a row. A
    # retry looks again instead of answering "pending" until the next restart.
    monkeypatch.setattr(bridge_module, "RECENT_ANSWERS_MAX", 1)
    bridge.start()
    db = tmp_path / "gateway.db"
    ref, record = crashed_row(db, bridge.commands.end_offset())
    at = append_around(bridge, record)
    run_exchange(streams)
    end = streams.events().end_offset()
    wait_for(lambda: bridge.tail_offset >= end, "the tailer reaches the end of balance.events")
    with sqlite3.connect(str(db), isolation_level=None) as conn:
        conn.execute('UPDATE requests SET "offset" = ? WHERE ref = ?', (at, ref))
    answer = answer_of(streams, at)
    assert retry(bridge) == Sent(ref, GATEWAY_REQUEST_ID_BASE + ref, at, answer, replayed=True)
    assert bridge.stored(ref) == (SCOPE, GATEWAY_REQUEST_ID_BASE + ref, at, answer)


def test_an_answer_written_after_the_search_is_the_tailers(
    tmp_path: Path, streams: FileStreams, bridge: Bridge
) -> None:
    bridge.start()
    db = tmp_path / "gateway.db"
    ref, record = crashed_row(db, bridge.commands.end_offset())
    at = append_around(bridge, record)
    # No answer yet: the retry learns the offset and waits.
    assert retry(bridge) == Sent(ref, GATEWAY_REQUEST_ID_BASE + ref, at, None, replayed=True)
    run_exchange(streams)
    answer = answer_of(streams, at)
    stored = wait_for(lambda: bridge.stored(ref)[3], "the tailer writes the answer into the row")  # type: ignore[index]
    assert stored == answer
    assert retry(bridge) == Sent(ref, GATEWAY_REQUEST_ID_BASE + ref, at, answer, replayed=True)


class _Holes:
    """balance.events with a hole after every record (as transaction markers leave)."""

    name = "holed balance.events"

    def __init__(self, values: list[bytes]) -> None:
        self.values = values

    def read(self, offset: int, max_records: int = 1_000) -> ReadBatch:
        first = (offset + 1) // 2
        values = self.values[first : first + max_records]
        offsets = [2 * (first + i) for i in range(len(values))]
        return ReadBatch(offsets, values, offsets[-1] + 2 if offsets else 2 * first)

    def end_offset(self) -> int:
        return 2 * len(self.values)

    def close(self) -> None:
        pass


def test_answers_are_found_by_input_offset_across_holes_and_settlements(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = MemoryStreams()
    memory.commands(writer=True).append([COMMANDS.encode(c) for c in seeded_commands(seed=4, count=300, users=6)])
    run_exchange(memory)
    values = records(memory.events())
    truth = {e.input_offset: raw for raw in values if hasattr(e := EVENTS.decode(raw), "input_offset")}
    assert len(truth) < len(values)  # settlements without input_offset between the answers
    bridge = Bridge(tmp_path / "gateway.db", memory.commands(), memory.events(), _Holes(values))  # type: ignore[arg-type]
    monkeypatch.setattr(bridge_module, "ANSWER_PROBE_MAX", 2)  # probes that meet no answer, too
    bridge.tail_offset = 2 * len(values)  # the tailer has passed them all
    try:
        last = max(truth)
        for wanted in ([0], [last], [5, 6, 7], [17, 90, 250], list(range(last + 1)), [last + 1], [3, last + 5]):
            assert bridge._find_answers(wanted) == {at: truth[at] for at in wanted if at in truth}
        # Answers at or past the tailer's position are the tailer's to write: not searched.
        bridge.tail_offset = len(values)
        seen = {at for at, raw in truth.items() if 2 * values.index(raw) < len(values)}
        assert bridge._find_answers(list(truth)) == {at: truth[at] for at in seen}
    finally:
        bridge.close()


def test_a_long_run_of_settlements_does_not_hide_an_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that lands in a run of events without an input_offset (an engine catching
    up, a sweep of a deep book) reads on past it: the search never starts the scan far
    too early and runs out of its budget before the answer (it did, found by review)."""
    memory = MemoryStreams()
    memory.commands(writer=True).append([COMMANDS.encode(c) for c in seeded_commands(seed=4, count=300, users=6)])
    run_exchange(memory)
    values = records(memory.events())
    answers = [raw for raw in values if hasattr(EVENTS.decode(raw), "input_offset")]
    settlement = next(raw for raw in values if not hasattr(EVENTS.decode(raw), "input_offset"))
    half = len(answers) // 2
    holed = answers[:half] + [settlement] * 400 + answers[half:]
    monkeypatch.setattr(bridge_module, "ANSWER_PROBE_MAX", 2)
    monkeypatch.setattr(bridge_module, "ANSWER_SCAN_MAX", 40)
    monkeypatch.setattr(bridge_module, "TAIL_READ_MAX", 10)  # the scan reads in steps its budget can stop
    bridge = Bridge(tmp_path / "gateway.db", memory.commands(), memory.events(), _Holes(holed))  # type: ignore[arg-type]
    bridge.tail_offset = 2 * len(holed)
    try:
        for raw in (answers[-1], answers[half], answers[half - 1], answers[0]):
            at = EVENTS.decode(raw).input_offset
            assert bridge._find_answers([at]) == {at: raw}, at
    finally:
        bridge.close()


def test_a_full_queue_refuses_a_command_at_once_and_writes_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With the writer stopped (a log that is away), commands queue up to
    ``JOBS_QUEUED_MAX``; the next is refused at once, before any row is written."""
    monkeypatch.setattr(bridge_module, "JOBS_QUEUED_MAX", 3)
    streams = FileStreams(tmp_path / "d", FsyncPolicy("never"))
    streams.create_inputs()
    bridge = Bridge(tmp_path / "g.db", streams.commands(writer=True), streams.events(), streams.events())

    async def fill() -> str:
        waiting = [asyncio.create_task(bridge.send(DEPOSIT, SCOPE, f"k{i}", DIGEST, None)) for i in range(3)]
        await asyncio.sleep(0.05)
        try:
            await bridge.send(DEPOSIT, SCOPE, "k3", DIGEST, None)
        except bridge_module.BridgeError as error:
            return str(error)
        finally:
            for task in waiting:
                task.cancel()
        raise AssertionError("the fourth command was queued")

    assert "3 commands are waiting" in asyncio.run(fill())
    with sqlite3.connect(str(tmp_path / "g.db")) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone() == (0,)
    assert streams.commands().end_offset() == 0
    bridge.close()


def test_a_send_that_waits_too_long_says_whether_anything_may_have_been_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``SEND_WAIT_S_MAX``, a command the writer never took is withdrawn (nothing
    written, a plain retry is safe); one it took but has not finished is an unknown
    outcome (retry only under the same key)."""
    monkeypatch.setattr(bridge_module, "SEND_WAIT_S_MAX", 0.1)
    streams = FileStreams(tmp_path / "d", FsyncPolicy("never"))
    streams.create_inputs()
    bridge = Bridge(tmp_path / "g.db", streams.commands(writer=True), streams.events(), streams.events())
    try:
        with pytest.raises(bridge_module.BridgeError, match="nothing was written") as refused:
            asyncio.run(bridge.send(DEPOSIT, SCOPE, "k0", DIGEST, None))
        assert not isinstance(refused.value, bridge_module.OutcomeUnknown)
        assert not bridge._jobs  # withdrawn: no writer will send it later

        async def taken_and_stuck() -> None:
            sending = asyncio.ensure_future(bridge.send(DEPOSIT, SCOPE, "k1", DIGEST, None))
            await asyncio.sleep(0.02)
            with bridge._jobs_ready:
                bridge._jobs.popleft()  # a writer took it, and its append hangs
            await sending

        with pytest.raises(bridge_module.OutcomeUnknown, match="same Idempotency-Key"):
            asyncio.run(taken_and_stuck())
    finally:
        bridge.close()
