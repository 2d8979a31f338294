"""The whole exchange in one process: reference scenarios with exact balances, and
whole-exchange properties on random workloads."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import (
    CancelOrder,
    Deposit,
    FundsUnlocked,
    OrderAccepted,
    PlaceOrder,
    Side,
    TimeInForce,
    TradeSettled,
)
from ledger.app.exchange import Exchange, verify
from ledger.logs.base import MemoryLog
from ledger.protocol.codec import EVENTS, OUTPUTS, DecodeError
from ledger.protocol.outputs import EngineOutput, OrderCancelled, OrderRested
from ledger.protocol.reasons import Reason
from support import BTC, USDT, assert_conserved, new_exchange, run_workload


def test_reference_scenario_one_trade_with_exact_fees() -> None:
    exchange, outputs = new_exchange()
    exchange.submit([Deposit(1001, 1, "BTC", 1 * BTC), Deposit(1002, 1, "USDT", 20_000 * USDT)])
    sell = exchange.submit([PlaceOrder(1001, 2, "BTC-USDT", Side.SELL, qty=50, price=150)])
    buy = exchange.submit([PlaceOrder(1002, 2, "BTC-USDT", Side.BUY, qty=50, price=150)])
    assert type(sell[0]) is OrderAccepted and sell[0].lock_amount == BTC // 2
    trades = [e for e in buy if type(e) is TradeSettled]
    assert len(trades) == 1
    trade = trades[0]
    assert (trade.qty, trade.price, trade.base_amount, trade.quote_amount) == (50, 150, BTC // 2, 75 * USDT)
    # Maker (seller) pays 0.1% of the 75 USDT it receives; taker (buyer) 0.2% of 0.5 BTC.
    assert (trade.maker_fee, trade.taker_fee, trade.taker_refund) == (75_000, 100_000, 0)
    state = exchange.core.state
    assert state.balance(1001, "BTC") == (BTC // 2, 0)
    assert state.balance(1001, "USDT") == (75 * USDT - 75_000, 0)
    assert state.balance(1002, "BTC") == (BTC // 2 - 100_000, 0)
    assert state.balance(1002, "USDT") == (20_000 * USDT - 75 * USDT, 0)
    assert state.balance(0, "BTC") == (100_000, 0)
    assert state.balance(0, "USDT") == (75_000, 0)
    assert state.orders == {}
    assert_conserved(exchange.core)
    assert verify(exchange.events, outputs, exchange.state_hashes()).ok


def test_reference_scenario_self_trade_cancels_the_taker_and_releases_every_lock() -> None:
    exchange, outputs = new_exchange()
    exchange.submit([Deposit(2001, 1, "BTC", 1 * BTC), Deposit(2001, 2, "USDT", 1_000 * USDT)])
    (sell,) = exchange.submit([PlaceOrder(2001, 3, "BTC-USDT", Side.SELL, qty=1, price=50_000)])
    buy_events = exchange.submit([PlaceOrder(2001, 4, "BTC-USDT", Side.BUY, qty=1, price=50_000)])
    accepted, unlocked = buy_events
    assert type(accepted) is OrderAccepted and accepted.lock_amount == 500 * USDT
    assert type(unlocked) is FundsUnlocked and unlocked.order_id == accepted.order_id
    assert unlocked.amount == 500 * USDT
    engine_outputs = [o for o in outputs["BTC-USDT"].read(0).values]
    from ledger import OUTPUTS

    cancelled = [OUTPUTS.decode(o) for o in engine_outputs if type(OUTPUTS.decode(o)) is OrderCancelled]
    assert [(c.order_id, c.reason) for c in cancelled] == [(accepted.order_id, Reason.SELF_TRADE_PREVENTED)]
    state = exchange.core.state
    assert state.balance(2001, "USDT") == (1_000 * USDT, 0)
    assert state.balance(2001, "BTC") == (BTC - BTC // 100, BTC // 100)  # the sell still rests
    exchange.submit([CancelOrder(2001, 5, sell.order_id)])
    assert state.balance(2001, "BTC") == (BTC, 0)
    assert state.orders == {}
    assert_conserved(exchange.core)
    assert verify(exchange.events, outputs, exchange.state_hashes()).ok


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(50, 600))
def test_random_workloads_conserve_and_replay(seed: int, orders: int) -> None:
    exchange, outputs = run_workload(seed, orders)
    assert_conserved(exchange.core)
    report = verify(exchange.events, outputs, exchange.state_hashes())
    assert report.ok, report.problems


def test_seeded_workload_is_deterministic_and_snapshots_are_equivalent() -> None:
    first, outputs = run_workload(7, 4_000)
    second, _ = run_workload(7, 4_000)
    assert first.state_hashes() == second.state_hashes()
    assert first.events.read(0, 10**9).values == second.events.read(0, 10**9).values
    assert_conserved(first.core)
    from ledger import EVENTS

    trades = sum(1 for r in first.events.read(0, 10**9).values if type(EVENTS.decode(r)) is TradeSettled)
    assert trades > 100
    # UBSCore: snapshot at k + the rest == full replay.
    from ledger.rebuild import replay

    half = replay(first.events, until=first.core.state.seq // 2)
    assert replay(first.events, snapshot=half.snapshot()).state_hash() == first.core.state_hash()
    # Engines: snapshot at k + the rest of the outputs == full rebuild.
    from ledger import OUTPUTS
    from matching.engine import MatchingEngine

    for symbol, log in outputs.items():
        records = [OUTPUTS.decode(r) for r in log.read(0, 10**9).values]
        k = len(records) // 2
        engine = MatchingEngine(symbol)
        for output in records[:k]:
            engine.apply(output)
        resumed = MatchingEngine.from_snapshot(engine.snapshot())
        for output in records[k:]:
            resumed.apply(output)
        assert resumed.state_hash() == first.engines[symbol].state_hash()


@pytest.mark.slow
def test_the_demo_command_passes_its_own_checks(tmp_path) -> None:
    from ledger.app.cli import main

    assert main(["demo", "--dir", str(tmp_path / "demo"), "--orders", "3000", "--users", "50",
                 "--fsync", "never", "--no-progress", "--json"]) == 0


# -- verify streams the logs: an altered record is still caught, and named ----------------


def _altered(log: MemoryLog, offset: int, record: bytes | None) -> MemoryLog:
    """A copy of ``log`` with the record at ``offset`` replaced (None: dropped)."""
    records = list(log.read(0, 10**9).values)
    if record is None:
        del records[offset]
    else:
        records[offset] = record
    copy = MemoryLog(log.name)
    copy.append(records)
    return copy


def _decoded(log: MemoryLog) -> list[EngineOutput]:
    return [OUTPUTS.decode(r) for r in log.read(0, 10**9).values]


@pytest.fixture(scope="module")
def workload() -> tuple[Exchange, dict[str, MemoryLog]]:
    return run_workload(11, 1_500)


def test_an_altered_output_record_is_named_by_its_position(workload) -> None:
    exchange, outputs = workload
    symbol = "BTC-USDT"
    records = _decoded(outputs[symbol])
    at = len(records) // 2
    # input_seq is overwritten by the next output's on rebuild: only the byte for byte
    # comparison of the re-run with the log can see this change.
    changed = msgspec.structs.replace(records[at], input_seq=records[at].input_seq + 1)
    logs = dict(outputs, **{symbol: _altered(outputs[symbol], at, OUTPUTS.encode(changed))})
    report = verify(exchange.events, logs, exchange.state_hashes())
    assert not report.ok
    assert report.problems == [
        f"engine {symbol}: re-running it over balance.events differs from its log at output {at} "
        f"({len(records)} outputs re-run, {len(records)} recorded)"
    ]
    assert report.replayed_hashes == exchange.state_hashes()


def test_a_missing_or_extra_output_record_is_named_by_its_position(workload) -> None:
    exchange, outputs = workload
    symbol = "ETH-USDT"
    count = outputs[symbol].end_offset()
    short = dict(outputs, **{symbol: _altered(outputs[symbol], count - 1, None)})
    problems = verify(exchange.events, short, exchange.state_hashes()).problems
    assert (
        f"engine {symbol}: re-running it over balance.events differs from its log at output {count - 1} "
        f"({count} outputs re-run, {count - 1} recorded)"
    ) in problems
    longer = MemoryLog(symbol)
    longer.append(list(outputs[symbol].read(0, 10**9).values))
    last = outputs[symbol].read(count - 1).values[0]
    longer.append([last])  # the last output again: a seq the book has already taken
    problems = verify(exchange.events, dict(outputs, **{symbol: longer}), exchange.state_hashes()).problems
    assert problems[0].startswith(f"engine {symbol}: its log does not rebuild at offset {count}: ")
    assert (
        f"engine {symbol}: re-running it over balance.events differs from its log at output {count} "
        f"({count} outputs re-run, {count + 1} recorded)"
    ) in problems


def test_an_output_record_that_does_not_decode_raises_naming_its_offset(workload) -> None:
    exchange, outputs = workload
    symbol = "BTC-USDT"
    damaged = _altered(outputs[symbol], 5, b"\x93\xa5Bogus\x01\x02")
    with pytest.raises(DecodeError, match=f"{symbol} offset 5: "):
        verify(exchange.events, dict(outputs, **{symbol: damaged}))


def test_an_altered_balance_event_is_named_by_the_engine_output_it_changes(workload) -> None:
    exchange, outputs = workload
    symbol = "BTC-USDT"
    events = [EVENTS.decode(r) for r in exchange.events.read(0, 10**9).values]
    records = _decoded(outputs[symbol])
    first_output: dict[int, int] = {}
    for position, output in enumerate(records):
        first_output.setdefault(output.input_seq, position)
    # A resting GTC order turned IOC: UBSCore's replay is none the wiser (time in force
    # is the engine's business), but the re-run engine expires the order instead of
    # resting it.
    event = next(
        e for e in events
        if type(e) is OrderAccepted and e.symbol == symbol and e.tif == TimeInForce.GTC
        and e.seq in first_output and type(records[first_output[e.seq]]) is OrderRested
    )
    at = first_output[event.seq]
    changed = msgspec.structs.replace(event, tif=TimeInForce.IOC)
    altered = _altered(exchange.events, event.seq - 1, EVENTS.encode(changed))
    report = verify(altered, outputs, exchange.state_hashes())
    problem = next(p for p in report.problems if p.startswith(f"engine {symbol}: re-running"))
    assert f"differs from its log at output {at} (" in problem
    assert not any(p.startswith("engine ETH-USDT") for p in report.problems)


def test_the_demo_reports_the_exchange_and_the_generator_apart(tmp_path) -> None:
    from ledger.app.demo import run_demo
    from ledger.logs.file import FsyncPolicy

    summary = run_demo(tmp_path / "demo", users=10, orders=400, progress=False, fsync=FsyncPolicy.NEVER)
    assert summary.checks_ok, summary.problems
    assert 0 < summary.exchange_seconds < summary.seconds
    assert 0 < summary.generator_seconds < summary.seconds
    assert summary.exchange_seconds + summary.generator_seconds == pytest.approx(summary.seconds, abs=0.002)
    # The seconds are rounded to the millisecond, the rates computed before rounding.
    assert summary.exchange_commands_per_second == pytest.approx(summary.commands / summary.exchange_seconds, rel=0.1)
    assert summary.generator_commands_per_second > summary.commands_per_second
    assert summary.check_seconds > 0
