"""Kafka-specific behaviour on the real broker: transactional appends leave offset holes
that readers step over, replay from a topic equals replay from a file, a deleted start
is refused, and a bad record stops replay naming where it is. The UBSCore stage's kill -9
drill runs on Kafka too, in test_crash_recovery.py."""

from __future__ import annotations

import subprocess
import sys
import time

import msgspec
import pytest

from ledger import EVENTS, DecodeError, FileLog, FsyncPolicy, LogError
from ledger.logs.base import scan
from ledger.rebuild import replay
from support import run_exchange, seeded_commands

pytestmark = pytest.mark.kafka


def test_transaction_markers_leave_holes_that_reads_step_over(kafka_log_factory) -> None:
    log = kafka_log_factory(transactional=True)
    assert log.append([b"a", b"b"]) == 0
    second = log.append([b"c"])
    assert second == 3  # offset 2 holds the first transaction's commit marker
    reader = type(log)(log.bootstrap, log.topic)
    batch = reader.read(0)
    assert batch.values == [b"a", b"b", b"c"] and batch.offsets == [0, 1, 3]
    assert [v for b in scan(reader) for v in b.values] == [b"a", b"b", b"c"]
    reader.close()


def test_replay_from_kafka_equals_replay_from_a_file(kafka_log_factory, tmp_path) -> None:
    core, events = run_exchange(seeded_commands(seed=4, count=3_000))
    records = [EVENTS.encode(e) for e in events]
    topic_log = kafka_log_factory(transactional=True)
    for start in range(0, len(records), 500):
        topic_log.append(records[start : start + 500])
    with FileLog(tmp_path / "events", fsync=FsyncPolicy.NEVER) as file_log:
        file_log.append(records)
        file_hash = replay(file_log).state_hash()
    reader = type(topic_log)(topic_log.bootstrap, topic_log.topic)
    assert replay(reader).state_hash() == file_hash == core.state_hash()
    # The command line gives the same hash.
    out = subprocess.run(
        [sys.executable, "-m", "ledger.app.cli", "replay", "--kafka", topic_log.bootstrap, "--topic", topic_log.topic,
         "--json", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout)["state_hash"] == file_hash
    reader.close()


def test_a_topic_whose_start_was_deleted_is_refused(kafka_log_factory) -> None:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    log = kafka_log_factory()
    log.append([b"1", b"2", b"3", b"4"])
    admin = AdminClient({"bootstrap.servers": log.bootstrap})
    futures = admin.delete_records([TopicPartition(log.topic, 0, 2)])
    for future in futures.values():
        future.result(timeout=30)
    with pytest.raises(LogError, match="before offset 2 have been deleted"):
        replay(log)


@pytest.mark.parametrize(
    "bad",
    [b"\xc1 not msgpack", msgspec.msgpack.encode(["NoSuchEvent", 1, 2, 3])],
    ids=["malformed", "unknown-event-type"],
)
def test_a_bad_record_on_a_topic_stops_replay_naming_topic_partition_and_offset(kafka_log_factory, bad) -> None:
    _core, events = run_exchange(seeded_commands(seed=5, count=200))
    log = kafka_log_factory()
    log.append([EVENTS.encode(e) for e in events[:20]])
    log.append([bad])
    log.append([EVENTS.encode(e) for e in events[20:]])
    reader = type(log)(log.bootstrap, log.topic)
    with pytest.raises(DecodeError, match=rf"kafka {log.topic}\[0\] offset 20\b"):
        replay(reader)
    reader.close()
    log.close()


@pytest.mark.slow
def test_a_broker_that_stays_down_is_a_clear_error_after_a_bounded_wait() -> None:
    from ledger.logs.kafka import KAFKA_TIMEOUT_S, KafkaLog

    log = KafkaLog("127.0.0.1:1", "no-broker-here")  # nothing listens on port 1
    started = time.monotonic()
    with pytest.raises(LogError, match=r"kafka no-broker-here\[0\]: cannot read watermarks"):
        log.end_offset()
    assert time.monotonic() - started < KAFKA_TIMEOUT_S + 15
    log.close()


def test_an_append_knows_where_the_broker_placed_each_record(kafka_log_factory) -> None:
    log = kafka_log_factory(transactional=True)
    log.append([b"a", b"b"])
    assert log.last_append is not None
    assert log.last_append.offsets == (0, 1) and log.last_append.end == 3 and log.last_append.markers == 1
    assert log.last_append.foreign_offset(0) is None
    log.close()


def test_a_record_of_another_writer_inside_a_batch_is_named_after_the_commit(kafka_log_factory) -> None:
    """The foreign record lands after the end check and before the commit (a hook makes
    that moment certain): the delivery reports show the batch displaced, and the service
    stops naming the offset instead of taking the new end as its own."""
    from ledger.app.services import append_checked
    from ledger.app.streams import KafkaStreams
    from ledger.logs.kafka import KafkaLog
    from ledger.ubscore import SequenceError

    log = kafka_log_factory(transactional=True)
    log.append([b"mine 1"])
    end = log.end_offset()
    intruder = KafkaLog(log.bootstrap, log.topic)
    real_append = log.append

    def append_after_an_intruder(records):
        intruder.append([b"not mine"])
        return real_append(records)

    log.append = append_after_an_intruder
    with pytest.raises(SequenceError, match=rf"another writer at offset {end}, inside this service's batch"):
        append_checked(KafkaStreams(log.bootstrap), log, [b"mine 2", b"mine 3"], end)
    intruder.close()
    log.close()


def test_the_placement_check_finds_every_kind_of_foreign_offset() -> None:
    from ledger.logs.kafka import AppendPlacement

    assert AppendPlacement((5, 6, 7), 9, 1).foreign_offset(5) is None  # the batch, then its marker
    assert AppendPlacement((5, 6, 7), 8, 0).foreign_offset(5) is None  # no transaction: no marker
    assert AppendPlacement((6, 7, 8), 10, 1).foreign_offset(5) == 5  # before the batch
    assert AppendPlacement((5, 7, 8), 10, 1).foreign_offset(5) == 6  # inside it
    assert AppendPlacement((5, 6, 7), 10, 1).foreign_offset(5) == 8  # after it (before or after the marker)
