"""Encoding: every record round-trips; decoding is strict and says where it failed."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given

from ledger import AMOUNT_MAX, EVENTS, OUTPUTS, DecodeError, Deposited
from ledger.protocol.codec import COMMANDS
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
