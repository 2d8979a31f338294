"""A deployment's streams, opened the same way over file logs and over Kafka.

The services name what they read and write (balance.operations, balance.events, one
engine.outputs stream per symbol, as ``ledger.logs.layout`` lays them out) and this
module opens it: ``FileStreams(root)`` for the embedded default, ``KafkaStreams(bootstrap)``
for a cluster. A stream's writer is exclusive: on files the log's lock, on Kafka a
transactional id derived from the stream (``ubscore-balance.events-0``,
``engine-<symbol>``), so a second instance of a writer fences the first (Kafka) or
cannot start (files) instead of forking the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ledger.logs import layout
from ledger.logs.base import Log, LogError, ReadBatch

# The writer ids: one per output stream, so that two processes writing the same stream
# fence each other, and two writing different streams never do.
UBSCORE_WRITER = "ubscore-" + layout.EVENTS + "-{shard}"
ENGINE_WRITER = "engine-{symbol}"


class Streams(Protocol):
    """Where a deployment's logs live."""

    name: str

    def commands(self, writer: bool = False) -> Log:
        """balance.operations: read by UBSCore, written by the clients' producer."""
        ...

    def events(self, writer: bool = False) -> Log:
        """balance.events: written by UBSCore alone."""
        ...

    def outputs(self, symbol: str, writer: bool = False) -> Log:
        """``symbol``'s engine.outputs: written by that symbol's engine alone."""
        ...

    def create_outputs(self, symbol: str) -> None:
        """Make ``symbol``'s output stream exist (UBSCore does it before it lists the
        symbol, so every reader that learns of the symbol finds its stream)."""
        ...

    def create_inputs(self) -> None:
        """Make balance.operations and balance.events exist (UBSCore does it at start)."""
        ...

    def output_symbols(self) -> list[str]:
        """The symbols that have an output stream, sorted."""
        ...

    def stable(self, log: Log) -> tuple[int, int]:
        """(last stable offset, end offset) of ``log``: they differ while a transaction
        is open on it (Kafka); a file log is always stable."""
        ...


class FileStreams:
    """The streams of a file-log deployment rooted at ``root``."""

    def __init__(self, root: str | Path, fsync: Any = None) -> None:
        from ledger.logs.file import FsyncPolicy

        self.root = Path(root)
        self.name = f"file logs {self.root}"
        self.fsync = FsyncPolicy.ALWAYS if fsync is None else fsync

    def _open(self, path: Path, writer: bool) -> Log:
        from ledger.logs.file import FileLog

        if writer:
            if path.is_dir() and any(path.iterdir()):
                # Read it first: opening a log for writing makes its LOCK file before it
                # looks at the segments, and a damaged log must be left as it was.
                FileLog(path, readonly=True).close()
            return FileLog(path, fsync=self.fsync)
        return FileLog(path, readonly=True)

    def commands(self, writer: bool = False) -> Log:
        return self._open(layout.operations_dir(self.root), writer)

    def events(self, writer: bool = False) -> Log:
        return self._open(layout.events_dir(self.root), writer)

    def outputs(self, symbol: str, writer: bool = False) -> Log:
        return self._open(layout.output_dir(self.root, symbol), writer)

    def create_outputs(self, symbol: str) -> None:
        layout.output_dir(self.root, symbol).mkdir(parents=True, exist_ok=True)

    def create_inputs(self) -> None:
        layout.operations_dir(self.root).mkdir(parents=True, exist_ok=True)
        layout.events_dir(self.root).mkdir(parents=True, exist_ok=True)

    def output_symbols(self) -> list[str]:
        return layout.output_symbols(self.root)

    def stable(self, log: Log) -> tuple[int, int]:
        end = log.end_offset()
        return end, end


class MemoryStreams:
    """A deployment in memory (tests, in-process wiring): every stream a ``MemoryLog``,
    shared by every service given the same instance."""

    def __init__(self) -> None:
        from ledger.logs.base import MemoryLog

        self.name = "memory"
        self._new = MemoryLog
        self.logs: dict[str, Any] = {}

    @classmethod
    def of(cls, commands: Log, events: Log) -> MemoryStreams:
        """Streams over two given logs (of any kind) as balance.operations and
        balance.events; engine streams, if any symbol is listed, in memory."""
        streams = cls()
        streams.logs[layout.OPERATIONS] = commands
        streams.logs[layout.EVENTS] = events
        return streams

    def _log(self, stream: str) -> Log:
        found = self.logs.get(stream)
        if found is None:
            found = self.logs[stream] = self._new(stream)
        return found  # type: ignore[no-any-return]

    def commands(self, writer: bool = False) -> Log:
        return self._log(layout.OPERATIONS)

    def events(self, writer: bool = False) -> Log:
        return self._log(layout.EVENTS)

    def outputs(self, symbol: str, writer: bool = False) -> Log:
        if layout.output_stream(symbol) not in self.logs:
            raise LogError(f"memory: no stream {layout.output_stream(symbol)}")
        return self._log(layout.output_stream(symbol))

    def create_outputs(self, symbol: str) -> None:
        self._log(layout.output_stream(symbol))

    def create_inputs(self) -> None:
        self._log(layout.OPERATIONS)
        self._log(layout.EVENTS)

    def output_symbols(self) -> list[str]:
        head = layout.OUTPUTS + "/"
        return sorted(name[len(head) :] for name in self.logs if name.startswith(head))

    def stable(self, log: Log) -> tuple[int, int]:
        end = log.end_offset()
        return end, end


