"""Replay never applies a gap, a duplicate, a late start or a malformed record silently."""

from __future__ import annotations

import msgspec
import pytest

from ledger import EVENTS, DecodeError, InvariantError, MemoryLog, SequenceError
from ledger.protocol.commands import Side
from ledger.protocol.events import Deposited, OrderAccepted, TradeSettled, Withdrawn
from ledger.protocol.outputs import Trade
from ledger.rebuild import replay
from ledger.ubscore import UBSCore, evolve
from support import run_exchange, seeded_commands


@pytest.fixture(scope="module")
def events():
    return run_exchange(seeded_commands(seed=9, count=500))[1]


def log_of(records) -> MemoryLog:
    log = MemoryLog("test log")
    log.append(records)
    return log


def test_gap_is_reported_with_the_missing_range(events) -> None:
    records = [EVENTS.encode(e) for e in events]
    del records[100:103]
    with pytest.raises(SequenceError, match=r"offset 100: .*missing 101\.\.103"):
        replay(log_of(records))


def test_duplicate_is_refused(events) -> None:
    records = [EVENTS.encode(e) for e in events]
    records.insert(50, records[49])
    with pytest.raises(SequenceError, match="seq 50 where 51 was expected"):
        replay(log_of(records))


def test_log_starting_after_seq_1_is_refused(events) -> None:
    records = [EVENTS.encode(e) for e in events[10:]]
    with pytest.raises(SequenceError, match=r"missing 1\.\.10"):
        replay(log_of(records))


def test_malformed_record_names_log_and_offset(events) -> None:
    records = [EVENTS.encode(e) for e in events]
    records[77] = records[77][:-2]
    with pytest.raises(DecodeError, match="test log offset 77"):
        replay(log_of(records))


def test_event_whose_balances_do_not_add_up_is_refused(events) -> None:
    records = [EVENTS.encode(e) for e in events]
    index = next(i for i, e in enumerate(events) if type(e) is Deposited)
    forged = msgspec.structs.replace(events[index], available=events[index].available + 1)
    records[index] = EVENTS.encode(forged)
    with pytest.raises(InvariantError, match=f"event seq {forged.seq}"):
        replay(log_of(records))


TRADE_BALANCE_FIELDS = [
    "maker_base_available",
    "maker_base_locked",
    "maker_quote_available",
    "maker_quote_locked",
    "taker_base_available",
    "taker_base_locked",
    "taker_quote_available",
    "taker_quote_locked",
    "fee_base_available",
    "fee_quote_available",
]


@pytest.mark.parametrize("field", TRADE_BALANCE_FIELDS + ["base_amount", "maker_fee", "taker_refund"])
def test_a_forged_trade_is_refused_and_changes_nothing(events, field) -> None:
    """Each stated balance and amount of a TradeSettled is checked, and a refused trade
    leaves the state exactly as it was (evolve applies all of an event or none)."""
    index = next(i for i, e in enumerate(events) if type(e) is TradeSettled)
    core = UBSCore()
    core.apply_all(events[:index])
    before = core.state_hash()
    forged = msgspec.structs.replace(events[index], **{field: getattr(events[index], field) + 1})
    with pytest.raises(InvariantError, match=f"event seq {forged.seq}"):
        core.apply(forged)
    assert core.state_hash() == before
    core.apply_all(events[index:])  # the genuine event still applies afterwards
    assert core.state.seq == events[-1].seq


def test_an_engine_output_is_not_a_balance_event() -> None:
    trade = Trade(1, "BTC-USDT", 1, 1, 100, 1, Side.BUY, 1, 1, 2, 2, 100, True, True)
    with pytest.raises(TypeError, match="not a balance event: Trade"):
        evolve(UBSCore().state, trade)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", [Deposited, Withdrawn, OrderAccepted])
def test_a_refused_first_event_of_a_user_leaves_no_account_behind(events, kind) -> None:
    index = next(i for i, e in enumerate(events) if type(e) is kind)
    core = UBSCore()
    core.apply_all(events[:index])
    before = core.state_hash()
    forged = msgspec.structs.replace(events[index], user=10**9, available=events[index].available + 1)
    with pytest.raises(InvariantError):
        core.apply(forged)
    assert core.state_hash() == before
