"""Kafka connection settings for real deployments: loaded from a file or the environment,
given to every client the library makes, never echoed; credentials in an address refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.logs.kafka import KafkaConfigError, KafkaLog, check_bootstrap, ensure_topic, load_client_config

SECRET = "s3cret-pw-do-not-print"


def test_settings_come_from_a_properties_file_then_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "client.properties"
    file.write_text(
        f"# SASL over TLS\nsecurity.protocol = SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nsasl.password={SECRET}\n"
    )
    environ = {"LEDGER_KAFKA_CONFIG": str(file), "LEDGER_KAFKA_SASL_USERNAME": "ubscore", "HOME": "/root"}
    assert load_client_config(environ=environ) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.password": SECRET,
        "sasl.username": "ubscore",
    }
    assert load_client_config(environ={}) == {}


@pytest.mark.parametrize(
    ("text", "problem"),
    [("bootstrap.servers=evil:9092\n", "set by the library"), ("isolation.level=read_uncommitted\n", "set by the"),
     ("no equals sign\n", "line 1: not key=value")],
)
def test_a_bad_config_file_is_refused_saying_what(tmp_path: Path, text: str, problem: str) -> None:
    file = tmp_path / "client.properties"
    file.write_text(text)
    with pytest.raises(KafkaConfigError, match=problem):
        load_client_config(file, environ={})


def test_an_unreadable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KafkaConfigError, match="cannot read"):
        load_client_config(tmp_path / "missing.properties", environ={})


@pytest.mark.parametrize("address", [f"admin:{SECRET}@127.0.0.1:9092", f"sasl_ssl://u:{SECRET}@host:9092"])
def test_credentials_inside_an_address_are_refused_without_repeating_them(address: str) -> None:
    with pytest.raises(KafkaConfigError) as refused:
        check_bootstrap(address)
    assert SECRET not in str(refused.value) and "not repeated" in str(refused.value)
    with pytest.raises(KafkaConfigError) as refused:
        KafkaLog(address, "topic")
    assert SECRET not in str(refused.value)


def test_a_plain_address_list_is_accepted() -> None:
    assert check_bootstrap("127.0.0.1:9092,broker-2.internal:9093") == "127.0.0.1:9092,broker-2.internal:9093"


@pytest.mark.kafka
def test_the_settings_reach_the_producer_the_consumers_and_the_admin_client(kafka_bootstrap: str) -> None:
    # A mechanism no client accepts: each client refuses it when made, which shows the
    # settings reached it; the password given with it appears in no message.
    config = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "NOPE", "sasl.username": "u",
              "sasl.password": SECRET}
    log = KafkaLog(kafka_bootstrap, "never-created", client_config=config)
    for client, call in [("producer", lambda: log.append([b"x"])), ("consumer", log.end_offset),
                         ("admin", lambda: ensure_topic(kafka_bootstrap, "never-created", client_config=config))]:
        with pytest.raises(KafkaConfigError, match="Unsupported SASL mechanism") as refused:
            call()
        assert client in str(refused.value) and SECRET not in str(refused.value)


@pytest.mark.kafka
def test_a_log_with_client_settings_works_on_the_real_broker(kafka_bootstrap: str) -> None:
    import uuid

    config = {"client.id": "ledger-config-test", "socket.keepalive.enable": "true"}
    topic = f"test-config-{uuid.uuid4().hex[:8]}"
    assert ensure_topic(kafka_bootstrap, topic, client_config=config)
    log = KafkaLog(kafka_bootstrap, topic, transactional_id=f"tx-{topic}", client_config=config)
    try:
        assert log.append([b"a", b"b"]) == 0
        assert log.read(0).values == [b"a", b"b"]
    finally:
        log.close()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"LEDGER_KAFKA_CONFIG": "/nonexistent/client.properties"}, "cannot read"),
        ({"LEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "LEDGER_KAFKA_SASL_MECHANISM": "NOPE",
          "LEDGER_KAFKA_SASL_PASSWORD": SECRET}, "Unsupported SASL mechanism"),
        ({"LEDGER_KAFKA_ISOLATION_LEVEL": "read_uncommitted"}, "set by the library"),
    ],
)
def test_the_command_line_takes_kafka_settings_from_the_environment(environ: dict[str, str], expected: str) -> None:
    import os
    import subprocess
    import sys

    for argv in (["replay", "--kafka", "127.0.0.1:9092", "--topic", "never"],
                 ["run", "ubscore", "--kafka", "127.0.0.1:9092", "--topic-prefix", "never-", "--idle-exit-s", "1"],
                 ["project", "--kafka", "127.0.0.1:9092", "--topic", "never", "--store", "sqlite::memory:"]):
        done = subprocess.run([sys.executable, "-m", "ledger.app.cli", *argv], capture_output=True, text=True,
                              timeout=60, env={**os.environ, **environ})
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and expected in done.stderr and SECRET not in done.stderr


class _Error:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return f"KafkaError code {self._code}"


class _Message:
    def __init__(self, offset: int, value: bytes | None = None, error: _Error | None = None) -> None:
        self._offset, self._value, self._error = offset, value, error

    def error(self) -> _Error | None:
        return self._error

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value


class _Partition:
    def __init__(self, topic: str, partition: int, offset: int = -1001) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset


class _Consumer:
    """Gives what the broker gave: records in order, each batch from where the last
    one stopped, and the position past the last record it handed out."""

    def __init__(self, records: dict[int, bytes], batches: list[list[_Message]]) -> None:
        self.records, self.batches, self.position_at, self.assigned = records, batches, 0, []

    def assign(self, partitions: list[_Partition]) -> None:
        self.assigned.append(partitions[0].offset)
        self.position_at = partitions[0].offset
        self.batches = [[_Message(o, v) for o, v in sorted(self.records.items()) if o >= self.position_at]]

    def consume(self, count: int, timeout: float) -> list[_Message]:
        if not self.batches:
            return []
        batch = self.batches.pop(0)
        for message in batch:
            if message.error() is None:
                self.position_at = message.offset() + 1
        return batch

    def position(self, partitions: list[_Partition]) -> list[_Partition]:
        return [_Partition(partitions[0].topic, partitions[0].partition, self.position_at)]

    def close(self) -> None:
        pass


def test_an_error_after_records_in_one_fetch_loses_none_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A consume() that returns records and then an error: the read raises, and the next
    read from the same offset assigns again and gets those records (before, the consumer
    had moved past them and they were never returned). A stand-in consumer: the broker
    cannot be made to fail on cue."""
    import types

    from ledger.logs import kafka as kafka_module
    from ledger.logs.base import LogError

    stub = types.SimpleNamespace(TopicPartition=_Partition, KafkaError=types.SimpleNamespace(_PARTITION_EOF=-191))
    monkeypatch.setattr(kafka_module, "_kafka", lambda: stub)
    log = KafkaLog("127.0.0.1:9092", "balance.events")
    records = {10: b"a", 11: b"b", 12: b"c"}
    consumer = _Consumer(records, [[_Message(10, b"a"), _Message(11, b"b"), _Message(-1, error=_Error(-195))],
                                   [_Message(12, b"c")]])
    log._consumer, log._consumer_position, log._no_records_from, log._delivered = consumer, 10, 10, True
    monkeypatch.setattr(log, "watermarks", lambda: (0, 13))  # a read asks the broker for the end first
    with pytest.raises(LogError, match="code -195"):
        log.poll(10, 100)
    batch = log.poll(10, 100)
    assert list(batch.offsets) == [10, 11, 12] and [bytes(v) for v in batch.values] == [b"a", b"b", b"c"]
    assert consumer.assigned == [10]
