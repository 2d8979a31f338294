"""Nothing badly typed or out of range reaches a log: commands are checked against the
schema where they enter, a record that is not a command is answered without being
quoted, and every event the reducers build passes the strict decoder."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings

from ledger import (
    COMMANDS,
    EVENTS,
    OUTPUTS,
    Asset,
    CancelOrder,
    CommandError,
    Deposit,
    ListAsset,
    ListSymbol,
    MemoryLog,
    PlaceOrder,
    Reason,
    Rejected,
    Side,
    Symbol,
    UBSCore,
    Withdraw,
    decide,
    replay,
)
from ledger.app.demo import Workload
from ledger.app.exchange import Exchange
from ledger.logs.base import scan
from ledger.protocol.limits import COMMAND_BYTES_MAX, RECORD_BYTES_MAX
from ledger.strategies import command_streams, listing_commands
from support import answer_commands

BTC_USDT = Symbol("BTC-USDT", "BTC", "USDT", lot=10**5, tick=10, maker_fee_ppm=1_000, taker_fee_ppm=2_000)
GOOD: list[Any] = [
    Deposit(7, 1, "USDT", 10**9),
    Withdraw(7, 2, "USDT", 10**6),
    PlaceOrder(7, 3, "BTC-USDT", Side.BUY, qty=2, price=100),
    CancelOrder(7, 4, 5),
    ListAsset(5, Asset("ETH", 18)),
    ListSymbol(6, Symbol("ETH-USDT", "ETH", "USDT", lot=10**15, tick=1)),
]
# Values no field of the schema holds, whatever its type: each must be refused naming it.
NEVER_VALID: list[Any] = [1.0, 0.5, "1", "", True, False, None, [1], {"a": 1}, b"\x01", (1, 2)]
# Out of range for an int64 field (ids, quantities, prices, timestamps).
INT64_OUT: list[Any] = [2**63, 2**64, -(2**63) - 1, 2**100]
# Out of range for any field: no msgpack integer or big-integer extension holds it.
AMOUNT_OUT: list[Any] = [2**256, -(2**256)]


def _bad_commands() -> list[tuple[Any, str]]:
    """(command, field it breaks) for every field of every command kind."""
    cases: list[tuple[Any, str]] = []
    for good in GOOD:
        for field in msgspec.structs.fields(good):
            if field.name in ("asset", "symbol") and isinstance(good, (ListAsset, ListSymbol)):
                continue  # a definition is checked on construction (DefinitionError)
            values = list(NEVER_VALID) + list(AMOUNT_OUT)
            if field.name not in ("amount", "quote_budget", "asset", "symbol"):
                values += INT64_OUT
            for value in values:
                if isinstance(value, str) and field.name in ("asset", "symbol"):
                    continue  # a string is a valid code or name (an unknown one is a rule)
                cases.append((msgspec.structs.replace(good, **{field.name: value}), field.name))
    for good in GOOD[:4]:  # the whole command too large
        text_field = "asset" if hasattr(good, "asset") else "symbol" if hasattr(good, "symbol") else None
        if text_field:
            cases.append((msgspec.structs.replace(good, **{text_field: "X" * COMMAND_BYTES_MAX}), ""))
    return cases


BAD = _bad_commands()


def _listed_core() -> UBSCore:
    core = UBSCore()
    for offset, command in enumerate([ListAsset(1, Asset("BTC", 8)), ListAsset(2, Asset("USDT", 6)),
                                      ListSymbol(3, BTC_USDT)]):
        core.execute(command, offset)
    return core


def test_the_table_is_large_enough() -> None:
    assert len(BAD) >= 250


@pytest.mark.parametrize(("command", "field"), BAD, ids=[f"{type(c).__name__}.{f or 'size'}-{i}" for i, (c, f) in
                                                         enumerate(BAD)])
def test_a_command_off_the_schema_is_refused_naming_the_field_and_changes_nothing(command: Any, field: str) -> None:
    core = _listed_core()
    before = (core.state_hash(), core.state.seq)
    where = f"{type(command).__name__}.{field}" if field else type(command).__name__
    with pytest.raises(CommandError) as refused:
        decide(core.state, command, 10)
    assert str(refused.value).startswith(where + ":")
    assert refused.value.field == field
    with pytest.raises(CommandError, match=f"^{where}:"):
        core.execute(command, 10)
    assert (core.state_hash(), core.state.seq) == before


def test_the_in_process_exchange_writes_nothing_of_a_batch_with_a_bad_command() -> None:
    operations, events = MemoryLog(), MemoryLog()
    exchange = Exchange(operations, events, lambda symbol: MemoryLog(symbol))
    exchange.submit(listing_commands())
    end = (operations.end_offset(), events.end_offset())
    hash_before = exchange.core.state_hash()
    for command, field in BAD[::7]:
        with pytest.raises(CommandError):
            exchange.submit([Deposit(1, 99, "USDT", 10**6), command])
        assert (operations.end_offset(), events.end_offset()) == end, field
    assert exchange.core.state_hash() == hash_before
    assert replay(events).state_hash() == hash_before


@pytest.mark.parametrize(
    "command",
    [
        Deposit(7, 1, "USDT", 0),
        Deposit(7, 2, "USDT", -1),
        Deposit(7, 3, "USDT", 2**200),
        Deposit(-1, 4, "USDT", 5),
        Deposit(0, 1, "USDT", 5),
        Withdraw(7, 5, "NOPE", 5),
        PlaceOrder(7, 6, "BTC-USDT", Side.SELL, qty=0, price=100),
        PlaceOrder(7, 7, "BTC-USDT", Side.SELL, qty=2**62, price=2**62),
        PlaceOrder(7, 8, "NOPE-X", Side.SELL, qty=1, price=1),
        CancelOrder(7, 9, -5),
    ],
)
def test_a_command_within_the_schema_that_breaks_a_rule_is_a_rejection_that_decodes(command: Any) -> None:
    core = _listed_core()
    (answer,) = core.execute(command, 10)
    assert isinstance(answer, Rejected)
    assert EVENTS.decode(EVENTS.encode(answer)) == answer


def test_user_zero_depositing_is_an_invalid_user_even_when_its_request_id_was_used_by_a_listing() -> None:
    core = _listed_core()  # the fee account's request ids 1..3 are the listings
    (answer,) = core.execute(Deposit(0, 1, "USDT", 5), 10)
    assert isinstance(answer, Rejected) and answer.reason == Reason.INVALID_USER


def _raw(*fields: Any) -> bytes:
    return msgspec.msgpack.encode(list(fields))


MALFORMED_RECORDS = [
    b"",
    b"\xc1",
    b"\x93\x01\x02",
    _raw("Deposit", 7, 1, "USDT", 1.5),
    _raw("Deposit", 7, 1, "USDT", "5"),
    _raw("Deposit", 7, 1, "USDT", None),
    _raw("Deposit", 7, 1, "USDT", True),
    _raw("PlaceOrder", 7, 1, "BTC-USDT", True, 1, 100),
    _raw("PlaceOrder", 7, 1, "BTC-USDT", 1.0, 1, 100),
    _raw("PlaceOrder", 7, 1, "BTC-USDT", 9, 1, 100),
    _raw("Deposit", 2**64 - 1, 1, "USDT", 5),
    _raw("Deposit", 7, 1, ["USDT"], 5),
    _raw("Unknown", 1, 2),
    _raw("Deposit", 7, 1, "U" * (COMMAND_BYTES_MAX + 1), 5),
    _raw("Deposit", 7, 1, "U" * (RECORD_BYTES_MAX - 64), 5),
]


def test_the_stage_answers_every_malformed_record_without_quoting_it_and_goes_on() -> None:
    commands, events = MemoryLog(), MemoryLog()
    good = [*listing_commands(), Deposit(7, 1, "USDT", 10**6)]
    records = [COMMANDS.encode(c) for c in good]
    for raw in MALFORMED_RECORDS:
        records += [raw, COMMANDS.encode(Deposit(7, len(records) + 10, "USDT", 1))]
    commands.append(records)
    handled, core = answer_commands(commands, events, batch=7)
    assert handled == len(records)
    answers = [EVENTS.decode(raw) for batch in scan(events) for raw in batch.values]
    assert [a.input_offset for a in answers] == list(range(len(records)))  # each once, in order
    malformed = [a for a in answers if isinstance(a, Rejected) and a.reason == Reason.MALFORMED_COMMAND]
    assert len(malformed) == len(MALFORMED_RECORDS)
    for answer, raw in zip(malformed, MALFORMED_RECORDS, strict=True):
        assert answer.command is None
        assert answer.record_bytes == len(raw)
        assert answer.record_digest == hashlib.blake2b(raw, digest_size=16).hexdigest()
        assert len(EVENTS.encode(answer)) < 200  # bounded, whatever the record's size
    assert replay(events).state_hash() == core.state_hash()
    # A retry of a malformed record's offset is not remembered as a request.
    assert all(not isinstance(e, Rejected) or e.command is not None for e in core.state.requests.values())


@settings(max_examples=60)
@given(command_streams())
def test_every_event_ubscore_builds_from_valid_commands_passes_the_strict_decoder(stream: list[Any]) -> None:
    core = UBSCore()
    for offset, command in enumerate(stream):
        for event in core.execute(command, offset):
            assert EVENTS.decode(EVENTS.encode(event)) == event


def test_every_record_of_an_exchange_run_passes_the_strict_decoder() -> None:
    operations, events = MemoryLog(), MemoryLog()
    outputs: dict[str, MemoryLog] = {}

    def output_log(symbol: str) -> MemoryLog:
        outputs[symbol] = MemoryLog(symbol)
        return outputs[symbol]

    exchange = Exchange(operations, events, output_log)
    workload = Workload(5, 30, 2)
    workload.observe(exchange.submit(workload.setup()))
    for start in range(0, 3_000, 300):
        workload.observe(exchange.submit([workload.next(ts_ms=start + i) for i in range(300)]))
    for log, codec in [(operations, COMMANDS), (events, EVENTS), *((o, OUTPUTS) for o in outputs.values())]:
        for batch in scan(log):
            for raw in batch.values:
                record = codec.decode(raw)
                assert codec.encode(record) == bytes(raw)


@pytest.mark.parametrize(("field", "value"), [("seq", 2**63), ("user", 2**64), ("input_offset", -(2**63) - 1)])
def test_an_id_beyond_64_bits_in_an_event_is_a_decode_error_and_a_recorded_fault(field: str, value: int) -> None:
    from ledger import DecodeError
    from settlement import Projector, Source, open_store

    core = UBSCore()
    listing = [ListAsset(1, Asset("BTC", 8)), ListAsset(2, Asset("USDT", 6)), ListSymbol(3, BTC_USDT)]
    good = [event for offset, command in enumerate(listing) for event in core.execute(command, offset)]
    (deposit,) = core.execute(Deposit(7, 1, "USDT", 10**6), 3)
    events = MemoryLog("balance.events")
    forged = msgspec.structs.replace(deposit, **{field: value})
    events.append([*(EVENTS.encode(e) for e in good), EVENTS.encode(forged)])
    with pytest.raises(DecodeError, match="balance.events offset 3"):
        replay(events)
    store = open_store("sqlite::memory:")
    report = Projector(store, [Source("balance.events", events, "balance")]).run()
    (fault,) = store.faults()
    assert fault.stream == "balance.events" and report.streams[0].halted


def test_the_live_path_decides_on_what_the_log_holds_so_it_answers_as_the_stage_does() -> None:
    """An int subclass (an IntEnum member, a caller's own int type) keeps the schema once
    encoded; the live path decides on the decoded command, so its answer and state equal
    those of a stage reading the same bytes."""
    from enum import IntEnum

    class N(IntEnum):
        FIVE = 5

    for command in (Deposit(7, 1, "USDT", N.FIVE), PlaceOrder(7, 2, "BTC-USDT", Side.BUY, qty=N.FIVE, price=N.FIVE)):
        live, stage = _listed_core(), _listed_core()
        live.execute(Deposit(7, 9, "USDT", 10**9), 3)
        stage.execute(Deposit(7, 9, "USDT", 10**9), 3)
        (answer,) = live.execute(command, 4)
        assert [answer] == stage.execute_record(COMMANDS.encode(command), 4)
        assert not isinstance(answer, Rejected)
        assert live.state_hash() == stage.state_hash()
