"""The services (``ledger.app.services``): UBSCore, the engines and the projector as their
own loops over logs. In memory here (every rule, fast); the same services as separate OS
processes over the real Kafka and Cassandra are in test_pipeline.py.

What every test compares is the outcome, keyed by client request ``(user, request_id)``
(order ids differ between runs that interleave settlement differently): balances,
trades in order, each order's end and filled quantity, each book's resting orders, and
the answer to every command that is not a cancel."""

from __future__ import annotations

import random
from typing import Any

import pytest

from ledger import COMMANDS, EVENTS, OUTPUTS, Deposit, SequenceError
from ledger.app.load import planned_workload
from ledger.app.services import (
    EngineService,
    ProjectService,
    ServiceError,
    Stopper,
    UBSCoreService,
    run_services,
)
from ledger.app.streams import MemoryStreams
from ledger.logs import layout
from ledger.protocol.codec import DecodeError
from ledger.protocol.commands import CancelOrder, PlaceOrder, Side
from ledger.protocol.events import Rejected, TradeSettled
from ledger.protocol.reasons import Reason
from ledger.rebuild import replay
from support import BTC, USDT, assert_conserved, exchange_outcome, outcome, records


def streams_outcome(streams: MemoryStreams) -> dict[str, Any]:
    outputs = {s: streams.outputs(s) for s in streams.output_symbols()}
    return outcome(streams.commands(), streams.events(), outputs)


def run_quiet(services: list[Any]) -> None:
    run_services(services, Stopper(), idle_exit_s=0.05, summary_every_s=0)


def send(streams: MemoryStreams, commands: list[Any]) -> None:
    streams.commands(writer=True).append([COMMANDS.encode(c) for c in commands])


def services(streams: MemoryStreams, batch: int = 200) -> list[Any]:
    return [UBSCoreService(streams, batch, 0), EngineService(streams, None, batch, 0)]


# -- the reference scenarios ------------------------------------------------------------


def reference_setup() -> list[Any]:
    from ledger import Asset, ListAsset, ListSymbol
    from support import BTC_USDT

    return [ListAsset(1, Asset("BTC", 8)), ListAsset(2, Asset("USDT", 6)), ListSymbol(3, BTC_USDT)]


