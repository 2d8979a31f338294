"""Replay never applies a gap, a duplicate, a late start or a malformed record silently."""

from __future__ import annotations

import msgspec
import pytest

from ledger import EVENTS, DecodeError, InvariantError, MemoryLog, SequenceError, replay
from ledger.events import Deposited
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
