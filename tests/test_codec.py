"""Encoding: every record round-trips; decoding is strict and says where it failed."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from hypothesis import given

from ledger import AMOUNT_MAX, EVENTS, OUTPUTS, DecodeError, Deposited, FileLog, replay
from ledger.logs.base import scan
from ledger.protocol.codec import COMMANDS, WIDE_RECORD_EXT
from ledger.protocol.events import BALANCE_EVENT_TYPES
from ledger.protocol.outputs import ENGINE_OUTPUT_TYPES
from ledger.strategies import commands, engine_outputs, events


@given(events())
def test_every_event_round_trips(event) -> None:
    assert EVENTS.decode(EVENTS.encode(event)) == event


@given(engine_outputs())
def test_every_engine_output_round_trips(output) -> None:
    assert OUTPUTS.decode(OUTPUTS.encode(output)) == output


@given(commands())
def test_every_command_round_trips(command) -> None:
    assert COMMANDS.decode(COMMANDS.encode(command)) == command


def test_strategies_cover_every_type() -> None:
    # The generic strategies must produce every event and output type at least once.
    from hypothesis import find, settings

    for kind in BALANCE_EVENT_TYPES:
        find(events(), lambda e, k=kind: type(e) is k, settings=settings(max_examples=2000))
    for kind in ENGINE_OUTPUT_TYPES:
        find(engine_outputs(), lambda e, k=kind: type(e) is k, settings=settings(max_examples=2000))


def test_amounts_beyond_64_bits_round_trip_exactly() -> None:
    event = Deposited(1, 0, 5, 1, "ETH", AMOUNT_MAX, AMOUNT_MAX, AMOUNT_MAX)
    assert EVENTS.decode(EVENTS.encode(event)) == event


def test_encoder_refuses_integers_no_reader_accepts() -> None:
    with pytest.raises(ValueError, match="cannot be encoded"):
        EVENTS.encode(Deposited(1, 0, 5, 1, "ETH", 2**300, 1, 0))


def raw(*fields: object) -> bytes:
    return msgspec.msgpack.encode(list(fields))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (raw("Deposited", 1, 0, 5, 1, "BTC", 1.5, 2, 0), "got `float`"),
        (raw("Deposited", 1, 0, 5, 1, "BTC", "10", 2, 0), "got `str`"),
        (raw("Deposited", 1, 0, 5, 1, "BTC", True, 2, 0), "got `bool`"),
        (raw("Deposited", 1, 0, 5, 1, "BTC", -10, 2, 0), ">= 1"),
        (raw("Deposited", 1, 0, 5, 1, "BTC", 0, 2, 0), ">= 1"),
        (raw("Minted", 1, 2, 3), "Invalid value 'Minted'"),
        (raw("Deposited", 1, 0, 5, 1, "BTC", 10, 2, 0)[:-3], "truncated"),
        (b"\xc1", "malformed"),
        (raw("Deposited", 1, 0, 5, 1, "BTC", msgspec.msgpack.Ext(1, b"\x01" * 33), 2, 0), "at most 32"),
        (raw("Deposited", 1, 0, 5, 1, "BTC", msgspec.msgpack.Ext(9, b"\x01"), 2, 0), "extension type 9"),
    ],
)
def test_bad_bytes_fail_naming_where(data: bytes, says: str) -> None:
    with pytest.raises(DecodeError) as caught:
        EVENTS.decode(data, "file log X offset 42")
    assert "file log X offset 42" in str(caught.value)
    assert says in str(caught.value)


def test_an_old_event_decodes_after_a_field_is_appended() -> None:
    # Schema version 1 of a hypothetical event, then version 2 with a trailing field.
    class Note(msgspec.Struct, frozen=True, array_like=True, tag="Note"):
        seq: int
        text: str

    class NoteV2(msgspec.Struct, frozen=True, array_like=True, tag="Note"):
        seq: int
        text: str
        author: int = 0

    old = msgspec.msgpack.encode(Note(3, "hello"))
    assert msgspec.msgpack.decode(old, type=NoteV2) == NoteV2(3, "hello", 0)
    # And the real events follow that rule: Deposited's ts_ms is a trailing default.
    without_ts = raw("Deposited", 1, 0, 5, 1, "BTC", 10, 10, 0)
    assert EVENTS.decode(without_ts) == Deposited(1, 0, 5, 1, "BTC", 10, 10, 0, 0)


# -- records written by older code ------------------------------------------------------

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# (fixture, its logs and their codecs): every file-log format with every event schema that
# was written with it, each holding amounts beyond 64 bits.
WRITTEN_BEFORE = [
    ("filelog-v1", [("", "events", EVENTS)]),
    ("filelog-v2-schema1", [("balance.operations", "operations", COMMANDS), ("balance.events", "events", EVENTS)]),
    ("filelog-v2-schema2", [("balance.operations", "operations", COMMANDS), ("balance.events", "events", EVENTS)]),
]


def _expected_values(fixture: str) -> dict:
    name = f"{fixture}.values.json" if fixture == "filelog-v1" else f"{fixture}.json"
    return json.loads((FIXTURES / name).read_text())


@pytest.mark.parametrize(("fixture", "logs"), WRITTEN_BEFORE, ids=[f for f, _ in WRITTEN_BEFORE])
def test_records_written_by_older_code_decode_to_the_values_it_decoded(fixture: str, logs: list) -> None:
    expected = _expected_values(fixture)
    for directory, key, codec in logs:
        with FileLog(FIXTURES / fixture / directory, readonly=True) as log:
            records = [bytes(v) for batch in scan(log) for v in batch.values]
        assert len(records) == len(expected[key])
        for i, (record, values) in enumerate(zip(records, expected[key], strict=True)):
            decoded = codec.decode(record, f"{fixture} {key} offset {i}")
            assert _values_with_appended_defaults(decoded, values) == msgspec.to_builtins(decoded), i
        # The point of the fixtures: some values are beyond 64 bits (and some are not).
        ints = [v for record in expected[key] for v in _ints(record)]
        assert any(v > 2**64 for v in ints) and any(0 < v < 2**63 for v in ints)


def _values_with_appended_defaults(record: msgspec.Struct, values: list) -> list:
    """``values`` (a record as an older schema decoded it: its tag, then its fields) with
    the defaults of the fields appended since, as this schema must decode it."""
    fields = msgspec.structs.fields(record)
    appended = [msgspec.to_builtins(f.default) for f in fields[len(values) - 1 :]]
    assert all(f.default is not msgspec.NODEFAULT for f in fields[len(values) - 1 :])
    own = [values[0]]
    for field, value in zip(fields, values[1:], strict=False):
        inner = getattr(record, field.name)
        # A tagged record inside (a Rejected's command) gained fields of its own.
        if isinstance(inner, msgspec.Struct) and type(value) is list and value and value[0] == type(inner).__name__:
            value = _values_with_appended_defaults(inner, value)
        own.append(value)
    return [*own, *appended]


def _ints(value: object) -> list[int]:
    if type(value) is list:
        return [i for item in value for i in _ints(item)]
    return [value] if type(value) is int else []


@pytest.mark.parametrize("fixture", ["filelog-v2-schema1", "filelog-v2-schema2"])
def test_an_older_events_log_replays_to_the_state_its_writer_had(fixture: str) -> None:
    manifest = _expected_values(fixture)
    with FileLog(FIXTURES / fixture / "balance.events", readonly=True) as log:
        core = replay(log)
    assert (core.state_hash(), core.state.seq) == (manifest["state_hash"], manifest["last_seq"])


# -- the wide form: records holding integers beyond 64 bits -----------------------------


def test_a_record_with_an_amount_beyond_64_bits_is_written_whole_in_the_wide_form() -> None:
    event = Deposited(1, 0, 5, 1, "ETH", 2**64, AMOUNT_MAX, 0)
    data = EVENTS.encode(event)
    ext = msgspec.msgpack.decode(data)
    assert type(ext) is msgspec.msgpack.Ext and ext.code == WIDE_RECORD_EXT
    assert msgspec.json.decode(ext.data) == ["Deposited", 1, 0, 5, 1, "ETH", 2**64, AMOUNT_MAX, 0, 0]
    assert EVENTS.decode_wide(EVENTS.decode_or_wide(data)) == event
    # Within 64 bits the record stays an ordinary msgpack array.
    assert msgspec.msgpack.decode(EVENTS.encode(Deposited(1, 0, 5, 1, "ETH", 2**64 - 1, 1, 0)))[6] == 2**64 - 1


def wide(*fields: object) -> bytes:
    return msgspec.msgpack.encode(msgspec.msgpack.Ext(WIDE_RECORD_EXT, msgspec.json.encode(list(fields))))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (wide("Deposited", 1, 0, 5, 1, "BTC", 1.5, 2**70, 0), "got `float`"),
        (wide("Deposited", 1, 0, 5, 1, "BTC", 1.0, 2**70, 0), "got `float`"),
        (wide("Deposited", 1, 0, 5, 1, "BTC", str(2**70), 2, 0), "got `str`"),
        (wide("Deposited", 1, 0, 5, 1, "BTC", True, 2**70, 0), "got `bool`"),
        (wide("Deposited", 1, 0, 5, 1, "BTC", -(2**70), 2, 0), ">= 1"),
        (wide("Deposited", 2**64, 0, 5, 1, "BTC", 2**70, 2, 0), "<= 9223372036854775807"),
        (wide("Deposited", 1, 0, 5, 1, "BTC", 2**256, 2, 0), "amount: integer of 33 bytes (at most 32)"),
        (wide("Minted", 1, 2**70), "Invalid value 'Minted'"),
        (wide("Deposited", 1, 0, 5, 1, "BTC", 2**70, 2, 0)[:-3], "malformed"),
        (msgspec.msgpack.encode(msgspec.msgpack.Ext(7, b"[]")), "extension type 7"),
    ],
)
def test_a_bad_record_in_the_wide_form_fails_naming_where(data: bytes, says: str) -> None:
    for decode in (EVENTS.decode, lambda d, w: EVENTS.decode_after(d, w, _refusal(d))):
        with pytest.raises(DecodeError) as caught:
            decode(data, "file log X offset 42")
        assert "file log X offset 42" in str(caught.value)
        assert says in str(caught.value)


def _refusal(data: bytes) -> msgspec.MsgspecError:
    try:
        EVENTS.decode_plain(data)
    except msgspec.MsgspecError as error:
        return error
    raise AssertionError("decode_plain accepted it")


def test_a_command_quoted_with_a_big_negative_amount_round_trips_in_the_wide_form() -> None:
    from ledger import Deposit, Rejected

    event = Rejected(3, 2, 4, Deposit(7, 1, "ETH", -(2**200)))
    assert EVENTS.decode(EVENTS.encode(event)) == event
    with pytest.raises(ValueError, match=r"command\.amount: integer of 33 bytes .* cannot be encoded"):
        EVENTS.encode(Rejected(3, 2, 4, Deposit(7, 1, "ETH", 2**256)))
