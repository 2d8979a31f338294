"""Every command answered exactly once: ``check_answers`` streams balance.operations
beside balance.events and reports each command with no answer or more than one, and each
answer naming an offset that holds no command, judged against the offsets the command
log really holds (Kafka's have holes); ``ledger verify --commands`` fails on any."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from ledger import COMMANDS, EVENTS, Deposit, MemoryLog, Reason, Rejected, UBSCore
from ledger.app.cli import EXIT_CHECK_FAILED, EXIT_OK, main
from ledger.app.demo import run_demo
from ledger.app.exchange import Exchange
from ledger.logs import layout
from ledger.logs.base import Log, ReadBatch, scan
from ledger.logs.file import FileLog, FsyncPolicy
from ledger.protocol.commands import ListAsset, ListSymbol, PlaceOrder, Side
from ledger.protocol.limits import READ_RECORDS_MAX
from ledger.protocol.market import Asset
from ledger.rebuild import (
    ANSWER_TYPES,
    ANSWERED_TWICE,
    NO_SUCH_COMMAND,
    OUT_OF_ORDER,
    UNANSWERED,
    AnswersReport,
    check_answers,
)
from support import BTC_USDT


class MarkedLog:
    """A log whose every appended batch is followed by one offset holding no record, as
    a Kafka transaction's commit marker is."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[tuple[int, bytes]] = []
        self.end = 0

    def append(self, records: Sequence[bytes]) -> int:
        first = self.end
        self.records.extend((first + i, bytes(r)) for i, r in enumerate(records))
        self.end = first + len(records) + 1  # the marker
        return first

    def read(self, offset: int, max_records: int = READ_RECORDS_MAX) -> ReadBatch:
        found = [(o, r) for o, r in self.records if o >= offset][:max_records]
        if not found:
            return ReadBatch([], [], max(offset, self.end))
        return ReadBatch([o for o, _ in found], [r for _, r in found], found[-1][0] + 1)

    def end_offset(self) -> int:
        return self.end

    def close(self) -> None:
        pass


def _run(operations: Log, events: Log, orders: int = 60) -> Exchange:
    """A small exchange workload in batches (each batch one append to each log)."""
    outputs: dict[str, Log] = {}
    exchange = Exchange(operations, events, lambda symbol: outputs.setdefault(symbol, MemoryLog(symbol)))
    exchange.submit([ListAsset(1, Asset("BTC", 8)), ListAsset(2, Asset("USDT", 6)), ListSymbol(3, BTC_USDT)])
    for user in range(1, 5):
        exchange.submit([Deposit(user, 1, "BTC", 10**8), Deposit(user, 2, "USDT", 10**12)])
    for n in range(orders):
        side = Side.BUY if n % 2 else Side.SELL
        batch = [PlaceOrder(1 + n % 4, 10 + n, "BTC-USDT", side, qty=1 + n % 3, price=30_000 + n % 5)]
        if n % 7 == 0:
            batch.append(Deposit(1 + n % 4, 10**6 + n, "USDT", 10**6))
        exchange.submit(batch)
    return exchange


def _events(log: Log) -> list:
    return [EVENTS.decode(raw) for batch in scan(log) for raw in batch.values]


def _log_of(events: list, name: str = "events") -> MemoryLog:
    log = MemoryLog(name)
    log.append([EVENTS.encode(e) for e in events])
    return log


def _kinds(report: AnswersReport) -> list[tuple[str, int]]:
    return [(p.kind, p.offset) for p in report.problems]


@pytest.fixture
def memory_run() -> tuple[MemoryLog, list]:
    operations = MemoryLog("ops")
    exchange = _run(operations, MemoryLog("events"))
    return operations, _events(exchange.events)


def test_answer_types_are_the_events_with_an_input_offset() -> None:
    names = sorted(kind.__name__ for kind in ANSWER_TYPES)
    assert names == sorted(
        [
            "AssetListed",
            "SymbolListed",
            "Deposited",
            "Withdrawn",
            "OrderAccepted",
            "CancelRequested",
            "AmendRequested",
            "Rejected",
        ]
    )


def test_a_clean_exchange_run_answers_every_command_once(memory_run) -> None:
    operations, events = memory_run
    report = check_answers(operations, _log_of(events))
    assert report.ok and report.problems == []
    assert report.commands == report.answers == operations.end_offset()
    assert report.answers < len(events)  # trades and unlocks answer no command


def test_a_malformed_command_is_answered_too() -> None:
    operations, events, core = MemoryLog("ops"), MemoryLog("events"), UBSCore()
    for offset, record in enumerate([COMMANDS.encode(ListAsset(1, Asset("USDT", 6))), b"\xc1 not msgpack"]):
        operations.append([record])
        events.append([EVENTS.encode(e) for e in core.execute_record(record, offset)])
    assert EVENTS.decode(events.read(1).values[0]).reason == Reason.MALFORMED_COMMAND
    assert check_answers(operations, events).ok


