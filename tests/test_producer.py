"""Commands reach balance.operations only through the schema check, on every log."""

from __future__ import annotations

import pytest

from ledger import COMMANDS, CommandError, Deposit, MemoryLog, PlaceOrder
from ledger.app.producer import CommandProducer
from ledger.strategies import listing_commands
from support import answer_commands


def _produce_and_answer(commands_log, events_log) -> None:
    producer = CommandProducer(commands_log)
    first = producer.send([*listing_commands(), Deposit(7, 1, "USDT", 10**6)])
    assert first == 0
    end = commands_log.end_offset()
    for bad in (Deposit(7, 2, "USDT", 1.5), PlaceOrder(7, 3, "BTC-USDT", True, qty=1, price=100),  # type: ignore[arg-type]
                Deposit(2**64, 4, "USDT", 1)):
        with pytest.raises(CommandError):
            producer.send([Deposit(7, 9, "USDT", 1), bad])
        assert commands_log.end_offset() == end  # nothing of the batch
    records = commands_log.read(0, 100).values
    assert [COMMANDS.decode(r) for r in records][-1] == Deposit(7, 1, "USDT", 10**6)
    handled, core = answer_commands(commands_log, events_log)
    assert handled == len(records)
    assert core.state.balance(7, "USDT") == (10**6, 0)


def test_the_producer_checks_every_command_before_appending_to_a_memory_log() -> None:
    _produce_and_answer(MemoryLog(), MemoryLog())


@pytest.mark.kafka
def test_the_producer_refuses_a_bad_command_and_sends_nothing_on_kafka(kafka_log_factory) -> None:
    commands_log = kafka_log_factory()
    events_log = kafka_log_factory(transactional=True)
    try:
        _produce_and_answer(commands_log, events_log)
    finally:
        commands_log.close()
        events_log.close()