def test_reference_scenario_one_trade_with_exact_fees_through_the_services() -> None:
    streams = MemoryStreams()
    send(streams, reference_setup() + [Deposit(1001, 1, "BTC", 1 * BTC), Deposit(1002, 1, "USDT", 20_000 * USDT)])
    send(streams, [PlaceOrder(1001, 2, "BTC-USDT", Side.SELL, qty=50, price=150)])
    send(streams, [PlaceOrder(1002, 2, "BTC-USDT", Side.BUY, qty=50, price=150)])
    run_quiet(services(streams))
    core = replay(streams.events())
    state = core.state
    (trade,) = [e for e in map(EVENTS.decode, records(streams.events())) if type(e) is TradeSettled]
    assert (trade.qty, trade.price, trade.base_amount, trade.quote_amount) == (50, 150, BTC // 2, 75 * USDT)
    assert (trade.maker_fee, trade.taker_fee, trade.taker_refund) == (75_000, 100_000, 0)
    assert state.balance(1001, "BTC") == (BTC // 2, 0)
    assert state.balance(1001, "USDT") == (75 * USDT - 75_000, 0)
    assert state.balance(1002, "BTC") == (BTC // 2 - 100_000, 0)
    assert state.balance(1002, "USDT") == (20_000 * USDT - 75 * USDT, 0)
    assert state.balance(0, "BTC") == (100_000, 0)
    assert state.balance(0, "USDT") == (75_000, 0)
    assert state.orders == {}
    assert_conserved(core)


def test_reference_scenario_self_trade_through_the_services_releases_every_lock() -> None:
    streams = MemoryStreams()
    send(streams, reference_setup() + [Deposit(2001, 1, "BTC", 1 * BTC), Deposit(2001, 2, "USDT", 1_000 * USDT)])
    send(streams, [PlaceOrder(2001, 3, "BTC-USDT", Side.SELL, qty=1, price=50_000)])
    send(streams, [PlaceOrder(2001, 4, "BTC-USDT", Side.BUY, qty=1, price=50_000)])
    running = services(streams)
    run_quiet(running)
    state = replay(streams.events()).state
    assert state.balance(2001, "USDT") == (1_000 * USDT, 0)
    assert state.balance(2001, "BTC") == (BTC - BTC // 100, BTC // 100)  # the sell still rests
    # Cancelled by its client order id: the placing request, not the order id.
    send(streams, [CancelOrder(2001, 5, 0, order_request_id=3)])
    run_quiet(running)
    core = replay(streams.events())
    assert core.state.balance(2001, "BTC") == (BTC, 0)
    assert core.state.orders == {}
    assert_conserved(core)


# -- the services against the in-process exchange -----------------------------------------


def test_a_planned_workload_ends_as_in_the_in_process_exchange() -> None:
    commands = planned_workload(seed=5, commands=4_000, users=60, symbols=3)
    streams = MemoryStreams()
    send(streams, commands)
    run_quiet(services(streams, batch=150))
    got, expected = streams_outcome(streams), exchange_outcome(commands)
    assert got["conservation"] == [] and expected["conservation"] == []
    for key in ("balances", "trades", "ends", "filled", "books", "answers", "open"):
        assert got[key] == expected[key], key
    assert sum(len(t) for t in got["trades"].values()) > 200  # the workload trades, it does not just rest
    assert any(r for side in got["books"].values() for r in side)


def test_restarts_at_random_points_end_the_same() -> None:
    """A service object thrown away at any batch (a crash: nothing but the logs survive)
    and a new one opened on the same logs goes on as if nothing happened."""
    commands = planned_workload(seed=8, commands=2_500, users=40, symbols=2)
    streams = MemoryStreams()
    send(streams, commands)
    rng = random.Random(3)
    for _round in range(12):
        ubscore = UBSCoreService(streams, rng.randint(1, 90), 0)
        engine = EngineService(streams, None, rng.randint(1, 90))
        ubscore.open()
        engine.open()
        for _ in range(rng.randint(1, 15)):
            ubscore.step()
            engine.step()
        ubscore.close()
        engine.close()
    run_quiet(services(streams))
    got, expected = streams_outcome(streams), exchange_outcome(commands)
    for key in ("balances", "trades", "ends", "filled", "books", "answers", "open"):
        assert got[key] == expected[key], key


def test_engines_hosting_one_symbol_each_equal_one_hosting_all() -> None:
    commands = planned_workload(seed=2, commands=1_500, users=30, symbols=3)
    one, many = MemoryStreams(), MemoryStreams()
    send(one, commands)
    send(many, commands)
    run_quiet(services(one))
    run_quiet([UBSCoreService(many, 200, 0)] + [EngineService(many, [s], 200, 0) for s in ("BTC-USDT", "ETH-USDT")]
              + [EngineService(many, ["SOL-USDT"], 200, 0)])
    assert {s: records(one.outputs(s)) for s in one.output_symbols()} == {
        s: records(many.outputs(s)) for s in many.output_symbols()
    }
    assert records(one.events()) == records(many.events())


def test_a_symbol_listed_while_running_is_picked_up_by_every_reader(tmp_path) -> None:
    from settlement.sqlite import SQLiteStore

    commands = planned_workload(seed=4, commands=600, users=10, symbols=2)
    streams = MemoryStreams()
    send(streams, commands)
    store_path = tmp_path / "p.db"
    running = services(streams) + [ProjectService(streams, lambda: SQLiteStore(store_path))]
    run_quiet(running)
    assert streams.output_symbols() == ["BTC-USDT", "ETH-USDT"]
    from ledger import ListSymbol, Symbol

    later = [ListSymbol(10**8, Symbol("SOL-USDT", "SOL", "USDT", 10**8, 1)), Deposit(1, 10**8 + 1, "SOL", 10**10),
             PlaceOrder(1, 10**8 + 2, "SOL-USDT", Side.SELL, 3, 1_500)]
    send(streams, later)
    run_quiet(running)
    assert streams.output_symbols() == ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
    rested = [OUTPUTS.decode(r) for r in records(streams.outputs("SOL-USDT"))]
    assert [type(o).__name__ for o in rested] == ["BookOpened", "OrderRested"]
    from settlement import verify_store

    store = SQLiteStore(store_path)
    report = verify_store(store, streams.events(), layout.EVENTS)
    assert report.ok, report.differences
    assert {c.stream for c in [store.checkpoint(layout.output_stream("SOL-USDT"))] if c is not None}
    store.close()


# -- holes: each reproduced, now closed -------------------------------------------------


def test_a_second_ubscore_on_the_same_stream_stops_instead_of_forking() -> None:
    streams = MemoryStreams()
    send(streams, planned_workload(seed=1, commands=300, users=5, symbols=1))
    first, second = UBSCoreService(streams, 50, 0), UBSCoreService(streams, 50, 0)
    first.open()
    second.open()
    first.step()
    with pytest.raises(SequenceError, match="another writer"):
        second.step()


def test_an_event_stating_a_later_command_offset_is_refused_on_resume() -> None:
    """Hole 3: one event appended from outside while UBSCore was stopped, stating a later
    input offset, made a restart skip every command before it in silence."""
    commands = planned_workload(seed=3, commands=400, users=5, symbols=1)
    streams = MemoryStreams()
    send(streams, commands[:200])
    run_quiet([UBSCoreService(streams, 50, 0)])
    send(streams, commands[200:])
    core = replay(streams.events())
    # A forged answer to the command at offset 350 (its deposit), appended from outside.
    forged_offset = next(i for i in range(300, 400) if type(commands[i]) is Deposit)
    c = commands[forged_offset]
    forged = core.execute(c, forged_offset)
    streams.events().append([EVENTS.encode(e) for e in forged])
    with pytest.raises(ServiceError, match="skipped command"):
        run_quiet([UBSCoreService(streams, 50, 0)])


def test_an_answer_to_an_offset_holding_no_command_is_refused_on_resume() -> None:
    commands = planned_workload(seed=3, commands=100, users=5, symbols=1)
    streams = MemoryStreams()
    send(streams, commands)
    run_quiet([UBSCoreService(streams, 50, 0)])
    core = replay(streams.events())
    beyond = streams.commands().end_offset() + 5
    streams.events().append([EVENTS.encode(e) for e in core.execute(Deposit(9, 10**9, "USDT", 5), beyond)])
    with pytest.raises(ServiceError, match="holds no record"):
        run_quiet([UBSCoreService(streams, 50, 0)])


def test_a_null_record_is_a_malformed_command_but_corruption_on_our_own_streams() -> None:
    """Hole 4: a tombstone (read as an empty record) on balance.operations is answered
    MALFORMED_COMMAND and the service goes on; on balance.events or an engine's stream it
    stops the reader with an error naming the offset, never a TypeError."""
    commands = planned_workload(seed=6, commands=200, users=5, symbols=1)

    def deployment() -> MemoryStreams:
        streams = MemoryStreams()
        send(streams, commands[:100])
        streams.commands(writer=True).append([b""])
        send(streams, commands[100:])
        run_quiet(services(streams))
        return streams

    streams = deployment()
    answers = [EVENTS.decode(r) for r in records(streams.events())]
    (malformed,) = [e for e in answers if type(e) is Rejected and e.reason == Reason.MALFORMED_COMMAND]
    assert malformed.input_offset == 100 and malformed.record_bytes == 0
    end = streams.events().end_offset()
    streams.events().append([b""])
    with pytest.raises(DecodeError, match=f"{layout.EVENTS} offset {end}"):
        run_quiet([EngineService(streams, None, 50, 0)])
    streams = deployment()
    output = streams.outputs("BTC-USDT")
    end = output.end_offset()
    output.append([b""])
    with pytest.raises(DecodeError, match=f"offset {end}"):
        run_quiet([UBSCoreService(streams, 50, 0)])


def test_the_metrics_count_what_the_services_did() -> None:
    import socket
    import urllib.request

    from ledger.app.metrics import ServiceMetrics

    streams = MemoryStreams()
    send(streams, planned_workload(seed=9, commands=500, users=10, symbols=1))
    running = services(streams)
    metrics = ServiceMetrics()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.serve(port)
    run_services(running, Stopper(), idle_exit_s=0.05, summary_every_s=0, metrics=metrics)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    ubscore, engine = running
    written = sum(streams.outputs(s).end_offset() for s in streams.output_symbols())
    assert f'ledger_outputs_total{{service="ubscore"}} {float(streams.events().end_offset())}' in text
    assert f'ledger_inputs_total{{service="ubscore"}} {float(ubscore.counters.inputs)}' in text
    assert f'ledger_outputs_total{{service="engine"}} {float(written)}' in text
    assert f'ledger_batch_seconds_count{{service="ubscore"}} {float(ubscore.counters.batches)}' in text
    assert 'ledger_input_lag{input="commands",service="ubscore"}' in text
    assert ubscore.counters.inputs > 500 and written > 100  # the run did something to count


# -- UBSCore's snapshots ----------------------------------------------------------------


def test_restarts_from_snapshots_end_as_the_whole_log_and_start_from_the_newest(tmp_path, caplog) -> None:
    """Crashes at random batches with a snapshot directory: each restart starts from the
    newest snapshot (only the tail replayed), and the run ends as the in-process exchange."""
    import logging

    from ledger.app.snapshots import SnapshotDir

    commands = planned_workload(seed=8, commands=2_500, users=40, symbols=2)
    streams = MemoryStreams()
    send(streams, commands)
    snapshots = SnapshotDir(tmp_path / "snapshots", kept=2)
    rng = random.Random(4)
    resumed_from = []
    caplog.set_level(logging.INFO, logger="ledger.services")
    for _round in range(10):
        ubscore = UBSCoreService(streams, rng.randint(1, 90), 0, snapshots=snapshots, snapshot_every=300)
        engine = EngineService(streams, None, rng.randint(1, 90))
        ubscore.open()
        assert ubscore.core is not None
        newest = snapshots.files()[0].name if snapshots.files() else None
        if newest is not None:
            resumed_from.append(newest)
            assert ubscore.core.state.seq - ubscore._saved_seq < 300 + 2 * 90 * 4  # only a tail replayed
        assert ubscore.core.state_hash() == replay(streams.events()).state_hash()
        engine.open()
        for _ in range(rng.randint(3, 15)):
            ubscore.step()
            engine.step()
        ubscore.close()
        engine.close()
    run_quiet([UBSCoreService(streams, 200, 0, snapshots=snapshots, snapshot_every=300), EngineService(streams)])
    assert len(resumed_from) >= 5 and len(snapshots.files()) == 2  # older ones removed
    assert sum("state from ubscore-" in r.getMessage() for r in caplog.records) >= 5
    got, expected = streams_outcome(streams), exchange_outcome(commands)
    for key in ("balances", "trades", "ends", "filled", "books", "answers", "open"):
        assert got[key] == expected[key], key


def _snapshotted(tmp_path: Any) -> tuple[MemoryStreams, Any]:
    from ledger.app.snapshots import SnapshotDir

    streams = MemoryStreams()
    send(streams, planned_workload(seed=6, commands=1_200, users=20, symbols=2))
    snapshots = SnapshotDir(tmp_path / "snapshots", kept=5)
    run_quiet([UBSCoreService(streams, 100, 0, snapshots=snapshots, snapshot_every=250), EngineService(streams)])
    assert len(snapshots.files()) >= 3
    return streams, snapshots


@pytest.mark.parametrize(
    "damage", ["truncated", "flipped state", "another stream", "another stream name", "inner seq", "ahead of the log"]
)
def test_a_snapshot_the_log_does_not_confirm_is_passed_over_naming_why(tmp_path, caplog, damage: str) -> None:
    import logging

    import msgspec

    streams, snapshots = _snapshotted(tmp_path)
    newest, older = snapshots.files()[0], snapshots.files()[1]
    body = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(body[: len(body) // 2])
        why = "not a UBSCore service snapshot"
    elif damage == "flipped state":
        doc = msgspec.json.decode(body)
        doc["snapshot"]["state"]["last_input_offset"] += 1  # the file parses; its hash no longer holds
        newest.write_bytes(msgspec.json.encode(doc))
        why = "does not match its recorded hash"
    elif damage == "another stream":
        doc = msgspec.json.decode(body)
        doc["record_digest"] = "0" * 64
        newest.write_bytes(msgspec.json.encode(doc))
        why = "not the record it was taken after"
    elif damage == "another stream name":
        doc = msgspec.json.decode(body)
        doc["stream"] = "elsewhere"
        newest.write_bytes(msgspec.json.encode(doc))
        why = "taken on elsewhere"
    elif damage == "inner seq":
        doc = msgspec.json.decode(body)
        doc["snapshot"]["seq"] += 1
        newest.write_bytes(msgspec.json.encode(doc))
        why = "its state is at seq"
    else:
        doc = msgspec.json.decode(body)
        seq = replay(streams.events()).state.seq + 10
        doc["seq"] = doc["snapshot"]["seq"] = seq
        newest.unlink()
        newest = newest.with_name(f"ubscore-{seq:020d}.snapshot")
        newest.write_bytes(msgspec.json.encode(doc))
        why = "beyond the end of"
    caplog.set_level(logging.INFO, logger="ledger.services")
    service = UBSCoreService(streams, 100, 0, snapshots=snapshots)
    service.open()
    assert service.core is not None
    assert service.core.state_hash() == replay(streams.events()).state_hash()
    messages = [r.getMessage() for r in caplog.records]
    assert any(why in m and newest.name in m for m in messages if "passed over" in m), messages
    assert any(f"state from {older.name}" in m for m in messages), messages
    assert not newest.exists() and newest.with_name(newest.name + ".passed-over").exists()  # set aside
    assert snapshots.files()[0] == older
    service.close()


def test_with_every_snapshot_passed_over_the_whole_log_is_replayed(tmp_path, caplog) -> None:
    import logging

    streams, snapshots = _snapshotted(tmp_path)
    damaged = snapshots.files()
    for path in damaged:
        path.write_bytes(b"{}")
    caplog.set_level(logging.INFO, logger="ledger.services")
    service = UBSCoreService(streams, 100, 0, snapshots=snapshots)
    service.open()
    assert service.core is not None and service.core.state_hash() == replay(streams.events()).state_hash()
    assert sum("passed over" in r.getMessage() for r in caplog.records) == len(damaged)
    assert snapshots.files() == []  # every one set aside
    assert not any("state from" in r.getMessage() for r in caplog.records)
    service.close()