def test_a_deleted_answer_is_reported_with_its_offset(memory_run) -> None:
    operations, events = memory_run
    answers = [e for e in events if type(e) in ANSWER_TYPES]
    victim = answers[len(answers) // 2]
    report = check_answers(operations, _log_of([e for e in events if e is not victim]))
    assert not report.ok
    assert (report.unanswered, report.problems_total) == (1, 1)
    assert _kinds(report) == [(UNANSWERED, victim.input_offset)]
    assert f"offset {victim.input_offset} has no answer" in report.problems[0].detail


def test_a_duplicated_answer_is_reported_with_its_offset_next_to_it_or_later(memory_run) -> None:
    operations, events = memory_run
    answers = [e for e in events if type(e) in ANSWER_TYPES]
    twice = answers[10]
    at = events.index(twice)
    adjacent = [*events[: at + 1], twice, *events[at + 1 :]]
    report = check_answers(operations, _log_of(adjacent))
    assert (report.answered_twice, report.problems_total) == (1, 1)
    assert _kinds(report) == [(ANSWERED_TWICE, twice.input_offset)]
    later = events.index(answers[20])
    report = check_answers(operations, _log_of([*events[: later + 1], twice, *events[later + 1 :]]))
    assert _kinds(report) == [(ANSWERED_TWICE, twice.input_offset)]
    assert f"answered by seq {twice.seq} and again" in report.problems[0].detail


def test_an_answer_naming_an_offset_past_the_end_is_reported(memory_run) -> None:
    operations, events = memory_run
    end = operations.end_offset()
    forged = Rejected(events[-1].seq + 1, end + 3, int(Reason.MALFORMED_COMMAND), None, 0, 0, 4, "00" * 16)
    report = check_answers(operations, _log_of([*events, forged]))
    assert (report.no_such_command, report.problems_total) == (1, 1)
    assert _kinds(report) == [(NO_SUCH_COMMAND, end + 3)]
    assert report.problems[0].seq == forged.seq and "past the end" in report.problems[0].detail


def test_a_command_appended_with_no_answer_is_reported(memory_run) -> None:
    operations, events = memory_run
    at = operations.append([COMMANDS.encode(Deposit(3, 99, "USDT", 5)), COMMANDS.encode(Deposit(3, 98, "USDT", 5))])
    report = check_answers(operations, _log_of(events))
    assert report.commands == at + 2 and report.answers == at
    assert _kinds(report) == [(UNANSWERED, at), (UNANSWERED, at + 1)]


def test_answers_out_of_order_are_reported(memory_run) -> None:
    operations, events = memory_run
    answers = [e for e in events if type(e) in ANSWER_TYPES]
    first, second = answers[5], answers[6]
    i, j = events.index(first), events.index(second)
    swapped = [*events]
    swapped[i], swapped[j] = second, first
    report = check_answers(operations, _log_of(swapped))
    # The earlier command's answer came after a later one's: in order it had none.
    assert _kinds(report) == [(UNANSWERED, first.input_offset), (OUT_OF_ORDER, first.input_offset)]


def test_the_check_follows_the_offsets_the_command_log_holds_not_a_count() -> None:
    operations, events_log = MarkedLog("ops"), MarkedLog("events")
    exchange = _run(operations, events_log)
    offsets = [o for o, _ in operations.records]
    assert offsets[-1] + 1 > len(offsets)  # holes: offsets are not a count
    assert check_answers(operations, events_log).ok
    events = _events(exchange.events)
    # An answer naming the final marker's offset: inside the log's end, holding nothing.
    marker = offsets[-1] + 1
    assert marker < operations.end_offset()
    forged = Rejected(events[-1].seq + 1, marker, int(Reason.MALFORMED_COMMAND), None, 0, 0, 1, "00" * 16)
    report = check_answers(operations, _log_of([*events, forged]))
    assert _kinds(report) == [(NO_SUCH_COMMAND, marker)]
    assert "holds no record" in report.problems[0].detail
    # An answer moved from its command to the hole before it names no command.
    hole = next(o for o in range(offsets[-1]) if o not in set(offsets))
    moved = next(e for e in events if type(e) in ANSWER_TYPES and e.input_offset == hole + 1)
    report = check_answers(operations, _log_of([e if e is not moved else _at(e, hole) for e in events]))
    assert _kinds(report) == [(NO_SUCH_COMMAND, hole), (UNANSWERED, hole + 1)]


def _at(event, offset: int):
    import msgspec

    return msgspec.structs.replace(event, input_offset=offset)


def test_memory_is_bounded_by_the_window(memory_run, monkeypatch: pytest.MonkeyPatch) -> None:
    import ledger.rebuild

    operations, events = memory_run
    answers = [e for e in events if type(e) in ANSWER_TYPES]
    twice = answers[10]
    later = events.index(answers[20])
    log = _log_of([*events[: later + 1], twice, *events[later + 1 :]])
    monkeypatch.setattr(ledger.rebuild, "ANSWERED_OFFSETS_REMEMBERED_MAX", 3)
    # Forgotten beyond the window: still a problem, named for what the check can tell.
    assert _kinds(check_answers(operations, log)) == [(OUT_OF_ORDER, twice.input_offset)]
    monkeypatch.setattr(ledger.rebuild, "ANSWER_PROBLEMS_LISTED_MAX", 2)
    report = check_answers(operations, _log_of([]))
    assert report.unanswered == report.commands == operations.end_offset() > 2
    assert len(report.problems) == 2


def test_both_logs_are_streamed_side_by_side(memory_run, monkeypatch: pytest.MonkeyPatch) -> None:
    import ledger.logs.base

    operations, events = memory_run
    monkeypatch.setattr(ledger.logs.base, "READ_RECORDS_MAX", 16)
    reads: list[str] = []

    class Counting(MemoryLog):
        def read(self, offset: int, max_records: int = READ_RECORDS_MAX) -> ReadBatch:
            reads.append(self.name)
            return super().read(offset, max_records)

    commands_log, events_log = Counting("ops"), Counting("events")
    commands_log.append([r for b in scan(operations) for r in b.values])
    events_log.append([EVENTS.encode(e) for e in events])
    assert check_answers(commands_log, events_log).ok
    # The command log is read as the answers reach it, not all at once before them.
    first_event_read = reads.index("events")
    assert reads[first_event_read:].count("ops") >= reads.count("ops") - 1 > 3


def test_file_logs_clean_and_with_a_deleted_answer(tmp_path: Path) -> None:
    never = FsyncPolicy.NEVER
    with FileLog(tmp_path / "ops", fsync=never) as operations, FileLog(tmp_path / "ev", fsync=never) as events_log:
        _run(operations, events_log)
    with FileLog(tmp_path / "ops", readonly=True) as operations, FileLog(tmp_path / "ev", readonly=True) as events_log:
        assert check_answers(operations, events_log).ok
        events = _events(events_log)
    victim = [e for e in events if type(e) in ANSWER_TYPES][-1]
    with FileLog(tmp_path / "ev2", fsync=never) as log:
        log.append([EVENTS.encode(e) for e in events if e is not victim])
    with FileLog(tmp_path / "ops", readonly=True) as operations, FileLog(tmp_path / "ev2", readonly=True) as log:
        assert _kinds(check_answers(operations, log)) == [(UNANSWERED, victim.input_offset)]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from settlement import Projector, file_sources
    from settlement.sqlite import SQLiteStore

    root = tmp_path_factory.mktemp("answers") / "demo"
    run_demo(root, users=10, orders=300, seed=5, progress=False, fsync=FsyncPolicy.NEVER)
    store = SQLiteStore(root.parent / "proj.db")
    sources = file_sources(root)
    Projector(store, sources).run()
    for source in sources:
        source.log.close()
    store.close()
    with FileLog(layout.operations_dir(root), readonly=True) as log:
        records = log.read(0, log.end_offset()).values
    with FileLog(root.parent / "ops-one-more", fsync=FsyncPolicy.NEVER) as log:
        log.append([*records, records[0]])
    return root


def test_verify_with_the_commands_log_passes_on_a_clean_run(deployment: Path, capsys) -> None:
    store = f"sqlite:{deployment.parent / 'proj.db'}"
    commands = str(layout.operations_dir(deployment))
    code = main(["verify", "--log", str(deployment), "--store", store, "--commands", commands])
    out = capsys.readouterr()
    assert code == EXIT_OK, out.err
    assert "answers:      ok" in out.out and out.err == ""


def test_verify_fails_in_one_line_naming_the_unanswered_command(deployment: Path, capsys) -> None:
    store = f"sqlite:{deployment.parent / 'proj.db'}"
    with FileLog(layout.operations_dir(deployment), readonly=True) as log:
        end = log.end_offset()
    commands = str(deployment.parent / "ops-one-more")
    code = main(["verify", "--log", str(deployment), "--store", store, "--commands", commands])
    err = capsys.readouterr().err
    assert code == EXIT_CHECK_FAILED
    assert err.count("\n") == 1 and err.startswith("ledger verify: ")
    assert f"command at offset {end} has no answer" in err and "1 problems (1 unanswered" in err