class KafkaStreams:
    """The streams of a Kafka cluster: the topics ``ledger.logs.layout`` names, one
    partition each today (the partition is always given, never chosen by a key hash)."""

    def __init__(
        self,
        bootstrap: str,
        client_config: Mapping[str, str] | None = None,
        shard: int = 0,
        topic_prefix: str = "",
    ) -> None:
        from ledger.logs.kafka import check_bootstrap

        self.bootstrap = check_bootstrap(bootstrap)
        self.client_config = dict(client_config or {})
        self.shard = shard
        # A prefix on every topic (and transactional id) lets tests and staging share
        # a cluster with production without touching its topics.
        self.prefix = topic_prefix
        self.name = f"kafka {self.bootstrap}" + (f" (topics {topic_prefix}*)" if topic_prefix else "")

    def topic(self, stream: str) -> str:
        """The Kafka topic of a stream named as in ``ledger.logs.layout``."""
        return self.prefix + stream

    def output_topic(self, symbol: str) -> str:
        return self.prefix + layout.output_topic(symbol)

    def _open(self, topic: str, partition: int, writer_id: str | None) -> Log:
        from ledger.logs.kafka import KafkaLog

        return KafkaLog(self.bootstrap, topic, partition, transactional_id=writer_id, client_config=self.client_config)

    def commands(self, writer: bool = False) -> Log:
        # The commands' producer is idempotent but not transactional: clients are many.
        return self._open(self.topic(layout.OPERATIONS), self.shard, None)

    def events(self, writer: bool = False) -> Log:
        writer_id = None
        if writer:
            writer_id = self.prefix + UBSCORE_WRITER.format(shard=self.shard)
            self._ensure(self.topic(layout.EVENTS))  # the writer makes its stream
        return self._open(self.topic(layout.EVENTS), self.shard, writer_id)

    def outputs(self, symbol: str, writer: bool = False) -> Log:
        writer_id = self.prefix + ENGINE_WRITER.format(symbol=symbol) if writer else None
        return self._open(self.output_topic(symbol), 0, writer_id)

    def _ensure(self, topic: str) -> None:
        from ledger.logs.kafka import ensure_topic

        ensure_topic(self.bootstrap, topic, client_config=self.client_config)

    def create_outputs(self, symbol: str) -> None:
        self._ensure(self.output_topic(symbol))

    def create_inputs(self) -> None:
        self._ensure(self.topic(layout.OPERATIONS))
        self._ensure(self.topic(layout.EVENTS))

    def output_symbols(self) -> list[str]:
        from ledger.logs.kafka import list_topics

        head = self.prefix + layout.OUTPUTS + "."
        return sorted(t[len(head) :] for t in list_topics(self.bootstrap, self.client_config) if t.startswith(head))

    def stable(self, log: Log) -> tuple[int, int]:
        offsets: Callable[[], tuple[int, int]] | None = getattr(log, "stable_offsets", None)
        if offsets is None:
            end = log.end_offset()
            return end, end
        return offsets()


def seek_seq(log: Log, seq: int, seq_of: Callable[[bytes, str], int], start: int = 0) -> int:
    """The offset to read from so that the first record read is the one with ``seq`` (or
    the log's end if it does not exist yet). A binary search over offsets: seqs rise
    with offsets, and offsets only run ahead of seqs (transaction markers leave holes),
    so the record with ``seq`` is at offset ``seq - 1`` or later. Never assumes
    offset = seq - 1. ``start`` is a known lower bound; ``seq_of(record, where)`` reads a
    record's seq (``where`` names the log and offset for its error)."""
    low = max(start, seq - 1)
    high = log.end_offset()
    while low < high:
        middle = (low + high) // 2
        batch: ReadBatch = log.read(middle, 1)
        if not batch.values:
            high = middle  # nothing at or after middle (markers up to the end)
            continue
        found = seq_of(batch.values[0], f"{log.name} offset {batch.offsets[0]}")
        if found >= seq:
            high = middle
        else:
            low = batch.offsets[0] + 1
    return low


__all__ = [
    "ENGINE_WRITER",
    "FileStreams",
    "KafkaStreams",
    "LogError",
    "MemoryStreams",
    "Streams",
    "UBSCORE_WRITER",
    "seek_seq",
]
