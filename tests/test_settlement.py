"""The settlement projector, one suite for every store: SQLite (embedded) and the real
Cassandra (CQL). Projections are idempotent and equal across stores; queries answer with
exact values; every sequence fault (drop, duplicate, altered duplicate, reorder, a log
starting mid-stream, a malformed record) is recorded with its exact range and nothing is
written past it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from ledger import EVENTS, OUTPUTS, Deposit, Deposited, MemoryLog, OrderType, PlaceOrder, Side, TimeInForce
from ledger.logs.base import ReadBatch
from settlement import Projector, Queries, Source, dump, verify_store
from settlement.model import BUCKET_SEQS, STATUS_FILLED, STATUS_OPEN
from settlement.projector import BALANCE, ENGINE, REFETCH, REFETCH_TRIES_MAX
from settlement.sqlite import SQLiteStore
from support import BTC, CASSANDRA_PORT, USDT, new_exchange, run_workload

StoreFactory = Callable[[], Any]


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def new_store(request: pytest.FixtureRequest, tmp_path) -> Iterator[StoreFactory]:
    """Makes empty stores of the parametrised backend (each CQL one in its own keyspace,
    dropped afterwards)."""
    made: list[Any] = []

    def make() -> Any:
        if request.param == "sqlite":
            store: Any = SQLiteStore(tmp_path / f"projection-{len(made)}.db")
        else:
            request.getfixturevalue("cassandra_session")  # skips (and so fails CI) if down
            from settlement.cql import CqlStore

            store = CqlStore(("127.0.0.1",), CASSANDRA_PORT, f"test_{uuid.uuid4().hex[:12]}")
        made.append(store)
        return store

    yield make
    for store in made:
        if hasattr(store, "drop"):
            store.drop()
        store.close()


def workload_logs(seed: int = 7, orders: int = 400) -> tuple[MemoryLog, dict[str, MemoryLog]]:
    exchange, outputs = run_workload(seed, orders)
    return exchange.events, outputs


def sources(events: Any, outputs: dict[str, Any]) -> list[Source]:
    found = [Source("balance.events", events, BALANCE)]
    for symbol in sorted(outputs):
        found.append(Source(f"engine.outputs/{symbol}", outputs[symbol], ENGINE, symbol))
    return found


def records(log: MemoryLog) -> list[bytes]:
    return list(log.read(0, log.end_offset()).values)


def log_of(name: str, values: list[bytes]) -> MemoryLog:
    log = MemoryLog(name)
    log.append(values)
    return log


def seq_of(raw: bytes) -> int:
    return int(EVENTS.decode(raw).seq)


def max_written_seq(store: Any) -> int:
    """The highest balance.events seq any row of the store came from."""
    seqs = [r["seq"] for r in store.scan("balance_ledger")]
    seqs += [r["seq"] for r in store.scan("balances")]
    seqs += [r["status_seq"] for r in store.scan("orders") if r["status_seq"] is not None]
    return max(seqs, default=0)


def clean_dump(events: MemoryLog, outputs: dict[str, MemoryLog]) -> dict[str, list[tuple[Any, ...]]]:
    store = SQLiteStore(":memory:")
    assert Projector(store, sources(events, outputs)).run().ok
    return dump(store)


# -- idempotency and equality -----------------------------------------------------------


def test_projecting_the_same_logs_twice_gives_identical_tables(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    first = new_store()
    report = Projector(first, sources(events, outputs)).run()
    assert report.ok
    assert report.streams[0].applied_seq == events.end_offset()
    tables = dump(first)
    assert len(tables["settled_trades"]) > 50, "the workload must trade"
    # Again over the same store: everything is re-folded, nothing re-written.
    again = Projector(first, sources(events, outputs)).run()
    assert again.ok and all(s.written == 0 for s in again.streams)
    assert dump(first) == tables
    # A fresh store gets the very same rows; so does the other backend.
    second = new_store()
    assert Projector(second, sources(events, outputs)).run().ok
    assert dump(second) == tables
    assert clean_dump(events, outputs) == tables
    assert verify_store(first, events).ok


def test_reapplying_any_batch_in_any_order_converges(new_store: StoreFactory) -> None:
    """The projector never does this, but the store's writes must allow it: versioned rows
    keep the newest version, so batches applied backwards end where forwards did."""
    from settlement.model import Projection, Row
    from settlement.store import Checkpoint

    events, outputs = workload_logs(seed=11, orders=200)
    projection = Projection()
    batches: list[list[Row]] = []
    for raw in records(events):
        writes: list[Row] = []
        projection.balance_event(EVENTS.decode(raw), writes)
        batches.append(writes)
    engines = Projection()  # the depth is folded per symbol, each in its own order
    for symbol in sorted(outputs):  # the engine's rows of an order and of the depth too
        for raw in records(outputs[symbol]):
            writes = []
            engines.engine_output(OUTPUTS.decode(raw), writes)
            batches.append(writes)
    forwards, backwards = new_store(), new_store()
    for writes in batches:
        forwards.commit(writes, Checkpoint("s", 1, 1))
    for writes in reversed(batches):
        backwards.commit(writes, Checkpoint("s", 1, 1))
    for writes in batches[::3]:  # and some of them again
        backwards.commit(writes, Checkpoint("s", 1, 1))
    assert dump(backwards) == dump(forwards)


# -- queries ------------------------------------------------------------------------------


def test_queries_answer_the_reference_scenario_exactly(new_store: StoreFactory) -> None:
    exchange, outputs = new_exchange()
    exchange.submit([Deposit(1001, 1, "BTC", 1 * BTC), Deposit(1002, 1, "USDT", 20_000 * USDT)])
    (sell,) = exchange.submit([PlaceOrder(1001, 2, "BTC-USDT", Side.SELL, qty=50, price=150)])
    exchange.submit([PlaceOrder(1002, 2, "BTC-USDT", Side.BUY, qty=20, price=151)])  # fills 20 of 50
    store = new_store()
    assert Projector(store, sources(exchange.events, outputs)).run().ok
    q = Queries(store)
    # The buyer took 20 lots (0.2 BTC) at the maker's 150: 30 USDT, 0.2% fee in BTC, and
    # the 1 USDT/BTC price improvement (0.2 USDT) came back at once.
    assert q.balances(1002) == {"BTC": (BTC // 5 - 40_000, 0), "USDT": (20_000 * USDT - 30 * USDT, 0)}
    assert q.balances(1001) == {"BTC": (BTC // 2, 3 * BTC // 10), "USDT": (30 * USDT - 30_000, 0)}
    assert q.balances(0) == {"BTC": (40_000, 0), "USDT": (30_000, 0)}
    ledger = q.ledger(1002, "USDT")
    assert [(r["kind"], r["change"], r["available"], r["locked"]) for r in ledger] == [
        ("trade", -30 * USDT, 20_000 * USDT - 30 * USDT, 0),
        ("lock", 0, 20_000 * USDT - 30_200_000, 30_200_000),
        ("deposit", 20_000 * USDT, 20_000 * USDT, 0),
    ]
    # Every ledger's changes add up to the balance.
    for user, asset in ((1001, "BTC"), (1001, "USDT"), (1002, "BTC"), (1002, "USDT"), (0, "BTC")):
        assert sum(r["change"] for r in q.ledger(user, asset)) == sum(q.balances(user)[asset])
    # Paging: the next page starts strictly before the last row seen.
    page = q.ledger(1002, "USDT", limit=1)
    rest = q.ledger(1002, "USDT", limit=10, before_seq=page[-1]["seq"])
    assert page + rest == ledger
    (trade,) = q.recent_trades("BTC-USDT")
    assert (trade["price"], trade["qty"], trade["maker_user"], trade["taker_user"]) == (150, 20, 1001, 1002)
    assert (trade["maker_fee"], trade["taker_fee"], trade["taker_refund"]) == (30_000, 40_000, 200_000)
    assert [(t["maker"], t["side"], t["fee"]) for t in q.user_trades(1002)] == [(False, int(Side.BUY), 40_000)]
    assert [(o["order_id"], o["qty"]) for o in q.open_orders(1001)] == [(sell.order_id, 50)]
    assert q.open_orders(1002) == []
    maker = q.order(sell.order_id)
    assert maker is not None
    assert (maker["status"], maker["filled_qty"], maker["rested_qty"]) == (STATUS_OPEN, 20, 50)
    taker_id = trade["taker_order_id"]
    taker = q.order(taker_id)
    assert taker is not None and (taker["status"], taker["filled_qty"]) == (STATUS_FILLED, 20)


def test_paging_crosses_partition_buckets(new_store: StoreFactory) -> None:
    """A ledger spread over several buckets is read newest first across them."""
    from settlement.model import Projection, Row
    from settlement.store import Checkpoint

    store = new_store()
    projection = Projection()
    writes: list[Row] = []
    available = 0
    seqs = [1, 2, BUCKET_SEQS - 1, BUCKET_SEQS, BUCKET_SEQS + 5, 3 * BUCKET_SEQS + 1]
    for i, seq in enumerate(seqs):
        available += 10 + i
        projection.balance_event(Deposited(seq, seq, 42, i + 1, "USDT", 10 + i, available, 0), writes)
    store.commit(writes, Checkpoint("balance.events", seqs[-1], len(seqs)))
    q = Queries(store)
    assert [r["seq"] for r in q.ledger(42, "USDT")] == seqs[::-1]
    assert [r["seq"] for r in q.ledger(42, "USDT", limit=2, before_seq=BUCKET_SEQS + 5)] == [
        BUCKET_SEQS,
        BUCKET_SEQS - 1,
    ]
    assert q.balances(42) == {"USDT": (available, 0)}


# -- sequence faults ----------------------------------------------------------------------


def project_faulty(store: Any, values: list[bytes], outputs: dict[str, MemoryLog], **options: Any) -> Any:
    return Projector(store, sources(log_of("balance.events", values), outputs), **options).run()


def assert_stopped_before(
    store: Any, report: Any, seq: int, written: list[bytes], outputs: dict[str, MemoryLog]
) -> None:
    """The balance stream halted with everything before ``seq`` written and nothing after:
    the store holds exactly the projection of ``written`` (the records before the fault)."""
    balance = report.streams[0]
    assert balance.halted and not report.ok
    assert balance.applied_seq == seq - 1
    checkpoint = store.checkpoint("balance.events")
    assert (checkpoint.seq if checkpoint else 0) == seq - 1
    assert max_written_seq(store) <= seq - 1
    assert dump(store) == clean_dump(log_of("balance.events", written), outputs)
    # The engine streams are not held up by the balance stream's fault.
    assert all(not s.halted for s in report.streams[1:])


def test_a_dropped_event_is_a_gap_with_its_exact_range(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    missing = seq_of(values[k])
    store = new_store()
    report = project_faulty(store, values[:k] + values[k + 1 :], outputs)
    assert_stopped_before(store, report, missing, values[:k], outputs)
    (fault,) = store.faults()
    assert (fault.stream, fault.kind, fault.expected, fault.received) == ("balance.events", "gap", missing, missing + 1)
    assert fault.missing == (missing, missing)
    assert f"offset {k}" in fault.detail and not fault.resolved


def test_several_dropped_events_report_the_whole_range(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 3
    store = new_store()
    report = project_faulty(store, values[:k] + values[k + 4 :], outputs)
    assert_stopped_before(store, report, seq_of(values[k]), values[:k], outputs)
    (fault,) = store.faults()
    assert fault.missing == (seq_of(values[k]), seq_of(values[k + 3]))


def test_exact_duplicates_are_skipped_and_change_nothing(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    noisy = values[: k + 1] + values[k - 5 : k + 1] + values[k + 1 :] + values[-3:]
    store = new_store()
    report = project_faulty(store, noisy, outputs)
    assert report.ok and store.faults(open_only=False) == []
    assert report.streams[0].duplicates == 9
    assert dump(store) == clean_dump(events, outputs)


def test_a_duplicate_with_another_payload_is_a_conflict(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = next(i for i, raw in enumerate(values) if type(EVENTS.decode(raw)) is Deposited and i > 20)
    original = EVENTS.decode(values[k])
    altered = EVENTS.encode(msgspec.structs.replace(original, amount=original.amount + 1))
    store = new_store()
    report = project_faulty(store, values[: k + 3] + [altered] + values[k + 3 :], outputs)
    assert not report.ok and report.streams[0].halted
    (fault,) = store.faults()
    # received: the last seq taken in when the conflicting copy arrived.
    assert (fault.kind, fault.expected, fault.received) == ("conflict", original.seq, seq_of(values[k + 2]))
    # Everything up to the conflicting record was written, nothing after it.
    checkpoint = store.checkpoint("balance.events")
    assert checkpoint is not None and checkpoint.seq == seq_of(values[k + 2])
    assert dump(store) == clean_dump(log_of("balance.events", values[: k + 3]), outputs)


def test_swapped_events_stop_at_the_first_out_of_order_seq(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    swapped = values[:k] + [values[k + 1], values[k]] + values[k + 2 :]
    store = new_store()
    report = project_faulty(store, swapped, outputs)
    expected = seq_of(values[k])
    assert_stopped_before(store, report, expected, values[:k], outputs)
    (fault,) = store.faults()
    assert (fault.kind, fault.expected, fault.received) == ("gap", expected, expected + 1)


def test_a_log_starting_mid_stream_is_a_gap_from_seq_one(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    store = new_store()
    report = project_faulty(store, values[25:], outputs)
    assert_stopped_before(store, report, 1, [], outputs)
    (fault,) = store.faults()
    assert fault.missing == (1, seq_of(values[25]) - 1)
    assert list(store.scan("balances")) == []


def test_a_malformed_record_stops_the_stream_naming_where(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    store = new_store()
    report = project_faulty(store, values[:k] + [b"\x93\x01\x02"] + values[k + 1 :], outputs)
    assert_stopped_before(store, report, seq_of(values[k]), values[:k], outputs)
    (fault,) = store.faults()
    assert fault.kind == "malformed" and fault.expected == seq_of(values[k])
    assert f"balance.events offset {k}" in fault.detail


def test_an_engine_output_of_another_symbol_is_malformed(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    symbols = sorted(outputs)
    store = new_store()
    crossed = {symbols[0]: outputs[symbols[1]], symbols[1]: outputs[symbols[1]]}
    report = Projector(store, sources(events, crossed)).run()
    by_stream = {s.stream: s for s in report.streams}
    assert by_stream[f"engine.outputs/{symbols[0]}"].halted
    assert not by_stream["balance.events"].halted and not by_stream[f"engine.outputs/{symbols[1]}"].halted
    (fault,) = store.faults()
    assert fault.kind == "malformed" and fault.expected == 1


class LateLog:
    """A log whose record at ``hidden`` shows up only from the ``reveal_on``-th read that
    reaches it (a late or slow writer)."""

    def __init__(self, values: list[bytes], hidden: int, reveal_on: int) -> None:
        self.name = "balance.events"
        self.values = values
        self.hidden = hidden
        self.reveal_on = reveal_on
        self.reads_over_hidden = 0

    def read(self, offset: int, max_records: int = 65_536) -> ReadBatch:
        end = min(offset + max_records, len(self.values))
        offsets = list(range(offset, end))
        if offset <= self.hidden < end:
            self.reads_over_hidden += 1
            if self.reads_over_hidden < self.reveal_on:
                offsets.remove(self.hidden)
        return ReadBatch(offsets, [self.values[o] for o in offsets], end)

    def end_offset(self) -> int:
        return len(self.values)

    def close(self) -> None:
        pass


def test_refetch_rereads_the_source_and_resolves_the_gap(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    store = new_store()
    late = LateLog(values, hidden=k, reveal_on=3)
    srcs = [Source("balance.events", late, BALANCE)] + sources(events, outputs)[1:]
    slept: list[float] = []
    report = Projector(store, srcs, policy=REFETCH, batch_events=100, sleep=slept.append).run()
    assert report.ok and report.streams[0].refetches == 2
    assert store.faults(open_only=True) == []
    (fault,) = store.faults(open_only=False)
    assert fault.resolved and fault.missing == (seq_of(values[k]), seq_of(values[k]))
    assert slept == [0.05, 0.1]
    assert dump(store) == clean_dump(events, outputs)


def test_refetch_gives_up_after_its_bounded_tries_and_halts(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    store = new_store()
    slept: list[float] = []
    report = project_faulty(store, values[:k] + values[k + 1 :], outputs, policy=REFETCH, sleep=slept.append)
    assert report.streams[0].refetches == REFETCH_TRIES_MAX and len(slept) == REFETCH_TRIES_MAX
    assert_stopped_before(store, report, seq_of(values[k]), values[:k], outputs)


def test_a_halted_stream_resumes_and_resolves_once_the_log_is_repaired(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    store = new_store()
    assert not project_faulty(store, values[:k] + values[k + 1 :], outputs).ok
    assert len(store.faults()) == 1
    repaired = Projector(store, sources(events, outputs)).run()
    assert repaired.ok
    assert repaired.streams[0].folded_without_writing == k  # rebuilt from the log, not the store
    assert store.faults() == [] and store.faults(open_only=False)[0].resolved
    assert verify_store(store, events).ok
    assert dump(store) == clean_dump(events, outputs)


def test_verify_lists_every_difference(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    store = new_store()
    assert Projector(store, sources(log_of("balance.events", values[:-10]), outputs)).run().ok
    report = verify_store(store, events)
    assert not report.ok
    assert any("checkpoint of balance.events" in d for d in report.differences)
    assert report.differences_total == len(report.differences) >= 1


# -- from Kafka ---------------------------------------------------------------------------


@pytest.mark.kafka
def test_projecting_from_kafka_topics_equals_projecting_from_the_logs(kafka_log_factory, tmp_path) -> None:
    """Transactional appends leave holes (commit markers) in the offsets: the projector
    judges by seq, so the rows are the same; a gap is still found by seq."""
    import subprocess
    import sys

    events, outputs = workload_logs(seed=3, orders=300)
    values = records(events)
    balance_topic = kafka_log_factory(transactional=True)
    for start in range(0, len(values), 50):  # many transactions: many markers
        balance_topic.append(values[start : start + 50])
    engine_topics = {}
    for symbol in sorted(outputs):
        topic = kafka_log_factory(transactional=True)
        topic.append(records(outputs[symbol]))
        engine_topics[symbol] = topic
    assert balance_topic.end_offset() > len(values), "expected transaction markers in the offsets"
    path = tmp_path / "from-kafka.db"
    argv = [
        sys.executable,
        "-m",
        "ledger.app.cli",
        "project",
        "--kafka",
        balance_topic.bootstrap,
        "--topic",
        balance_topic.topic,
        "--store",
        f"sqlite:{path}",
    ]
    for symbol, topic in engine_topics.items():
        argv += ["--engine-topic", f"{symbol}={topic.topic}"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    store = SQLiteStore(path)
    assert dump(store) == clean_dump(events, outputs)
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.app.cli",
            "verify",
            "--kafka",
            balance_topic.bootstrap,
            "--topic",
            balance_topic.topic,
            "--store",
            f"sqlite:{path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # A topic missing an event: the gap is found by seq despite the offset holes.
    holed = kafka_log_factory(transactional=True)
    k = len(values) // 2
    holed.append(values[:k])
    holed.append(values[k + 1 :])
    gap_store = SQLiteStore(":memory:")
    report = Projector(gap_store, [Source("balance.events", holed, BALANCE)]).run()
    assert report.streams[0].halted
    (fault,) = gap_store.faults()
    assert fault.missing == (seq_of(values[k]), seq_of(values[k]))
    for log in (balance_topic, holed, *engine_topics.values()):
        log.close()


# -- the command line ---------------------------------------------------------------------


def test_the_command_line_reports_a_gap_and_verify_finds_the_difference(tmp_path) -> None:
    """`ledger project` exits 1 naming the fault, `ledger gaps` lists it with its range,
    `ledger verify` exits 1; once the log is whole again all three exit 0."""
    import subprocess
    import sys

    from ledger import FileLog, FsyncPolicy

    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    missing = seq_of(values[k])
    broken, whole = tmp_path / "broken", tmp_path / "whole"
    for root, balance in ((broken, values[:k] + values[k + 1 :]), (whole, values)):
        with FileLog(root / "balance.events", fsync=FsyncPolicy.NEVER) as log:
            log.append(balance)
        for symbol, output in outputs.items():
            with FileLog(root / "engine.outputs" / symbol, fsync=FsyncPolicy.NEVER) as log:
                log.append(records(output))
    store = f"sqlite:{tmp_path / 'projection.db'}"

    def ledger(*argv: str) -> subprocess.CompletedProcess[str]:
        argv_all = [sys.executable, "-m", "ledger.app.cli", *argv]
        return subprocess.run(argv_all, capture_output=True, text=True, timeout=120)

    project = ledger("project", "--source", str(broken), "--store", store)
    assert project.returncode == 1, project.stdout + project.stderr
    assert f"missing {missing}..{missing}" in project.stderr
    gaps = ledger("gaps", "--store", store)
    assert gaps.returncode == 1 and f"missing {missing}..{missing}" in gaps.stdout and "OPEN" in gaps.stdout
    # The broken log fails its own replay; against the whole log the store is behind.
    broken_verify = ledger("verify", "--source", str(broken), "--store", store)
    assert broken_verify.returncode == 1 and f"missing {missing}..{missing}" in broken_verify.stderr
    behind = ledger("verify", "--source", str(whole), "--store", store)
    assert behind.returncode == 1 and "DIFFERENCES" in behind.stdout and "open fault" in behind.stdout
    assert ledger("project", "--source", str(whole), "--store", store).returncode == 0
    assert ledger("gaps", "--store", store).returncode == 0
    resolved = ledger("gaps", "--store", store, "--all", "--json")
    assert resolved.returncode == 0 and '"resolved":true' in resolved.stdout
    assert ledger("verify", "--source", str(whole), "--store", store).returncode == 0


def test_a_cancel_that_lost_the_race_leaves_the_ended_order_alone(new_store: StoreFactory) -> None:
    """The engine answers a cancel of an order that has just ended with OrderRejected
    (UNKNOWN_ORDER); that answer must not rewrite how the order ended."""
    from ledger.protocol.outputs import OrderRejected, OrderRested
    from ledger.protocol.reasons import Reason
    from settlement.model import Projection, Row
    from settlement.store import Checkpoint

    store = new_store()
    writes: list[Row] = []
    projection = Projection()
    projection.engine_output(OrderRested(1, "X-Y", 10, 77, 5, Side.SELL, 100, 4), writes)
    projection.engine_output(OrderRejected(2, "X-Y", 12, 77, 5, int(Reason.UNKNOWN_ORDER)), writes)
    projection.engine_output(OrderRejected(3, "X-Y", 13, 78, 5, int(Reason.POST_ONLY_WOULD_TAKE)), writes)
    store.commit(writes, Checkpoint("engine.outputs/X-Y", 3, 3))
    store.flush()
    q = Queries(store)
    rested = q.order(77)
    assert rested is not None and (rested["rested_qty"], rested["end_reason"]) == (4, None)
    rejected = q.order(78)
    assert rejected is not None and rejected["end_reason"] == int(Reason.POST_ONLY_WOULD_TAKE)


# -- saved fold state ---------------------------------------------------------------------


def test_a_restart_reads_on_from_the_saved_state_and_writes_the_same_rows(new_store: StoreFactory) -> None:
    events, outputs = workload_logs(seed=9, orders=600)
    values = records(events)
    cut = len(values) * 2 // 3
    store = new_store()
    # A first run over the first two thirds, saving the fold state every 100 events.
    first = Projector(store, sources(log_of("balance.events", values[:cut]), outputs), state_every_events=100)
    assert first.run().ok
    saved = store.load_state("balance.events")
    assert saved is not None and cut - 100 < saved.seq <= cut
    # The restart starts from that state: it re-reads only what came after it.
    second = Projector(store, sources(events, outputs), state_every_events=100)
    report = second.run()
    assert report.ok
    balance = report.streams[0]
    assert balance.restored_from_seq == saved.seq
    assert balance.folded_without_writing == cut - saved.seq
    assert balance.written == len(values) - cut
    assert dump(store) == clean_dump(events, outputs)
    assert verify_store(store, events).ok


def test_a_restart_on_a_log_missing_an_event_below_the_saved_state_reports_that_gap(new_store: StoreFactory) -> None:
    """The resume is judged by seq: a log that lost an event before the saved state puts
    other records at the saved offset, so the stream folds from the start and finds the
    real gap (not a gap at the saved state's next seq, which is present)."""
    events, outputs = workload_logs(seed=9, orders=600)
    values = records(events)
    cut = len(values) * 2 // 3
    store = new_store()
    assert Projector(store, sources(log_of("balance.events", values[:cut]), outputs), state_every_events=100).run().ok
    saved = store.load_state("balance.events")
    assert saved is not None and saved.seq > 300
    lost = 150  # an offset well below the saved state
    report = project_faulty(store, values[:lost] + values[lost + 1 :], outputs, state_every_events=100)
    assert report.streams[0].halted and report.streams[0].restored_from_seq == 0
    (fault,) = store.faults()
    assert (fault.kind, fault.missing) == ("gap", (seq_of(values[lost]), seq_of(values[lost])))


def test_an_unreadable_saved_state_is_refused_and_the_stream_folds_from_the_start(tmp_path) -> None:
    from settlement.store import Checkpoint

    events, outputs = workload_logs()
    store = SQLiteStore(tmp_path / "p.db")
    store.commit([], Checkpoint("balance.events", 5, 5), state=b"\x00not a state")
    store.commit([], Checkpoint("balance.events", 3, 3))  # the checkpoint never goes back
    assert store.checkpoint("balance.events").seq == 5
    report = Projector(store, sources(events, outputs)).run()
    # An undecodable state is refused (with a warning) and the stream folds from seq 1.
    assert report.ok and report.streams[0].restored_from_seq == 0
    assert report.streams[0].folded_without_writing == 5


def test_following_file_logs_written_by_another_process(tmp_path) -> None:
    """`ledger project --follow` in its own process picks up batches as a writer appends
    them to the file logs, finds a symbol's engine.outputs that appears meanwhile, and
    ends with the same rows as a one-shot projection."""
    import subprocess
    import sys
    import time

    from ledger import FileLog, FsyncPolicy

    events, outputs = workload_logs(seed=5, orders=300)
    root = tmp_path / "live"
    first_symbol, late_symbol = sorted(outputs)
    logs = {"balance.events": FileLog(root / "balance.events", fsync=FsyncPolicy.NEVER)}
    logs[f"engine.outputs/{first_symbol}"] = FileLog(root / "engine.outputs" / first_symbol, fsync=FsyncPolicy.NEVER)
    path = tmp_path / "follow.db"
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger.app.cli",
            "project",
            "--follow",
            "--max-seconds",
            "30",
            "--source",
            str(root),
            "--store",
            f"sqlite:{path}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        pending = {"balance.events": records(events)}
        pending.update({f"engine.outputs/{s}": records(o) for s, o in outputs.items()})
        logs["balance.events"].append(pending["balance.events"][:40])
        del pending["balance.events"][:40]
        # Everything else is appended only once the follower has projected the first
        # batch: it must see records that arrive after it opened the logs.
        deadline = time.monotonic() + 25
        first = None
        while time.monotonic() < deadline and (first is None or first.seq < 40):
            time.sleep(0.02)
            first = SQLiteStore(path).checkpoint("balance.events") if path.exists() else None
        assert first is not None and first.seq == 40, "the follower never projected the first batch"
        # A symbol's output log that did not exist when the follower started.
        logs[f"engine.outputs/{late_symbol}"] = FileLog(root / "engine.outputs" / late_symbol, fsync=FsyncPolicy.NEVER)
        while any(pending.values()):
            for name, values in pending.items():
                logs[name].append(values[:40])
                del values[:40]
            time.sleep(0.01)
        finals = {"balance.events": events.end_offset()}
        finals.update({f"engine.outputs/{s}": o.end_offset() for s, o in outputs.items()})
        store = SQLiteStore(path)

        def caught_up() -> bool:
            return all((c := store.checkpoint(name)) is not None and c.seq == seq for name, seq in finals.items())

        deadline = time.monotonic() + 25
        while not caught_up() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert caught_up(), {name: store.checkpoint(name) for name in finals}
        assert dump(store) == clean_dump(events, outputs)
    finally:
        follower.kill()
        follower.wait(timeout=30)
        for log in logs.values():
            log.close()


# -- edge cases: an order's end, faults inside a batch, repaired logs ---------------------


def test_a_market_buy_filled_with_budget_left_ends_filled_with_its_quantity(new_store: StoreFactory) -> None:
    """The trade that fills a market buy ends it; the unlock of its unspent budget that
    follows must not rewrite its status or filled quantity."""
    exchange, outputs = new_exchange()
    exchange.submit([Deposit(1001, 1, "BTC", 1 * BTC), Deposit(1002, 1, "USDT", 20_000 * USDT)])
    (sell,) = exchange.submit([PlaceOrder(1001, 2, "BTC-USDT", Side.SELL, qty=50, price=150)])
    buy = exchange.submit(
        [
            PlaceOrder(
                1002,
                2,
                "BTC-USDT",
                Side.BUY,
                qty=50,
                price=0,
                order_type=OrderType.MARKET,
                tif=TimeInForce.IOC,
                quote_budget=100 * USDT,
            )
        ]
    )
    kinds = [type(e).__name__ for e in buy]
    assert kinds == ["OrderAccepted", "TradeSettled", "FundsUnlocked"], kinds
    store = new_store()
    assert Projector(store, sources(exchange.events, outputs)).run().ok
    q = Queries(store)
    for order_id in (sell.order_id, buy[0].order_id):
        order = q.order(order_id)
        assert order is not None and (order["status"], order["filled_qty"]) == (STATUS_FILLED, 50)
    assert q.open_orders(1002) == [] and q.open_orders(1001) == []
    assert q.balances(1002)["USDT"] == (20_000 * USDT - 75 * USDT, 0)


def test_a_fault_inside_a_batch_never_saves_half_an_event_in_the_fold_state(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    from ledger import TradeSettled

    k = next(i for i, raw in enumerate(values) if type(EVENTS.decode(raw)) is TradeSettled and i > len(values) // 2)
    bad = EVENTS.encode(msgspec.structs.replace(EVENTS.decode(values[k]), symbol="ZZZ-USDT"))
    store = new_store()
    faulty = values[:k] + [bad] + values[k + 1 :]
    faulty_sources = sources(log_of("balance.events", faulty), outputs)
    report = Projector(store, faulty_sources, state_every_events=1, batch_events=10).run()
    assert report.streams[0].halted and report.streams[0].fault.kind == "malformed"
    # The repaired log, restarted from the last state saved (by a batch that ended
    # cleanly, before the bad trade): exactly the clean rows.
    repaired = Projector(store, sources(events, outputs), state_every_events=1, batch_events=10).run()
    assert repaired.ok and 0 < repaired.streams[0].restored_from_seq < seq_of(values[k])
    assert dump(store) == clean_dump(events, outputs)
    assert store.faults() == [], "the malformed record's fault is resolved once the stream is past it"


def test_a_seq_below_one_is_malformed_not_a_duplicate(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    original = EVENTS.decode(values[k])
    store = new_store()
    for bad_seq in (0, -7):
        bad = EVENTS.encode(msgspec.structs.replace(original, seq=bad_seq))
        report = Projector(store, sources(log_of("balance.events", values[:k] + [bad]), outputs)).run()
        assert report.streams[0].halted
        fault = report.streams[0].fault
        assert (fault.kind, fault.expected, fault.received) == ("malformed", seq_of(values[k - 1]) + 1, bad_seq)


def test_a_conflict_is_resolved_once_a_repaired_log_gets_past_it(new_store: StoreFactory) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = next(i for i, raw in enumerate(values) if type(EVENTS.decode(raw)) is Deposited and i > 20)
    original = EVENTS.decode(values[k])
    altered = EVENTS.encode(msgspec.structs.replace(original, amount=original.amount + 1))
    store = new_store()
    assert not project_faulty(store, values[: k + 3] + [altered] + values[k + 3 :], outputs).ok
    (fault,) = store.faults()
    assert (fault.kind, fault.expected, fault.received) == ("conflict", original.seq, seq_of(values[k + 2]))
    assert Projector(store, sources(events, outputs)).run().ok
    assert store.faults() == [] and store.faults(open_only=False)[0].resolved


def test_a_gap_found_again_takes_its_new_range_and_closes_only_when_all_of_it_arrives(
    new_store: StoreFactory,
) -> None:
    events, outputs = workload_logs()
    values = records(events)
    k = len(values) // 2
    store = new_store()
    assert not project_faulty(store, values[:k] + values[k + 10 :], outputs).ok
    assert store.faults()[0].missing == (seq_of(values[k]), seq_of(values[k + 9]))
    # Partly repaired: 5 of the 10 are back; the gap is still open, with its new range.
    assert not project_faulty(store, values[: k + 5] + values[k + 10 :], outputs).ok
    (fault,) = store.faults()
    assert fault.missing == (seq_of(values[k + 5]), seq_of(values[k + 9]))
    assert Projector(store, sources(events, outputs)).run().ok
    assert store.faults() == []


def test_a_gap_after_a_resolved_one_at_the_same_seq_is_described_by_its_own_range(
    new_store: StoreFactory, tmp_path
) -> None:
    """A store that lost writes (a database's periodic commit log, a restore) makes the
    projector fold a stretch again and may meet a different gap where a resolved one
    was: it is a new fault, recorded with its own range, detail and time, and open."""
    from settlement.store import Fault

    store = new_store()
    first = Fault("balance.events", 5, "gap", 8, "offset 4: seq 8 where 5 was due (missing 5..7)", 1_000)
    store.record_fault(first)
    assert [f.missing for f in store.faults()] == [(5, 7)]
    assert [f.expected for f in store.resolve_faults("balance.events", 7)] == [5]
    assert store.faults() == []
    second = Fault("balance.events", 5, "gap", 12, "offset 4: seq 12 where 5 was due (missing 5..11)", 2_000)
    store.record_fault(second)
    assert store.faults() == [second]
    # Found again while open (a retry): the range follows, the first detection's time stays.
    again = Fault("balance.events", 5, "gap", 10, "offset 4: seq 10 where 5 was due (missing 5..9)", 3_000)
    store.record_fault(again)
    assert store.faults() == [msgspec.structs.replace(again, first_seen_ms=2_000)]
    assert store.resolve_faults("balance.events", 8) == []
    assert [f.missing for f in store.faults()] == [(5, 9)]
