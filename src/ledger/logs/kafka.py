"""The log interface over Apache Kafka (confluent-kafka): one topic partition is one log.

* Appends use an idempotent producer (``acks=all``, ``enable.idempotence``), so a retried
  send is never written twice; with ``transactional_id`` each append is one Kafka
  transaction, so a batch is visible to ``read_committed`` readers whole or not at all.
* Reads use ``assign()`` (no consumer group membership, nothing committed) with
  ``isolation.level=read_committed``. Offsets can have holes (transaction markers), so a
  read reports ``next_offset`` from the consumer's position, not last offset + 1.
* ``end_offset()`` is the partition's high watermark as a read_committed consumer sees it.
* If the partition's first offset is no longer 0 (retention or deletion removed the
  start), ``read`` from an earlier offset raises ``LogError`` rather than silently
  starting later.

Connection settings for a real cluster (SASL, TLS and any other librdkafka client
property) come from ``client_config`` (see ``load_client_config``: a properties file or
``LEDGER_KAFKA_*`` environment variables, never the command line, so they never show in
``ps``) and reach every client the log makes: producer, consumers and admin. Secret
values never appear in an error; an address with credentials in it is refused.

confluent-kafka is imported only here, so ``import ledger`` does not load it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.logs.base import LogError, ReadBatch, WriterFencedError
from ledger.protocol.limits import READ_RECORDS_MAX

log = logging.getLogger(__name__)

# Topic settings for event topics: nothing is ever deleted by time or size, and no
# compaction (it would leave holes an auditor cannot explain).
EVENT_TOPIC_CONFIG = {
    "cleanup.policy": "delete",
    "retention.ms": "-1",
    "retention.bytes": "-1",
}
# How long one network operation may take before it is an error naming the log.
KAFKA_TIMEOUT_S = 30.0
# Polls of an empty partition before a read that should have found records gives up.
READ_EMPTY_POLLS_MAX = 50
POLL_TIMEOUT_S = 0.2
# A read polls in slices this long. The end of a transactional topic is a commit marker,
# which read_committed consumers never receive: a poll for a record "before the end"
# waits its whole timeout there. So a read that has records returns at the first empty
# slice, and one that has none yet keeps polling slices (the position moves past a
# marker once it is fetched) up to READ_EMPTY_POLLS_MAX * POLL_TIMEOUT_S in all.
POLL_SLICE_S = 0.005
# Pauses between checks that an append has become visible to read_committed readers:
# doubling from the first (the marker usually lands within a millisecond or two) to the
# last, so a long wait does not flood the broker with offset requests.
VISIBLE_POLL_S_FIRST = 0.001
VISIBLE_POLL_S_MAX = 0.1


# Client properties the library sets itself, because its guarantees rest on them
# (exactly-once appends, read_committed reads by position, the address given apart).
OWNED_CLIENT_PROPERTIES = frozenset(
    {
        "bootstrap.servers",
        "transactional.id",
        "enable.idempotence",
        "acks",
        "isolation.level",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "group.id",
    }
)
# Environment variables LEDGER_KAFKA_SASL_USERNAME and the like set the property
# sasl.username: lower case, underscores for dots (librdkafka's names hold no underscore).
CLIENT_ENV_PREFIX = "LEDGER_KAFKA_"
# The variable naming a properties file of client settings.
CLIENT_CONFIG_FILE_ENV = "LEDGER_KAFKA_CONFIG"
_SECRET = re.compile(r"password|secret|key|token|credential|oauthbearer\.config|jaas", re.I)


class AppendOutcomeUnknown(LogError):
    """A transactional append whose commit may or may not have happened: read the log's
    tail (with a new producer, which fences the old one) before appending again."""


class KafkaConfigError(LogError):
    """Kafka connection settings that cannot be used; the message never holds a secret."""


@dataclass(frozen=True)
class AppendPlacement:
    """Where the broker put one append: every record's offset, in order (from the
    delivery reports), the partition's end once the append was visible, and the offsets
    the append adds beyond its records (1: a transaction's commit marker)."""

    offsets: tuple[int, ...]
    end: int
    markers: int

    def foreign_offset(self, expected_first: int) -> int | None:
        """The first offset from ``expected_first`` to ``end`` that is not this append's
        (a record of another writer), or None: the append alone fills that range."""
        for i, offset in enumerate(self.offsets):
            if offset != expected_first + i:
                return expected_first + i
        after = expected_first + len(self.offsets)
        return None if self.end == after + self.markers else after


def check_bootstrap(bootstrap: str) -> str:
    """``bootstrap`` if it is a plain list of HOST:PORT; an address holding credentials
    (``user:pw@host``) is refused without repeating it."""
    if "@" in bootstrap or "://" in bootstrap:
        raise KafkaConfigError(
            "kafka address: credentials or a scheme inside the address are refused (give HOST:PORT[,HOST:PORT] "
            f"and put credentials in the file named by {CLIENT_CONFIG_FILE_ENV} or in {CLIENT_ENV_PREFIX}* "
            "variables); the address is not repeated here"
        )
    if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d+(,[A-Za-z0-9.\-\[\]:]+:\d+)*", bootstrap):
        raise KafkaConfigError(f"kafka address {bootstrap!r}: use HOST:PORT[,HOST:PORT...]")
    return bootstrap


def load_client_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Client properties for every Kafka client: ``path`` (or the file named by
    ``LEDGER_KAFKA_CONFIG``), a Java-style properties file of ``key=value`` lines (``#``
    comments), then ``LEDGER_KAFKA_*`` variables over it. Properties the library owns
    (``OWNED_CLIENT_PROPERTIES``) are refused."""
    env = os.environ if environ is None else environ
    config: dict[str, str] = {}
    file = path if path is not None else env.get(CLIENT_CONFIG_FILE_ENV)
    if file:
        try:
            lines = Path(file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise KafkaConfigError(f"kafka config {file}: cannot read: {type(error).__name__}") from None
        for number, line in enumerate(lines, start=1):
            text = line.strip()
            if not text or text.startswith(("#", "!")):
                continue
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise KafkaConfigError(f"kafka config {file} line {number}: not key=value")
            config[key.strip()] = value.strip()
    for name, value in env.items():
        if name.startswith(CLIENT_ENV_PREFIX) and name != CLIENT_CONFIG_FILE_ENV:
            config[name[len(CLIENT_ENV_PREFIX) :].lower().replace("_", ".")] = value
    owned = sorted(OWNED_CLIENT_PROPERTIES & set(config))
    if owned:
        raise KafkaConfigError(f"kafka config: {', '.join(owned)} are set by the library and cannot be configured")
    return config


def _scrub(text: str, config: Mapping[str, Any]) -> str:
    """``text`` with the value of every secret-looking property replaced."""
    for key, value in config.items():
        if _SECRET.search(key) and isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text


def _kafka() -> Any:
    import confluent_kafka

    return confluent_kafka


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 1,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
    client_config: Mapping[str, str] | None = None,
) -> bool:
    """Create ``topic`` with the event-topic settings if it does not exist.

    Returns True if it was created. The partition count is explicit: the library never
    relies on a broker default. ``client_config`` holds the connection settings.
    """
    kafka = _kafka()
    from confluent_kafka.admin import AdminClient, NewTopic

    settings_client: dict[str, str | int | float | bool] = {
        **(client_config or {}),
        "bootstrap.servers": check_bootstrap(bootstrap),
    }
    try:
        admin = AdminClient(settings_client)
    except kafka.KafkaException as error:
        raise KafkaConfigError(f"kafka admin client: {_scrub(str(error), settings_client)}") from None
    settings = dict(EVENT_TOPIC_CONFIG)
    settings.update(config or {})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor, config=settings)],
        operation_timeout=KAFKA_TIMEOUT_S,
    )
    try:
        futures[topic].result(timeout=KAFKA_TIMEOUT_S)
        return True
    except kafka.KafkaException as error:
        if error.args[0].code() == kafka.KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise LogError(
            f"kafka {bootstrap} topic {topic}: cannot create: {_scrub(str(error), settings_client)}"
        ) from None


def _FENCED_CODES(kafka: Any) -> frozenset[int]:  # noqa: N802 (a constant, built once the client is loaded)
    error = kafka.KafkaError
    return frozenset({error._FENCED, error.PRODUCER_FENCED, error.INVALID_PRODUCER_EPOCH})


def list_topics(bootstrap: str, client_config: Mapping[str, str] | None = None) -> list[str]:
    """The names of the cluster's topics, sorted."""
    kafka = _kafka()
    from confluent_kafka.admin import AdminClient

    settings = {**(client_config or {}), "bootstrap.servers": check_bootstrap(bootstrap)}
    try:
        admin = AdminClient(settings)
        metadata = admin.list_topics(timeout=KAFKA_TIMEOUT_S)
    except kafka.KafkaException as error:
        raise LogError(f"kafka {bootstrap}: cannot list topics: {_scrub(str(error), settings)}") from None
    return sorted(metadata.topics)


class KafkaLog:
    """One partition of a Kafka topic as a ``Log``.

    ``transactional_id`` makes every ``append`` a transaction (and fences an older
    producer with the same id: the newest writer wins, the zombie's appends fail).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partition: int = 0,
        *,
        transactional_id: str | None = None,
        producer_config: dict[str, Any] | None = None,
        client_config: Mapping[str, str] | None = None,
    ) -> None:
        self.bootstrap = check_bootstrap(bootstrap)
        # Connection settings for every client this log makes (see load_client_config).
        self._client_config = dict(client_config or {})
        self.topic = topic
        self.partition = partition
        self.name = f"kafka {topic}[{partition}]"
        self.transactional_id = transactional_id
        self._producer_config = producer_config or {}
        self._producer: Any = None
        self._consumer: Any = None
        self._offsets_client: Any = None
        self._admin: Any = None
        self._consumer_position = -1
        # No committed record lies in [_no_records_from, _consumer_position): the offsets
        # the consumer skipped after the last record it gave (commit markers, aborted
        # records). A read from there goes on from the position instead of assigning the
        # partition again (which drops what was fetched and costs a fetch round trip).
        self._no_records_from = 0
        # Whether the consumer has given a record since it was last assigned.
        self._delivered = False
        # The last append as the broker placed it: each record's offset (from the
        # delivery reports) and the end seen once it was visible.
        self.last_append: AppendPlacement | None = None

    # -- writing ----------------------------------------------------------------------

    def producer(self) -> Any:
        """The underlying confluent_kafka Producer (created on first use)."""
        if self._producer is None:
            kafka = _kafka()
            config = {
                **self._client_config,
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "message.timeout.ms": int(KAFKA_TIMEOUT_S * 1000),
            }
            if self.transactional_id:
                config["transactional.id"] = self.transactional_id
            config.update(self._producer_config)
            try:
                self._producer = kafka.Producer(config)
            except kafka.KafkaException as error:
                raise KafkaConfigError(f"{self.name}: cannot make a producer: {_scrub(str(error), config)}") from None
            if self.transactional_id:
                try:
                    self._producer.init_transactions(KAFKA_TIMEOUT_S)
                except kafka.KafkaException as error:
                    raise LogError(f"{self.name}: cannot initialise transactions: {error}") from None
        return self._producer

    def append(self, records: Sequence[bytes]) -> int:
        """Append ``records`` (one transaction if transactional); return the first offset.
        ``last_append`` then tells where the broker placed them."""
        self.last_append = None
        if not records:
            return self.end_offset()
        kafka = _kafka()
        producer = self.producer()
        offsets: list[int] = []
        errors: list[str] = []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(str(error))
            else:
                offsets.append(message.offset())

        try:
            if self.transactional_id:
                producer.begin_transaction()
            for record in records:
                producer.produce(self.topic, value=record, partition=self.partition, on_delivery=delivered)
                producer.poll(0)
            if not self.transactional_id:
                remaining = producer.flush(KAFKA_TIMEOUT_S)
                if remaining:
                    raise LogError(f"{self.name}: {remaining} records not acknowledged in {KAFKA_TIMEOUT_S} s")
        except kafka.KafkaException as error:
            if self.transactional_id and error.args[0].code() in _FENCED_CODES(kafka):
                self._producer = None
                raise WriterFencedError(
                    f"{self.name}: transactional id {self.transactional_id} was taken by a newer producer; "
                    "this one is fenced and stops"
                ) from None
            if self.transactional_id:
                with contextlib.suppress(kafka.KafkaException):
                    producer.abort_transaction(KAFKA_TIMEOUT_S)
            raise LogError(f"{self.name}: append failed (nothing of this batch is committed): {error}") from None
        if self.transactional_id:
            self._commit(producer)
        try:
            producer.flush(KAFKA_TIMEOUT_S)
        except kafka.KafkaException as error:  # pragma: no cover (the commit flushed everything)
            raise LogError(f"{self.name}: flush after the commit failed: {error}") from None
        if errors or len(offsets) != len(records):
            raise LogError(f"{self.name}: append failed: {errors or 'missing delivery reports'}")
        # A transaction's commit marker reaches the partition after commit_transaction
        # returns; until it does, read_committed readers (and end_offset) do not see the
        # batch. Wait for it, so that an append is visible when it returns. (Another
        # producer's transaction left open on the partition holds the end back too.)
        visible_end = max(offsets) + (2 if self.transactional_id else 1)
        deadline = time.monotonic() + KAFKA_TIMEOUT_S
        pause_s = VISIBLE_POLL_S_FIRST
        while (end := self.end_offset()) < visible_end:
            if time.monotonic() > deadline:
                raise LogError(
                    f"{self.name}: the batch up to offset {max(offsets)} is committed but not visible to "
                    f"read_committed readers after {KAFKA_TIMEOUT_S} s (a transaction of another producer left "
                    "open on this partition?); do not append it again"
                )
            time.sleep(pause_s)
            pause_s = min(2 * pause_s, VISIBLE_POLL_S_MAX)
        offsets.sort()
        self.last_append = AppendPlacement(tuple(offsets), end, 1 if self.transactional_id else 0)
        return offsets[0]

    def _commit(self, producer: Any) -> None:
        """Commit the open transaction. A commit whose outcome is unknown is retried while
        the client says the error is retriable; it is aborted only when the client says
        the transaction requires it (then nothing of it is committed); after a fatal error
        the producer is dropped and ``AppendOutcomeUnknown`` raised: the caller must make
        a new producer (which fences this one and ends its transaction) and read the
        log's tail before appending anything."""
        kafka = _kafka()
        deadline = time.monotonic() + KAFKA_TIMEOUT_S
        while True:
            try:
                producer.commit_transaction(KAFKA_TIMEOUT_S)
                return
            except kafka.KafkaException as exception:
                error = exception.args[0]
                if error.retriable() and time.monotonic() < deadline:
                    log.warning("%s: commit not confirmed (%s); retrying it", self.name, error)
                    continue
                if error.code() in _FENCED_CODES(kafka):
                    self._producer = None
                    raise WriterFencedError(
                        f"{self.name}: transactional id {self.transactional_id} was taken by a newer producer; "
                        "this one is fenced and stops"
                    ) from None
                if error.txn_requires_abort():
                    with contextlib.suppress(kafka.KafkaException):
                        producer.abort_transaction(KAFKA_TIMEOUT_S)
                    raise LogError(
                        f"{self.name}: commit refused, transaction aborted (nothing committed): {error}"
                    ) from None
                self._producer = None
                raise AppendOutcomeUnknown(
                    f"{self.name}: the outcome of a commit is unknown ({error}); read the log's tail before appending"
                ) from None

    def stable_offsets(self) -> tuple[int, int]:
        """(last stable offset, high watermark) of the partition, as the broker reports
        them to read_committed and read_uncommitted readers. They differ while a
        transaction is open on the partition: records up to the high watermark may be
        committed and still invisible to read_committed readers."""
        kafka = _kafka()
        from confluent_kafka.admin import AdminClient, OffsetSpec

        if self._admin is None:
            try:
                self._admin = AdminClient({**self._client_config, "bootstrap.servers": self.bootstrap})
            except kafka.KafkaException as error:
                raise KafkaConfigError(
                    f"{self.name}: cannot make an admin client: {_scrub(str(error), self._client_config)}"
                ) from None
        tp = kafka.TopicPartition(self.topic, self.partition)
        try:
            # Both requests in flight at once: one round trip, not two.
            asked = [
                self._admin.list_offsets(
                    {tp: OffsetSpec.latest()}, isolation_level=level, request_timeout=KAFKA_TIMEOUT_S
                )
                for level in (kafka.IsolationLevel.READ_COMMITTED, kafka.IsolationLevel.READ_UNCOMMITTED)
            ]
            stable, end = (int(futures[tp].result(timeout=KAFKA_TIMEOUT_S).offset) for futures in asked)
        except kafka.KafkaException as error:
            raise LogError(f"{self.name}: cannot list offsets: {error}") from None
        return stable, end

    # -- reading ----------------------------------------------------------------------

    def _new_consumer(self) -> Any:
        kafka = _kafka()
        config = {
            **self._client_config,
            "bootstrap.servers": self.bootstrap,
            # A group id is required by the client, but nothing is ever committed
            # and partitions are assigned by hand: there is no group membership.
            "group.id": f"ledger-reader-{self.topic}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "error",
            "fetch.max.bytes": 64 * 1024 * 1024,
        }
        try:
            return kafka.Consumer(config)
        except kafka.KafkaException as error:
            raise KafkaConfigError(f"{self.name}: cannot make a consumer: {_scrub(str(error), config)}") from None

    def _consumer_for(self, offset: int) -> Any:
        kafka = _kafka()
        if self._consumer is None:
            self._consumer = self._new_consumer()
        if not self._no_records_from <= offset <= self._consumer_position:
            self._consumer.assign([kafka.TopicPartition(self.topic, self.partition, offset)])
            self._consumer_position = offset
            self._no_records_from = offset
            self._delivered = False
        return self._consumer

    def watermarks(self) -> tuple[int, int]:
        """(first offset still stored, end offset) of the partition."""
        kafka = _kafka()
        # Asked on a consumer of its own that never fetches: on the reading consumer the
        # request waits behind a fetch long-poll (measured: 200 ms a query, instead of
        # about 1 ms), which made a stage spend nearly all its time here.
        if self._offsets_client is None:
            self._offsets_client = self._new_consumer()
        try:
            return tuple(  # type: ignore[return-value]
                self._offsets_client.get_watermark_offsets(
                    kafka.TopicPartition(self.topic, self.partition), timeout=KAFKA_TIMEOUT_S, cached=False
                )
            )
        except kafka.KafkaException as error:
            raise LogError(f"{self.name}: cannot read watermarks: {error}") from None

    def end_offset(self) -> int:
        """The offset after the last record a read_committed reader can see (asked on a
        read_committed client: the last stable offset, which is the high watermark
        unless a transaction is open)."""
        return self.watermarks()[1]

    def read(self, offset: int, max_records: int = READ_RECORDS_MAX) -> ReadBatch:
        """Up to ``max_records`` committed records from ``offset``."""
        low, high = self.watermarks()
        if offset < low:
            raise LogError(f"{self.name}: records before offset {low} have been deleted; cannot read from {offset}")
        if offset >= high or max_records <= 0:
            return ReadBatch([], [], offset)
        consumer = self._consumer_for(offset)
        offsets: list[int] = []
        values: list[bytes] = []
        empty_since = 0.0
        while len(values) < max_records:
            messages = consumer.consume(min(max_records - len(values), 10_000), POLL_SLICE_S)
            if not messages:
                position = self._position(consumer)
                if position >= high or values:
                    break
                now = time.monotonic()
                if not empty_since:
                    empty_since = now
                elif now - empty_since >= READ_EMPTY_POLLS_MAX * POLL_TIMEOUT_S:
                    raise LogError(
                        f"{self.name}: no records from offset {offset} (end {high}) after "
                        f"{now - empty_since:.0f} s: an open transaction or a broker problem"
                    )
                continue
            self._take(messages, offsets, values)
            if self._position(consumer) >= high:
                break
        return self._batch(consumer, offsets, values)

    def poll(self, offset: int, max_records: int = READ_RECORDS_MAX) -> ReadBatch:
        """Up to ``max_records`` committed records from ``offset`` that the consumer has
        already fetched: no wait and no request for the end (a follower's read, called
        again and again). An empty batch may still move ``next_offset`` on, past commit
        markers. Until a consumer (re)assigned has given a record, this is a ``read``:
        polls that do not wait were seen to get nothing from one for seconds."""
        if max_records <= 0:
            return ReadBatch([], [], offset)
        consumer = self._consumer_for(offset)
        if not self._delivered:
            return self.read(offset, max_records)
        offsets: list[int] = []
        values: list[bytes] = []
        while len(values) < max_records:
            messages = consumer.consume(min(max_records - len(values), 10_000), 0)
            if not messages:
                break
            self._take(messages, offsets, values)
        return self._batch(consumer, offsets, values)

    def _take(self, messages: list[Any], offsets: list[int], values: list[bytes]) -> None:
        kafka = _kafka()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == kafka.KafkaError._PARTITION_EOF:
                    continue
                # The consumer has moved past the records before the error, which the
                # caller never gets: the next read must assign again from its offset.
                self._consumer_position = -1
                raise LogError(f"{self.name} offset {message.offset()}: {error}")
            self._delivered = True
            offsets.append(message.offset())
            # A null value (a tombstone) is no record of ours: an empty one, which
            # every reader refuses as malformed, naming its offset.
            values.append(message.value() or b"")

    def _batch(self, consumer: Any, offsets: list[int], values: list[bytes]) -> ReadBatch:
        next_offset = self._position(consumer)
        if offsets and next_offset <= offsets[-1]:
            next_offset = offsets[-1] + 1
        self._consumer_position = next_offset
        if offsets:
            self._no_records_from = offsets[-1] + 1
        return ReadBatch(offsets, values, next_offset)

    def _position(self, consumer: Any) -> int:
        kafka = _kafka()
        (tp,) = consumer.position([kafka.TopicPartition(self.topic, self.partition)])
        return int(tp.offset) if tp.offset >= 0 else self._consumer_position

    def close(self) -> None:
        """Flush the producer and close the consumer."""
        if self._producer is not None:
            self._producer.flush(KAFKA_TIMEOUT_S)
            self._producer = None
        try:
            if self._consumer is not None:
                self._consumer.close()
        finally:
            self._consumer = None
            self._consumer_position = -1
            self._no_records_from = 0
            self._delivered = False
            self._admin = None
            if self._offsets_client is not None:
                self._offsets_client.close()
                self._offsets_client = None
