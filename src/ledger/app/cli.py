"""The ``ledger`` command line.

    ledger demo [--dir DIR] [--users N] [--symbols N] [--orders N] [--seed N] [--json]
    ledger replay --log DIR [--json] [--until SEQ] [--snapshot FILE] [--save-snapshot FILE]
    ledger replay --kafka HOST:PORT [--topic NAME] [--topic-prefix P] [--partition N] [--json] ...
    ledger replay --engine SYMBOL (--log DIR | --kafka HOST:PORT [--topic-prefix P]) [--until SEQ] [--depth N] [--json]
    ledger project (--log DIR | --kafka HOST:PORT [--engine-topic SYMBOL=TOPIC ...]) --store URL
                   (or --source DIR | --source kafka://HOST:PORT)
                   [--policy halt|refetch] [--follow [--max-seconds S]] [--json]
    ledger gaps --store URL [--all] [--json]
    ledger verify (--log DIR | --kafka HOST:PORT [--topic-prefix P]) --store URL [--commands DIR|TOPIC] [--json]
    ledger run ubscore|engine|project|all (--dir DIR | --kafka HOST:PORT) [--batch N] [--idle-exit-s S] ...
    ledger load (--dir DIR | --kafka HOST:PORT [--topic-prefix P]) --orders N [--users U] [--symbols S]
                [--seed X] [--rate R] [--request-id-base B] [--json]
    ledger keys create --db PATH (--user N | --operator) [--label TEXT] [--json]
    ledger keys add --db PATH (--user N | --operator) --public-key HEX [--label TEXT] [--json]
    ledger keys revoke --db PATH KEY_ID [--json]
    ledger keys list --db PATH [--json]

Stores: ``sqlite:PATH`` (embedded) or ``cql://HOST:PORT/KEYSPACE`` (ScyllaDB, Cassandra).
A store URL or Kafka address holding credentials (``user:password@``) is refused, and the
message does not repeat them.

Exit status:

* 0: the command completed and every check passed.
* 1: a check failed (conservation, a log that fails its own replay, a stream halted on a
  sequence fault, open gaps, a difference found by verify); the reason is printed.
* 2: bad usage (an unknown option, a number below its minimum, a missing argument) or
  unreadable or wrong input (a missing, empty or damaged log, a directory that holds no
  log, ``--until`` outside the log, a snapshot beyond the log's end, a store that is not
  a projection, a log another process is writing), and any unexpected error.
* 130: interrupted (Ctrl-C).

Every failure is one line on stderr, ``ledger COMMAND: what and where``, never a
traceback. Commands that only read (replay, gaps, verify) never create a log, a file or a
database; ``demo`` checks its sizes against ``USERS_MAX`` and ``ORDERS_MAX`` before it
creates anything.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sqlite3
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import msgspec

from ledger.app.services import BATCH_INPUTS_DEFAULT as BATCH_COMMANDS_DEFAULT
from ledger.gctune import relaxed_gc
from ledger.logs import layout
from ledger.protocol.limits import READ_RECORDS_MAX

if TYPE_CHECKING:
    from ledger.logs.base import Log

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# One output batch of the stage is one read of the command log.
BATCH_COMMANDS_MAX = READ_RECORDS_MAX
# A file-log segment's name ends so (``ledger.logs.file``'s layout).
SEGMENT_SUFFIX = ".seg"
# The first bytes of every SQLite database file.
SQLITE_MAGIC = b"SQLite format 3\x00"
# ``user:password@`` (or ``user@``) inside a URL or address.
_CREDENTIALS = re.compile(r"(^|[\s'\"=/,(])[^\s'\"/@,()]+@")


class CliError(Exception):
    """A failure the command reports in one line and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _one_line(message: str) -> str:
    """``message`` on one line, with any credentials in it masked."""
    return _CREDENTIALS.sub(r"\1***@", " ".join(message.split()))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``ledger replay: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


# -- argument types: each refuses a bad value in one line, before anything runs ---------


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"{minimum:,}..{maximum:,}" if maximum is not None else f"at least {minimum:,}"
            raise argparse.ArgumentTypeError(f"{value:,} is out of range (must be {bounds})")
        return value

    parse.__name__ = "integer"
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be a finite number, 0 or more")
    return value


def _refuse_credentials(text: str, what: str) -> None:
    if "@" in text:
        # The value is not repeated: it may hold a password.
        raise argparse.ArgumentTypeError(
            f"{what} holds credentials (a user or password before @); they are refused on a command line, "
            "where they end up in shell history and process listings"
        )


def _bootstrap(text: str) -> str:
    _refuse_credentials(text, "the Kafka address")
    if not text or any(not part.strip() for part in text.split(",")):
        raise argparse.ArgumentTypeError("give HOST:PORT[,HOST:PORT...]")
    return text


def _store_url(text: str) -> str:
    if not text.startswith("sqlite:"):
        _refuse_credentials(text, "the store URL")
    return text


def _source(text: str) -> str:
    if text.startswith("kafka://"):
        _bootstrap(text[len("kafka://") :])
    elif "://" in text:
        _refuse_credentials(text, "the source")
    return text


def _nonempty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# -- inputs: what a command reads must be there, and be what it says --------------------


def _log_dir(path: str, option: str) -> Path:
    """``path`` as a file log to read: an existing directory holding at least one segment."""
    directory = Path(path)
    if not directory.exists():
        raise CliError(f"{option} {directory}: no such directory")
    if not directory.is_dir():
        raise CliError(f"{option} {directory}: not a directory")
    try:
        names = os.listdir(directory)
    except OSError as error:
        raise CliError(f"{option} {directory}: cannot list it: {error.strerror}") from None
    if not any(name.endswith(SEGMENT_SUFFIX) for name in names):
        hint = ""
        if layout.EVENTS in names:
            hint = f"; it looks like a deployment root: its events are {layout.events_dir(directory)}"
        raise CliError(f"{option} {directory}: holds no file log (no *{SEGMENT_SUFFIX} segment){hint}")
    return directory


def _deployment_root(path: str, option: str) -> None:
    """``path`` as a file-log deployment (``ledger.logs.layout``) to read."""
    root = Path(path)
    if not root.exists():
        raise CliError(f"{option} {root}: no such directory")
    if not root.is_dir():
        raise CliError(f"{option} {root}: not a directory")
    events = layout.events_dir(root)
    if not events.is_dir():
        hint = ""
        with contextlib.suppress(OSError):
            if any(name.endswith(SEGMENT_SUFFIX) for name in os.listdir(root)):
                hint = f"; it is a log itself: give the deployment root that holds {layout.EVENTS}/"
        raise CliError(f"{option} {root}: no {layout.EVENTS} log here{hint}")
    _log_dir(str(events), option)


def _input_file(path: str, option: str) -> bytes:
    file = Path(path)
    if file.is_dir():
        raise CliError(f"{option} {file}: is a directory, not a file")
    try:
        return file.read_bytes()
    except OSError as error:
        raise CliError(f"{option} {file}: cannot read it: {error.strerror}") from None


def _check_output_file(path: str, option: str) -> None:
    """Refuse an output file that cannot be written, before any work is done."""
    file = Path(path)
    if file.is_dir():
        raise CliError(f"{option} {file}: is a directory, not a file")
    parent = file.parent
    if not parent.is_dir():
        raise CliError(f"{option} {file}: no such directory {parent}")
    writable = os.access(file, os.W_OK) if file.exists() else os.access(parent, os.W_OK | os.X_OK)
    if not writable:
        raise CliError(f"{option} {file}: permission denied")


def _write_output_file(path: str, option: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as error:
        raise CliError(f"{option} {path}: cannot write it: {error.strerror}") from None


def _sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:`` store URL (None for another store or ``:memory:``)."""
    if not url.startswith("sqlite:"):
        return None
    path = url[len("sqlite:") :]
    return None if path in ("", ":memory:") else Path(path)


def _check_sqlite_file(file: Path, what: str | None = None) -> None:
    """An existing ``file`` must be an SQLite database (sqlite would fail on first use);
    ``what`` names it in a refusal (default: as a store URL)."""
    name = what or f"store sqlite:{file}"
    if file.is_dir():
        raise CliError(f"{name}: is a directory, not a database file")
    if not file.exists():
        if not file.parent.is_dir():
            raise CliError(f"{name}: no such directory {file.parent}")
        return
    try:
        with open(file, "rb") as f:
            magic = f.read(len(SQLITE_MAGIC))
    except OSError as error:
        raise CliError(f"{name}: cannot read it: {error.strerror}") from None
    if magic and magic != SQLITE_MAGIC:
        raise CliError(f"{name}: not an SQLite database")


def _check_store_to_read(url: str) -> None:
    """A store a command only reads must exist and be a projection: opening one creates
    its tables, and a mistyped path would otherwise become an empty projection."""
    if url == "sqlite::memory:":
        raise CliError("store sqlite::memory: is empty by definition; give the projection's sqlite:PATH")
    file = _sqlite_path(url)
    if file is None:
        return
    _check_sqlite_file(file)
    if not file.exists() or file.stat().st_size == 0:
        raise CliError(f"store sqlite:{file}: no such database (run ledger project first)")
    if Path(f"{file}-wal").exists():
        return  # in use by a writer; its tables may not have reached the main file yet
    try:
        # immutable: no locks, no -wal or -shm files, nothing written.
        db = sqlite3.connect(f"file:{file}?mode=ro&immutable=1", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error as error:
        raise CliError(f"store sqlite:{file}: cannot read it: {error}") from None
    if "stream_checkpoints" not in tables:
        raise CliError(f"store sqlite:{file}: not a ledger projection (no stream_checkpoints table)")


def _open_store(url: str, read_only: bool) -> Any:
    """The store at ``url``; one opened only to read must already hold a projection
    (reading creates nothing)."""
    from settlement import open_store

    file = _sqlite_path(url)
    if file is not None:
        _check_sqlite_file(file)
    try:
        return open_store(url, create=not read_only) if url.startswith("cql://") else open_store(url)
    except sqlite3.Error as error:
        raise CliError(f"store {url}: {error}") from None


def _print_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
        return
    print(f"log:          {summary.log}")
    print(f"events:       {summary.events:,} (seq {summary.first_seq}..{summary.final_seq})")
    print(f"state hash:   {summary.state_hash}")
    print(f"replay rate:  {summary.events_per_second:,.0f} events/s ({summary.seconds:.3f} s)")
    print("totals (minor units):")
    print(f"  {'asset':<8} {'available':>26} {'locked':>22} {'deposited - withdrawn':>26}")
    for code, row in summary.totals.items():
        net = row["deposited"] - row["withdrawn"]
        print(f"  {code:<8} {row['available']:>26} {row['locked']:>22} {net:>26}")
    if summary.conservation_problems:
        print("CONSERVATION FAILED:")
        for problem in summary.conservation_problems:
            print(f"  {problem}")
    else:
        print("conservation: ok (available + locked == deposited - withdrawn, every asset)")


def _last_seq(log: Any) -> int:
    """The seq of the last event in ``log`` (0 if it holds none)."""
    from ledger.logs.base import scan
    from ledger.protocol.codec import EVENTS

    end = log.end_offset()
    last = 0
    # Kafka leaves holes (transaction markers) between records: look a little way back.
    for batch in scan(log, max(end - 64, 0), end):
        if batch.values:
            last = EVENTS.decode(batch.values[-1], f"{log.name} offset {batch.offsets[-1]}").seq
    return last


def _open_replay_log(args: argparse.Namespace) -> Any:
    from ledger.logs.file import FileLog

    if args.kafka:
        from ledger.logs.kafka import KafkaLog, load_client_config

        topic = args.topic_prefix + (args.topic or layout.EVENTS)
        return KafkaLog(args.kafka, topic, args.partition, client_config=load_client_config())
    return FileLog(_log_dir(args.log, "--log"), readonly=True)


def _engine_log(args: argparse.Namespace) -> Any:
    """SYMBOL's engine output log that ``replay --engine`` reads (opened to read)."""
    symbol = args.engine
    if args.kafka:
        from ledger.logs.kafka import KafkaLog, load_client_config

        topic = args.topic_prefix + (args.topic or layout.output_topic(symbol))
        return KafkaLog(args.kafka, topic, 0, client_config=load_client_config())
    from ledger.logs.file import FileLog

    root = Path(args.log)
    found = layout.output_dir(root, symbol)
    if root.is_dir() and not found.exists() and not any(p.suffix == SEGMENT_SUFFIX for p in root.iterdir()):
        known = layout.output_symbols(root)
        hint = f" (its streams: {', '.join(known)})" if known else ""
        raise CliError(f"--log {root}: no {layout.output_stream(symbol)} stream here{hint}")
    directory = found if found.exists() else root
    return FileLog(_log_dir(str(directory), "--log"), readonly=True)


def _print_book(summary: Any, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
        return
    print(f"log:          {summary.log}")
    print(f"outputs:      {summary.outputs:,} (seq 1..{summary.seq:,}), last input seq {summary.last_input_seq:,}")
    print(f"state hash:   {summary.state_hash}")
    print(
        f"book:         {summary.bid_orders:,} bids at {summary.bid_levels:,} prices, "
        f"{summary.ask_orders:,} asks at {summary.ask_levels:,} prices ({summary.seconds:.3f} s)"
    )
    if not summary.bids and not summary.asks:
        return
    header = f"{'bid orders':>10} {'qty (lots)':>14} {'price (ticks)':>14}"
    print(f"  {header} | {'price (ticks)':<14} {'qty (lots)':<14} orders")
    for i in range(max(len(summary.bids), len(summary.asks))):
        bid = summary.bids[i] if i < len(summary.bids) else None
        ask = summary.asks[i] if i < len(summary.asks) else None
        left = f"{bid.orders:>10,} {bid.qty_lots:>14,} {bid.price_ticks:>14,}" if bid else " " * 40
        right = f"{ask.price_ticks:<14,} {ask.qty_lots:<14,} {ask.orders:,}" if ask else ""
        print(f"  {left} | {right}".rstrip())


def _cmd_replay_engine(args: argparse.Namespace) -> int:
    from ledger.app.books import BookReplayError, summarize_book

    for option, given in (("--snapshot", args.snapshot), ("--save-snapshot", args.save_snapshot)):
        if given:
            raise CliError(f"{option} is for balance.events; --engine rebuilds a book from its stream alone")
    if args.partition:
        raise CliError("--partition is for balance.events; an engine stream has one partition (0)")
    log = _engine_log(args)
    try:
        if log.end_offset() == 0:
            raise CliError(f"{log.name}: holds no outputs (it ends at offset 0)")
        try:
            summary = summarize_book(log, args.engine, until=args.until, depth=args.depth)
        except BookReplayError as error:  # the stream fails its own replay: a check failed
            raise CliError(str(error), EXIT_CHECK_FAILED) from None
    finally:
        log.close()
    if args.until is not None and summary.seq != args.until:
        raise CliError(f"--until {args.until:,} is past the end of the stream (it ends at seq {summary.seq:,})")
    _print_book(summary, args.json)
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    from ledger.app.books import DEPTH_DEFAULT
    from ledger.rebuild import replay_summary

    if (args.log is None) == (args.kafka is None):
        raise CliError("give --log DIR, or --kafka HOST:PORT --topic NAME")
    if args.topic_prefix and not args.kafka:
        raise CliError("--topic-prefix is for --kafka")
    if args.engine is not None:
        return _cmd_replay_engine(args)
    if args.depth != DEPTH_DEFAULT:
        raise CliError("--depth is for --engine")
    snap = _input_file(args.snapshot, "--snapshot") if args.snapshot else None
    if args.save_snapshot:
        _check_output_file(args.save_snapshot, "--save-snapshot")
    log = _open_replay_log(args)
    try:
        if log.end_offset() == 0:
            raise CliError(f"{log.name}: holds no events (it ends at offset 0)")
        summary, core = replay_summary(log, snapshot=snap, until=args.until, progress=args.progress)
        last_seq = _last_seq(log) if snap is not None and summary.events == 0 else summary.final_seq
        if last_seq < summary.final_seq:
            raise CliError(
                f"--snapshot {args.snapshot} is at seq {summary.final_seq:,}, beyond the end of {log.name} "
                f"(its last seq is {last_seq:,})"
            )
    finally:
        log.close()
    if args.until is not None and summary.final_seq != args.until:
        where = "past the end of the log" if summary.final_seq < args.until else "before the snapshot's seq"
        raise CliError(f"--until {args.until:,} is {where} (the replay ends at seq {summary.final_seq:,})")
    if args.save_snapshot:
        _write_output_file(args.save_snapshot, "--save-snapshot", core.snapshot())
    _print_summary(summary, args.json)
    if summary.conservation_problems:
        problems = summary.conservation_problems
        raise CliError(f"conservation failed for {len(problems)} assets: {problems[0]}", EXIT_CHECK_FAILED)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from ledger.app.demo import run_demo
    from ledger.logs.file import FsyncPolicy

    root = Path(args.dir)
    if root.exists() and not root.is_dir():
        raise CliError(f"--dir {root}: exists and is not a directory")
    try:
        summary = run_demo(
            args.dir,
            users=args.users,
            symbols=args.symbols,
            orders=args.orders,
            seed=args.seed,
            progress=args.progress,
            fsync=FsyncPolicy(args.fsync),
        )
    except ValueError as error:
        raise CliError(str(error)) from None
    if args.json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
    else:
        print(f"directory:    {summary.directory}  (seed {summary.seed}, {summary.users:,} users)")
        print(f"symbols:      {', '.join(summary.symbols)}")
        print(f"commands:     {summary.commands:,} in {summary.seconds:.2f} s")
        print(
            f"exchange:     {summary.exchange_commands_per_second:,.0f} commands/s ({summary.exchange_seconds:.2f} s "
            "in UBSCore, the engines and settlement, logs written)"
        )
        print(
            f"generator:    {summary.generator_commands_per_second:,.0f} commands/s ({summary.generator_seconds:.2f} s "
            "making the commands and watching their events)"
        )
        print(
            f"events:       {summary.events:,} balance events, {summary.engine_outputs:,} engine outputs, "
            f"{summary.trades:,} trades, {summary.orders_accepted:,} orders accepted, "
            f"{summary.rejections:,} rejected commands"
        )
        print("totals (minor units):")
        print(f"  {'asset':<6} {'available':>30} {'locked':>24} {'deposited - withdrawn':>30}")
        for code, row in summary.totals.items():
            net = row["deposited"] - row["withdrawn"]
            print(f"  {code:<6} {row['available']:>30} {row['locked']:>24} {net:>30}")
        print("state hashes (live == replayed from the logs):")
        for name, live in summary.state_hashes.items():
            mark = "ok" if summary.replayed_hashes.get(name) == live else "DIFFERS"
            print(f"  {name:<18} {live}  {mark}")
        if summary.checks_ok:
            print(
                f"checks:       ok in {summary.check_seconds:.2f} s (replayed hashes equal live ones, engines "
                "re-run byte for byte, conservation holds for every asset)"
            )
        else:
            print(f"CHECKS FAILED ({summary.check_seconds:.2f} s):")
            for problem in summary.problems:
                print(f"  {problem}")
    if not summary.checks_ok:
        raise CliError(f"checks failed ({len(summary.problems)}): {'; '.join(summary.problems)}", EXIT_CHECK_FAILED)
    return EXIT_OK


def _log_or_kafka(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(file-log directory, Kafka bootstrap): exactly one is set."""
    log, kafka = args.log, args.kafka
    if args.source is not None:
        if log is not None or kafka is not None:
            raise CliError("give --source, or --log / --kafka, not both")
        if args.source.startswith("kafka://"):
            kafka = args.source[len("kafka://") :]
        else:
            log = args.source.removeprefix("file:")
    if (log is None) == (kafka is None):
        raise CliError("give --log DIR, or --kafka HOST:PORT (or --source DIR|kafka://HOST:PORT)")
    if log is not None and args.engine_topic:
        raise CliError("--engine-topic is for --kafka; file logs are found under DIR/engine.outputs/")
    if log is not None and args.topic_prefix:
        raise CliError("--topic-prefix is for --kafka")
    return log, kafka


def _sources(args: argparse.Namespace) -> list[Any]:
    from settlement.projector import file_sources, kafka_sources

    log, kafka = _log_or_kafka(args)
    if log is not None:
        _deployment_root(log, "--log" if args.source is None else "--source")
        return file_sources(log)
    prefix = args.topic_prefix
    topics: dict[str, str] = {}
    for item in args.engine_topic or []:
        symbol, sep, topic = item.partition("=")
        if not sep or not symbol or not topic:
            raise CliError(f"--engine-topic {item!r}: use SYMBOL=TOPIC")
        topics[symbol] = prefix + topic
    assert kafka is not None
    from ledger.logs.kafka import load_client_config

    config = load_client_config()
    if prefix and not topics:
        from ledger.app.streams import KafkaStreams

        streams = KafkaStreams(kafka, config, topic_prefix=prefix)
        topics = {symbol: streams.output_topic(symbol) for symbol in streams.output_symbols()}
    # With a prefix the streams keep their own names, as `ledger run --topic-prefix` keeps them.
    stream = args.topic if prefix else None
    return kafka_sources(
        kafka, prefix + args.topic, topics, args.partition, client_config=config, balance_stream=stream
    )


@contextlib.contextmanager
def _sources_and_store(args: argparse.Namespace, store_read_only: bool) -> Iterator[tuple[list[Any], Any]]:
    """The command's sources and store, closed on the way out whatever happens."""
    from settlement.store import StoreError

    _log_or_kafka(args)  # usage first: before any log or store is opened
    if store_read_only:
        _check_store_to_read(args.store)
    sources = _sources(args)
    try:
        store = _open_store(args.store, store_read_only)
    except BaseException:
        for source in sources:
            source.log.close()
        raise
    try:
        yield sources, store  # the command may replace the list's items (streams found meanwhile)
    finally:
        for source in sources:
            source.log.close()
        # Every write is done before the command returns; a store failure was raised there.
        with contextlib.suppress(StoreError):
            store.close()


def _cmd_project(args: argparse.Namespace) -> int:
    from settlement.projector import Projector

    if args.max_seconds is not None and not args.follow:
        raise CliError("--max-seconds is for --follow")
    with _sources_and_store(args, store_read_only=False) as (sources, store):
        options: dict[str, Any] = {} if args.state_every is None else {"state_every_events": args.state_every}
        directory, _kafka = _log_or_kafka(args)
        if args.follow and directory is not None:
            from settlement.projector import file_sources

            # Symbols listed while following get their engine.outputs projected too.
            options["discover"] = lambda known: file_sources(directory, known)
        projector = Projector(store, sources, policy=args.policy, **options)
        try:
            report = projector.run(follow=args.follow, max_seconds=args.max_seconds)
        finally:
            # Streams found while following are the projector's; close those too.
            sources[:] = [s.source for s in projector.streams]
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print(f"store:        {store.name}  ({report.seconds:.2f} s)")
        for r in report.streams:
            state = "HALTED" if r.halted else "ok"
            print(
                f"  {r.stream:<28} seq {r.applied_seq:>10,}  written {r.written:>10,}  "
                f"re-folded {r.folded_without_writing:>10,}  duplicates {r.duplicates + r.duplicates_unverified:,}"
                f"  {state}"
            )
            if r.fault is not None:
                print(f"    {r.fault.kind}: {r.fault.detail}")
    halted = [r for r in report.streams if r.halted and r.fault is not None]
    if halted:
        r = halted[0]
        more = f" (and {len(halted) - 1} more halted streams)" if len(halted) > 1 else ""
        assert r.fault is not None
        raise CliError(f"stream {r.stream} halted at seq {r.applied_seq}: {r.fault.detail}{more}", EXIT_CHECK_FAILED)
    if not report.ok:
        raise CliError(f"the projection into {store.name} is not complete", EXIT_CHECK_FAILED)
    return EXIT_OK


def _cmd_gaps(args: argparse.Namespace) -> int:
    _check_store_to_read(args.store)
    store = _open_store(args.store, read_only=True)
    try:
        faults = store.faults(open_only=not args.all)
    finally:
        store.close()
    if args.json:
        sys.stdout.write(msgspec.json.encode(faults).decode() + "\n")
    else:
        if not faults:
            print("no open gaps" if not args.all else "no gaps recorded")
        for f in faults:
            span = f"missing {f.expected}..{f.received - 1}" if f.kind == "gap" else f"at seq {f.expected}"
            state = "resolved" if f.resolved else "OPEN"
            print(f"{f.stream:<28} {f.kind:<9} {span:<28} {state:<8} {f.detail}")
    still_open = [f for f in faults if not f.resolved]
    if still_open:
        first = still_open[0]
        raise CliError(
            f"open sequence faults in {store.name}: {len(still_open)}, the first on {first.stream} "
            f"at seq {first.expected}",
            EXIT_CHECK_FAILED,
        )
    return EXIT_OK


def _open_commands_log(args: argparse.Namespace, stack: contextlib.ExitStack) -> Log | None:
    """The command log ``verify --commands`` names (closed by ``stack``): a file log, or
    with ``--kafka`` a topic (the partition of ``--partition``); None without it."""
    if args.commands is None:
        return None
    _directory, kafka = _log_or_kafka(args)
    if kafka is not None:
        from ledger.logs.kafka import KafkaLog, load_client_config

        topic = args.topic_prefix + args.commands
        log = KafkaLog(kafka, topic, args.partition, client_config=load_client_config())
        return stack.enter_context(contextlib.closing(log))
    from ledger.logs.file import FileLog

    return stack.enter_context(FileLog(_log_dir(args.commands, "--commands"), readonly=True))


def _print_answers(answers: Any) -> None:
    print(
        f"answers:      {answers.commands:,} commands in {answers.commands_log}, "
        f"{answers.answers:,} answers in {answers.events_log}"
    )
    if answers.ok:
        print("answers:      ok (every command answered exactly once, in order)")
        return
    print(
        f"ANSWER PROBLEMS ({answers.problems_total:,}: {answers.unanswered:,} unanswered, "
        f"{answers.answered_twice:,} answered twice, {answers.no_such_command:,} answers naming no command, "
        f"{answers.out_of_order:,} out of order):"
    )
    for problem in answers.problems:
        print(f"  {problem.kind}: {problem.detail}")
    if answers.problems_total > len(answers.problems):
        print(f"  ... and {answers.problems_total - len(answers.problems):,} more")


def _answers_failure(answers: Any) -> str:
    first = answers.problems[0]
    return (
        f"{answers.events_log} does not answer every command of {answers.commands_log} exactly once: "
        f"{answers.problems_total:,} problems ({answers.unanswered:,} unanswered, "
        f"{answers.answered_twice:,} answered twice, {answers.no_such_command:,} answers naming no command, "
        f"{answers.out_of_order:,} out of order); the first: {first.detail}"
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    from ledger.rebuild import check_answers
    from ledger.ubscore import LedgerError
    from settlement.verify import verify_store

    answers = None
    with contextlib.ExitStack() as stack:
        sources, store = stack.enter_context(_sources_and_store(args, store_read_only=True))
        commands = _open_commands_log(args, stack)
        balance = sources[0]
        try:
            engine_logs = {s.symbol: s.log for s in sources if s.kind == "engine"}
            from ledger.app.books import book_levels

            report = verify_store(store, balance.log, balance.stream, engine_logs, book_levels)
        except LedgerError as error:  # the log itself fails its audit (a gap, a bad event)
            raise CliError(f"the log cannot be replayed: {error}", EXIT_CHECK_FAILED) from None
        if commands is not None:
            answers = check_answers(commands, balance.log)
    if args.json:
        body = msgspec.to_builtins(report)
        if answers is not None:
            body["answers"] = msgspec.to_builtins(answers)
            body["ok"] = report.ok and answers.ok  # every check the command ran
        sys.stdout.write(msgspec.json.encode(body).decode() + "\n")
    else:
        print(f"store:        {store.name}")
        print(f"log:          seq 1..{report.final_seq}; store checkpoint at seq {report.checkpoint_seq}")
        print(f"balances:     {report.balances_checked:,} (user, asset) pairs compared with a fresh replay")
        print(f"trades:       {report.trades_in_store:,} in the store, {report.trades_in_log:,} in the log")
        print(f"fills:        {report.fills_in_store:,} in the store, {report.fills_in_log:,} in the log")
        print(
            f"depth:        {report.depth_levels_checked:,} price levels of {report.depth_symbols_checked} symbols "
            "compared with a replay of their engine outputs"
        )
        if report.depth_symbols_unchecked:
            print(f"depth:        not compared (no engine log given): {', '.join(report.depth_symbols_unchecked)}")
        if report.ok:
            print("verify:       ok (no difference)")
        else:
            print(f"DIFFERENCES ({report.differences_total:,}):")
            for line in report.differences:
                print(f"  {line}")
            if report.differences_total > len(report.differences):
                print(f"  ... and {report.differences_total - len(report.differences):,} more")
        if answers is not None:
            _print_answers(answers)
    failures = []
    if not report.ok:
        failures.append(f"{report.differences_total:,} differences between {store.name} and a fresh replay of the log")
    if answers is not None and not answers.ok:
        failures.append(_answers_failure(answers))
    if failures:
        raise CliError("; and ".join(failures), EXIT_CHECK_FAILED)
    return EXIT_OK


def _deployment_streams(args: argparse.Namespace) -> Any:
    """The streams ``run`` works on: ``--dir`` (file logs) or ``--kafka``."""
    if args.kafka and args.dir:
        raise CliError("give --dir DIR or --kafka HOST:PORT, not both")
    if args.kafka:
        from ledger.app.streams import KafkaStreams
        from ledger.logs.kafka import load_client_config

        return KafkaStreams(args.kafka, load_client_config(), topic_prefix=args.topic_prefix)
    if not args.dir:
        raise CliError("give --dir DIR (a file-log deployment) or --kafka HOST:PORT")
    if args.topic_prefix:
        raise CliError("--topic-prefix is for --kafka")
    root = Path(args.dir)
    if not root.is_dir():
        raise CliError(f"--dir {root}: no such directory (make it first; the services make the logs in it)")
    for name in (layout.OPERATIONS, layout.EVENTS, layout.OUTPUTS):
        if (root / name).exists() and not (root / name).is_dir():
            raise CliError(f"--dir {root}: {name} is not a directory")
    from ledger.app.streams import FileStreams
    from ledger.logs.file import FsyncPolicy

    return FileStreams(root, FsyncPolicy(args.fsync))


def _cmd_run(args: argparse.Namespace) -> int:
    import signal

    from ledger.app import services as svc

    streams = _deployment_streams(args)
    batch = {"batch_inputs": args.batch, "batch_wait_ms": args.batch_wait_ms}
    chosen: list[Any] = []
    if args.service in ("ubscore", "all"):
        snapshots = None
        if args.snapshot_dir:
            from ledger.app.snapshots import SnapshotDir

            where = Path(args.snapshot_dir)
            if where.exists() and not where.is_dir():
                raise CliError(f"--snapshot-dir {where}: not a directory")
            snapshots = SnapshotDir(where)
        chosen.append(svc.UBSCoreService(streams, **batch, snapshots=snapshots, snapshot_every=args.snapshot_every))
    if args.service in ("engine", "all"):
        chosen.append(svc.EngineService(streams, args.symbol or None, **batch))
    if args.service in ("project", "all"):
        url = args.store
        if url is None:
            if args.service == "project" or not args.dir:
                raise CliError("give --store URL (sqlite:PATH or cql://HOST:PORT/KEYSPACE)")
            url = f"sqlite:{Path(args.dir) / 'projection.db'}"
        state_every = args.state_every

        def store() -> Any:
            return _open_store(url, read_only=False)

        chosen.append(svc.ProjectService(streams, store, state_every))
    metrics = None
    if args.metrics_port is not None:
        from ledger.app.metrics import ServiceMetrics

        metrics = ServiceMetrics()
        metrics.serve(args.metrics_port, args.metrics_address)
    stopper = svc.Stopper()
    signal.signal(signal.SIGTERM, stopper.stop)
    svc.run_services(
        chosen,
        stopper,
        idle_exit_s=args.idle_exit_s,
        outage_s_max=args.outage_s_max,
        summary_every_s=args.log_every_s,
        metrics=metrics,
    )
    for service in chosen:
        c = service.counters
        print(f"{service.name}: {c.inputs} inputs, {c.outputs} outputs, {c.batches} batches, {c.retries} retries")
    return EXIT_OK


def _cmd_gateway(args: argparse.Namespace) -> int:
    try:
        from ledger.app.gateway import server
        from ledger.app.gateway.app import GatewayConfig
    except ImportError as error:
        raise CliError(f"the gateway needs its extra ({error.name} is missing): pip install -e '.[gateway]'") from None
    streams = _deployment_streams(args)
    db = Path(args.db)
    if db.is_dir() or not db.parent.is_dir():
        raise CliError(f"--db {db}: not a file in an existing directory")
    if db.exists():
        _check_sqlite_file(db)
    url = args.store
    file = _sqlite_path(url)
    if url == "sqlite::memory:":
        raise CliError("store sqlite::memory: is empty by definition; give the projection's sqlite:PATH")
    if file is not None:
        _check_sqlite_file(file)  # it may not exist yet: the projector makes it

    def store() -> Any:
        return _open_store(url, read_only=True)

    config = GatewayConfig(args.answer_timeout_s, args.read_wait_s, args.health_lag_max)
    auth = {"recv_window_ms": args.recv_window_ms, "rate_per_s": args.rate_per_s, "burst": args.burst}
    # Built first: its authenticator refuses anything signed before it started, so no
    # request can reach the port before that start.
    gateway = server.build(streams, db, store, config, auth)
    try:
        sock = server.listen(args.address, args.port)
    except OSError as error:
        gateway.bridge.close()
        raise CliError(f"cannot listen on {args.address}:{args.port}: {error.strerror or error}") from None
    try:
        server.serve(gateway, sock)
    except OSError as error:
        raise CliError(f"gateway: {error}", EXIT_CHECK_FAILED) from None
    print(f"gateway: {gateway.bridge.sent_commands} commands sent, {gateway.bridge.answers_seen} answers seen")
    return EXIT_OK


def _gateway_parser(services: Any) -> None:
    from ledger.app.gateway.limits import (
        ANSWER_TIMEOUT_S_DEFAULT,
        HEALTH_LAG_MAX_DEFAULT,
        RATE_BURST_DEFAULT,
        RATE_LIMIT_PER_S_DEFAULT,
        READ_WAIT_S_DEFAULT,
        RECV_WINDOW_MS_DEFAULT,
    )

    gp = services.add_parser("gateway", help="the HTTP gateway: signed requests in, balance.operations out")
    gp.add_argument("--dir", type=_nonempty, help="a file-log deployment's directory")
    gp.add_argument("--kafka", type=_bootstrap, help="bootstrap servers of the Kafka cluster")
    gp.add_argument("--topic-prefix", default="", help="with --kafka: a prefix on every topic")
    gp.add_argument("--fsync", choices=["always", "never"], default="always", help="file log fsync policy")
    gp.add_argument("--store", type=_store_url, required=True, help="the projection: sqlite:PATH or cql://HOST:PORT/KS")
    gp.add_argument("--db", type=_nonempty, required=True, help="the gateway's own SQLite file: API keys and requests")
    gp.add_argument("--address", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    gp.add_argument("--port", type=_integer(1, 65535), default=8080, help="the port to listen on (default 8080)")
    gp.add_argument("--answer-timeout-s", type=_seconds, default=ANSWER_TIMEOUT_S_DEFAULT,
                    help=f"wait this long for UBSCore's answer, then answer 202 (default {ANSWER_TIMEOUT_S_DEFAULT:g})")
    gp.add_argument("--read-wait-s", type=_seconds, default=READ_WAIT_S_DEFAULT,
                    help=f"a read waits this long for the projection to reach min_seq ({READ_WAIT_S_DEFAULT:g})")
    gp.add_argument("--health-lag-max", type=_integer(0), default=HEALTH_LAG_MAX_DEFAULT,
                    help=f"health fails past this projection lag, in records (default {HEALTH_LAG_MAX_DEFAULT:,})")
    gp.add_argument("--recv-window-ms", type=_integer(1, 600_000), default=RECV_WINDOW_MS_DEFAULT,
                    help=f"a request's timestamp may be this far from the gateway's clock (default "
                    f"{RECV_WINDOW_MS_DEFAULT:,})")
    gp.add_argument("--rate-per-s", type=_rate, default=RATE_LIMIT_PER_S_DEFAULT,
                    help=f"requests per second per key (default {RATE_LIMIT_PER_S_DEFAULT:g})")
    gp.add_argument("--burst", type=_integer(1), default=RATE_BURST_DEFAULT,
                    help=f"requests a key may send at once above its rate (default {RATE_BURST_DEFAULT:,})")
    gp.set_defaults(run=_cmd_gateway)


def _load_target(args: argparse.Namespace) -> tuple[Log, str]:
    """balance.operations of the deployment ``load`` writes to, opened for writing, and
    how to name it."""
    if args.kafka and args.dir:
        raise CliError("give --dir DIR or --kafka HOST:PORT, not both")
    if args.kafka:
        from ledger.app.streams import KafkaStreams
        from ledger.logs.kafka import ensure_topic, load_client_config

        streams = KafkaStreams(args.kafka, load_client_config(), topic_prefix=args.topic_prefix)
        topic = streams.topic(layout.OPERATIONS)
        ensure_topic(streams.bootstrap, topic, client_config=streams.client_config)
        return streams.commands(writer=True), f"kafka {streams.bootstrap} topic {topic}"
    if not args.dir:
        raise CliError("give --dir DIR (a file-log deployment) or --kafka HOST:PORT")
    if args.topic_prefix:
        raise CliError("--topic-prefix is for --kafka")
    root = Path(args.dir)
    if not root.is_dir():
        raise CliError(f"--dir {root}: no such directory (make it first)")
    operations = layout.operations_dir(root)
    if operations.exists() and not operations.is_dir():
        raise CliError(f"--dir {root}: {layout.OPERATIONS} is not a directory")
    from ledger.app.streams import FileStreams
    from ledger.logs.file import FsyncPolicy

    operations.mkdir(exist_ok=True)
    return FileStreams(root, FsyncPolicy(args.fsync)).commands(writer=True), str(operations)


def _cmd_load(args: argparse.Namespace) -> int:
    from ledger.app.load import planned_ids, planned_workload, request_id_base_after, send_workload
    from ledger.protocol.limits import REQUEST_ID_MAX

    if args.fsync is not None and not args.dir:
        raise CliError("--fsync is for --dir")
    args.fsync = args.fsync or "always"
    base_max = REQUEST_ID_MAX - planned_ids(args.orders, args.users, args.symbols)
    if args.request_id_base is not None and args.request_id_base > base_max:
        raise CliError(f"--request-id-base {args.request_id_base:,}: at most {base_max:,} for this workload")
    log, where = _load_target(args)
    try:
        base = request_id_base_after(log) if args.request_id_base is None else args.request_id_base
        try:
            commands = planned_workload(args.seed, args.orders, args.users, args.symbols, request_id_base=base)
        except ValueError as error:
            raise CliError(str(error)) from None
        report = send_workload(log, commands, rate_per_s=args.rate)
    finally:
        log.close()
    last_id = base + planned_ids(args.orders, args.users, args.symbols)
    if args.json:
        body = {**msgspec.to_builtins(report), "log": where, "request_ids": [base + 1, last_id], "seed": args.seed}
        sys.stdout.write(msgspec.json.encode(body).decode() + "\n")
    else:
        rate = report.commands / report.seconds if report.seconds > 0 else 0.0
        print(
            f"load: {report.commands:,} commands sent to {where} in {report.seconds:.2f} s ({rate:,.0f} commands/s; "
            f"offsets {report.first_offset:,}..{report.last_offset:,}, request ids {base + 1:,}..{last_id:,})"
        )
    return EXIT_OK


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", type=_source, help="DIR (file logs) or kafka://HOST:PORT: the same as --log or --kafka"
    )
    parser.add_argument("--log", type=_nonempty, help="a file-log directory as `ledger demo` writes it")
    parser.add_argument("--kafka", type=_bootstrap, help="bootstrap servers of a Kafka cluster")
    parser.add_argument("--topic", default=layout.EVENTS, help="with --kafka: the balance.events topic")
    parser.add_argument(
        "--topic-prefix",
        default="",
        help="with --kafka: a prefix on every topic named (--topic, --engine-topic, --commands), as `ledger run "
        "--topic-prefix` has; the streams keep their names in the store, and without --engine-topic every "
        "symbol's topic under the prefix is read",
    )
    parser.add_argument(
        "--partition", type=_integer(0), default=0, help="with --kafka: the partition (one UBSCore shard)"
    )
    parser.add_argument(
        "--engine-topic", action="append", metavar="SYMBOL=TOPIC", help="with --kafka: a symbol's engine.outputs topic"
    )
    parser.add_argument("--store", type=_store_url, required=True, help="sqlite:PATH or cql://HOST:PORT/KEYSPACE")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _replay_parser(sub: Any) -> None:
    from ledger.app.books import DEPTH_DEFAULT, DEPTH_MAX

    rp = sub.add_parser(
        "replay", help="rebuild UBSCore state from balance.events (or a book from its engine stream) and summarize it"
    )
    rp.add_argument(
        "--log",
        type=_nonempty,
        help="directory of a file log holding balance.events; with --engine, a deployment's directory "
        f"(its {layout.OUTPUTS}/SYMBOL) or the engine log itself",
    )
    rp.add_argument("--kafka", type=_bootstrap, help="bootstrap servers of a Kafka cluster holding balance.events")
    rp.add_argument(
        "--topic",
        help=f"with --kafka: the topic (default {layout.EVENTS}; with --engine, {layout.OUTPUTS}.SYMBOL)",
    )
    rp.add_argument("--topic-prefix", default="", help="with --kafka: a prefix on the topic (as `ledger run` has)")
    rp.add_argument(
        "--engine",
        metavar="SYMBOL",
        type=_nonempty,
        help="rebuild SYMBOL's order book from its engine output stream alone; print its hash and top levels",
    )
    rp.add_argument(
        "--depth",
        type=_integer(0, DEPTH_MAX),
        default=DEPTH_DEFAULT,
        help=f"with --engine: price levels shown per side (0..{DEPTH_MAX:,})",
    )
    rp.add_argument("--partition", type=_integer(0), default=0, help="with --kafka: the partition (one UBSCore shard)")
    rp.add_argument("--until", type=_integer(1), help="stop after the event with this seq (in the log)")
    rp.add_argument("--snapshot", type=_nonempty, help="start from this verified snapshot file")
    rp.add_argument("--save-snapshot", type=_nonempty, help="write a snapshot of the final state to this file")
    rp.add_argument("--json", action="store_true", help="print the summary as JSON")
    rp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    rp.set_defaults(run=_cmd_replay)


def _demo_parser(sub: Any) -> None:
    from ledger.app.demo import ORDERS_MAX, SYMBOLS, USERS_MAX

    dp = sub.add_parser("demo", help="run a deterministic exchange workload on file logs, then verify it")
    dp.add_argument(
        "--dir", type=_nonempty, default="demo-data", help="directory for the logs (replaced if a previous demo)"
    )
    dp.add_argument("--users", type=_integer(2, USERS_MAX), default=1_000, help=f"2..{USERS_MAX:,}")
    dp.add_argument("--symbols", type=_integer(1, len(SYMBOLS)), default=2, help=f"1..{len(SYMBOLS)}")
    dp.add_argument(
        "--orders",
        type=_integer(0, ORDERS_MAX),
        default=50_000,
        help=f"commands after setup (orders, cancels, ...): 0..{ORDERS_MAX:,}",
    )
    dp.add_argument("--seed", type=_integer(-(2**63), 2**63 - 1), default=42)
    dp.add_argument("--fsync", choices=["always", "never"], default="always", help="file log fsync policy")
    dp.add_argument("--json", action="store_true", help="print the summary as JSON")
    dp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    dp.set_defaults(run=_cmd_demo)


def _settlement_parsers(sub: Any) -> None:
    pp = sub.add_parser("project", help="project balance.events and engine.outputs into a store")
    _source_arguments(pp)
    pp.add_argument("--policy", choices=["halt", "refetch"], default="halt", help="what a sequence gap does")
    pp.add_argument("--follow", action="store_true", help="keep projecting new records as they arrive")
    pp.add_argument("--max-seconds", type=_seconds, help="with --follow: stop after this long")
    pp.add_argument(
        "--state-every",
        type=_integer(0),
        help="save the projector's fold state every N events of a stream, so a restart need not re-read "
        "the stream from its start (0: never; default: settlement.projector.STATE_EVERY_EVENTS)",
    )
    pp.set_defaults(run=_cmd_project)

    gp = sub.add_parser("gaps", help="list the sequence faults a projection recorded")
    gp.add_argument("--store", type=_store_url, required=True, help="sqlite:PATH or cql://HOST:PORT/KEYSPACE")
    gp.add_argument("--all", action="store_true", help="resolved ones too")
    gp.add_argument("--json", action="store_true", help="print them as JSON")
    gp.set_defaults(run=_cmd_gaps)

    vp = sub.add_parser("verify", help="compare a projection with a fresh replay of balance.events")
    _source_arguments(vp)
    vp.add_argument(
        "--commands",
        type=_nonempty,
        metavar="DIR|TOPIC",
        help="also check that balance.events answers every command of this log exactly once, in order: "
        f"a file-log directory (DIR/{layout.OPERATIONS} of a deployment), or with --kafka a topic "
        f"({layout.OPERATIONS}; the partition of --partition)",
    )
    vp.set_defaults(run=_cmd_verify)


def _run_parser(sub: Any) -> None:
    from ledger.app.services import BATCH_WAIT_MS_DEFAULT, OUTAGE_S_MAX_DEFAULT, SUMMARY_EVERY_S_DEFAULT
    from ledger.app.snapshots import SNAPSHOT_EVERY_EVENTS_DEFAULT

    run = sub.add_parser("run", help="run a service of the exchange (one per process, or all in one)")
    services = run.add_subparsers(dest="service", required=True)
    helps = {
        "ubscore": "UBSCore: balance.operations and every engine.outputs in, balance.events out",
        "engine": "matching engines: balance.events in, each symbol's engine.outputs out",
        "project": "the settlement projector: every stream into a store",
        "all": "ubscore, engine and project in one process (file logs)",
    }
    for name, text in helps.items():
        sp = services.add_parser(name, help=text)
        sp.add_argument("--dir", type=_nonempty, help="a file-log deployment's directory (the logs are made in it)")
        sp.add_argument("--kafka", type=_bootstrap, help="bootstrap servers of the Kafka cluster")
        sp.add_argument("--topic-prefix", default="", help="with --kafka: a prefix on every topic and writer id")
        sp.add_argument("--fsync", choices=["always", "never"], default="always", help="file log fsync policy")
        sp.add_argument(
            "--batch",
            type=_integer(1, BATCH_COMMANDS_MAX),
            default=BATCH_COMMANDS_DEFAULT,
            help=f"inputs per output batch (one append, one transaction): 1..{BATCH_COMMANDS_MAX:,}",
        )
        sp.add_argument(
            "--batch-wait-ms",
            type=_seconds,
            default=BATCH_WAIT_MS_DEFAULT,
            help="how long a batch may wait to fill once its first input is in",
        )
        sp.add_argument("--idle-exit-s", type=_seconds, default=0.0, help="exit after this long with nothing to do")
        sp.add_argument(
            "--outage-s-max",
            type=_seconds,
            default=OUTAGE_S_MAX_DEFAULT,
            help="give up after this long of failing to reach a broker or database",
        )
        sp.add_argument(
            "--log-every-s", type=_seconds, default=SUMMARY_EVERY_S_DEFAULT, help="the summary line's period (0: never)"
        )
        sp.add_argument("--metrics-port", type=_integer(1, 65535), help="serve Prometheus metrics on this port")
        sp.add_argument("--metrics-address", default="127.0.0.1", help="the metrics' address (default 127.0.0.1)")
        if name in ("ubscore", "all"):
            sp.add_argument(
                "--snapshot-dir", type=_nonempty, help="keep UBSCore snapshots here and start from the newest"
            )
            sp.add_argument(
                "--snapshot-every",
                type=_integer(1),
                default=SNAPSHOT_EVERY_EVENTS_DEFAULT,
                help=f"with --snapshot-dir: events between snapshots (default {SNAPSHOT_EVERY_EVENTS_DEFAULT:,})",
            )
        if name in ("engine", "all"):
            sp.add_argument("--symbol", action="append", help="host this symbol (repeat; default: every symbol)")
        if name in ("project", "all"):
            sp.add_argument("--store", type=_store_url, help="sqlite:PATH or cql://HOST:PORT/KEYSPACE")
            sp.add_argument("--state-every", type=_integer(0), help="save the fold state every N events")
        sp.set_defaults(run=_cmd_run)
    _gateway_parser(services)


def _rate(text: str) -> float:
    from ledger.app.load import LOAD_RATE_MAX

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of commands per second") from None
    if not math.isfinite(value) or not 0 < value <= LOAD_RATE_MAX:
        raise argparse.ArgumentTypeError(f"{text!r}: commands/s must be more than 0 and at most {LOAD_RATE_MAX:,}")
    return value


def _load_parser(sub: Any) -> None:
    from ledger.app.demo import SYMBOLS
    from ledger.app.load import LOAD_COMMANDS_MAX, LOAD_USERS_MAX
    from ledger.protocol.limits import REQUEST_ID_MAX

    lp = sub.add_parser("load", help="produce a planned workload onto balance.operations (for the services)")
    lp.add_argument("--kafka", type=_bootstrap, help="bootstrap servers of the Kafka cluster")
    lp.add_argument("--topic-prefix", default="", help="with --kafka: the prefix on the deployment's topics")
    lp.add_argument("--dir", type=_nonempty, help="a file-log deployment's directory (writes DIR/balance.operations)")
    lp.add_argument(
        "--orders",
        type=_integer(0, LOAD_COMMANDS_MAX),
        required=True,
        help=f"commands after the listings and deposits (orders, cancels, ...): 0..{LOAD_COMMANDS_MAX:,}",
    )
    lp.add_argument("--users", type=_integer(1, LOAD_USERS_MAX), default=200, help=f"1..{LOAD_USERS_MAX:,}")
    lp.add_argument("--symbols", type=_integer(1, len(SYMBOLS)), default=3, help=f"1..{len(SYMBOLS)}")
    lp.add_argument("--seed", type=_integer(-(2**63), 2**63 - 1), default=1)
    lp.add_argument("--rate", type=_rate, help="commands per second (default: as fast as the log takes them)")
    lp.add_argument(
        "--request-id-base",
        type=_integer(0, REQUEST_ID_MAX),
        help="request ids are BASE+1 onwards (default: the end offset of balance.operations, so a load onto a "
        "deployment that only ledger load wrote to uses new ids)",
    )
    lp.add_argument("--fsync", choices=["always", "never"], help="with --dir: the file log's fsync policy (always)")
    lp.add_argument("--json", action="store_true", help="print the summary as JSON")
    lp.set_defaults(run=_cmd_load)


# -- ledger keys: the gateway's API keys (ledger.app.gateway.keys) -----------------------

GATEWAY_EXTRA_HINT = "install the gateway extra: pip install -e '.[gateway]'"


def _keys_module() -> Any:
    """``ledger.app.gateway.keys``, or a one-line refusal when ``cryptography`` is missing."""
    try:
        from ledger.app.gateway import keys
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] == "cryptography":
            raise CliError(f"API keys need the cryptography package: {GATEWAY_EXTRA_HINT}") from None
        raise
    return keys


def _key_store(path: str, create: bool) -> Any:
    """The key store in the database ``path``; without ``create`` it must exist and hold
    keys, and opening it creates nothing."""
    keys = _keys_module()
    file = Path(path)
    _check_sqlite_file(file, f"--db {file}")
    if not create and (not file.exists() or file.stat().st_size == 0):
        raise CliError(f"--db {file}: no such database (no key was ever added there)")
    return keys.KeyStore(file, create=create)


@contextlib.contextmanager
def _key_db_errors(path: str) -> Iterator[None]:
    """An SQLite failure (a read-only file, a lock held too long) as a refusal naming the file."""
    try:
        yield
    except sqlite3.Error as error:
        raise CliError(f"--db {path}: {error}") from None


def _user_and_role(args: argparse.Namespace) -> tuple[int, str]:
    keys = _keys_module()
    if args.operator:
        if args.user not in (None, keys.OPERATOR_USER):
            raise CliError(f"--user: an operator key carries user {keys.OPERATOR_USER}; leave --user out")
        return keys.OPERATOR_USER, "operator"
    if args.user is None:
        raise CliError("--user is required for a trader key (or give --operator for an operator key)")
    return args.user, "trader"


def _when(ms: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _print_key(key: Any, private_hex: str | None = None) -> None:
    print(f"key id:       {key.key_id}")
    print(f"user:         {key.user}")
    print(f"role:         {key.role}")
    print(f"label:        {key.label}")
    print(f"public key:   {key.public_key}")
    print(f"created:      {_when(key.created_ms)}")
    if key.revoked_ms is not None:
        print(f"revoked:      {_when(key.revoked_ms)}")
    if private_hex is not None:
        print(f"private key:  {private_hex}")


def _cmd_keys_new(args: argparse.Namespace) -> int:
    """``keys create`` and ``keys add``: everything is checked before the database is
    opened (and so perhaps created)."""
    keys = _keys_module()
    user, role = _user_and_role(args)
    public_hex = getattr(args, "public_key", None)
    keys.check_new_key(user, role, args.label, public_hex)
    with _key_db_errors(args.db), _key_store(args.db, create=True) as store:
        if public_hex is None:
            key, private_hex = store.create(user, role, args.label)
        else:
            key, private_hex = store.add(user, role, public_hex, args.label), None
    if args.json:
        record = msgspec.structs.asdict(key)
        if private_hex is not None:
            record["private_key"] = private_hex
        sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
    else:
        _print_key(key, private_hex)
    sys.stdout.flush()
    if private_hex is not None:
        print(
            "ledger keys create: the private key is shown once, here, and stored nowhere: keep it secret "
            "(whoever holds it can sign requests as this key)",
            file=sys.stderr,
        )
    return EXIT_OK


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    with _key_db_errors(args.db), _key_store(args.db, create=False) as store:
        key = store.revoke(args.key_id)
    if args.json:
        sys.stdout.write(msgspec.json.encode(key).decode() + "\n")
    else:
        print(f"revoked {key.key_id} ({key.role}, user {key.user}) at {_when(key.revoked_ms)}")
    return EXIT_OK


def _cmd_keys_list(args: argparse.Namespace) -> int:
    with _key_db_errors(args.db), _key_store(args.db, create=False) as store:
        found = store.list()
    if args.json:
        sys.stdout.write(msgspec.json.encode(found).decode() + "\n")
        return EXIT_OK
    if not found:
        print("no keys")
    for key in found:
        state = "live" if key.revoked_ms is None else f"revoked {_when(key.revoked_ms)}"
        created = _when(key.created_ms)
        print(f"{key.key_id}  {key.role:<8} user {key.user:<20} created {created}  {state:<29} {key.label}")
    return EXIT_OK


def _keys_parser(sub: Any) -> None:
    from ledger.protocol.limits import USER_ID_MAX

    kp = sub.add_parser("keys", help="create, add, revoke and list the HTTP gateway's API keys")
    actions = kp.add_subparsers(dest="keys_action", required=True)
    db_help = "the gateway's SQLite database (its api_keys table)"
    for name, text in (
        ("create", "generate a key pair, register its public key, print the private key once"),
        ("add", "register a public key the client generated (the recommended way: no secret leaves the client)"),
    ):
        np = actions.add_parser(name, help=text)
        np.add_argument("--db", type=_nonempty, required=True, metavar="PATH", help=db_help)
        np.add_argument(
            "--user", type=_integer(0, USER_ID_MAX), metavar="N", help=f"the trader's user id (1..{USER_ID_MAX:,})"
        )
        np.add_argument("--operator", action="store_true", help="an operator key (funds, listings, reads any account)")
        np.add_argument("--label", default="", metavar="TEXT", help="a name for the key, shown in listings")
        if name == "add":
            np.add_argument("--public-key", required=True, metavar="HEX", help="the Ed25519 public key, 64 hex digits")
        np.add_argument("--json", action="store_true", help="print the key as JSON")
        np.set_defaults(run=_cmd_keys_new)
    rp = actions.add_parser("revoke", help="revoke a key: the gateway refuses it within a second")
    rp.add_argument("--db", type=_nonempty, required=True, metavar="PATH", help=db_help)
    rp.add_argument("key_id", metavar="KEY_ID", type=_nonempty)
    rp.add_argument("--json", action="store_true", help="print the revoked key as JSON")
    rp.set_defaults(run=_cmd_keys_revoke)
    lp = actions.add_parser("list", help="list every key, live and revoked (public keys only)")
    lp.add_argument("--db", type=_nonempty, required=True, metavar="PATH", help=db_help)
    lp.add_argument("--json", action="store_true", help="print them as JSON")
    lp.set_defaults(run=_cmd_keys_list)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = _Parser(prog="ledger", description="Event-sourced exchange ledger tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    _replay_parser(sub)
    _demo_parser(sub)
    _settlement_parsers(sub)
    _run_parser(sub)
    _load_parser(sub)
    _keys_parser(sub)
    return parser


class _InputNotices(logging.Filter):
    """What the libraries log about the input (``ledger.logs``: a torn tail ignored, ...)
    is always shown; the rest (the projector's faults and halts, which the command reports
    itself) only while following, as progress."""

    def __init__(self, everything: bool) -> None:
        super().__init__()
        self.everything = everything

    def filter(self, record: logging.LogRecord) -> bool:
        return self.everything or record.name.startswith("ledger.logs")


class _OneLineFormatter(logging.Formatter):
    """Library warnings (a torn tail ignored, ...) as ``ledger COMMAND: warning: ...``."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # An unexpected failure: its type, text and innermost frame, still one line.
            error, frames = record.exc_info[1], traceback.extract_tb(record.exc_info[2])
            where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
            message = f"{message}: {type(error).__name__}: {error}{where}"
        return f"ledger {self.command}: {record.levelname.lower()}: {_one_line(message)}"


@contextlib.contextmanager
def _logging_to_stderr(command: str, everything: bool, level: int | None = None) -> Iterator[None]:
    root = logging.getLogger()
    if root.handlers:  # the embedding program has its own
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(command))
    handler.setLevel(level or logging.WARNING)
    level_before = root.level
    if level is not None and root.level > level:
        root.setLevel(level)
    handler.addFilter(_InputNotices(everything))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level_before)


def _describe(error: BaseException) -> tuple[str, int]:
    """One line saying what went wrong, and the exit status it earns."""
    from ledger.logs.base import LogError
    from ledger.ubscore import LedgerError
    from settlement.store import StoreError

    if isinstance(error, CliError):
        return str(error), error.code
    if isinstance(error, LedgerError):  # a log that fails its own audit: a check failed
        return str(error), EXIT_CHECK_FAILED
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename is not None else ""
        return f"{where}{error.strerror}", EXIT_USAGE
    if isinstance(error, (LogError, StoreError, ValueError, sqlite3.Error, msgspec.MsgspecError)):
        return str(error) or type(error).__name__, EXIT_USAGE
    return f"unexpected {type(error).__name__}: {error}", EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ledger`` console script."""
    args = build_parser().parse_args(argv)
    action = {"run": "service", "keys": "keys_action"}.get(args.command)
    command = args.command if action is None else f"{args.command} {getattr(args, action)}"
    following = bool(getattr(args, "follow", False)) or args.command == "run"
    with _logging_to_stderr(command, everything=following, level=logging.INFO if args.command == "run" else None):
        try:
            with relaxed_gc():
                return int(args.run(args))
        except KeyboardInterrupt:
            print(f"ledger {command}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as error:  # noqa: BLE001 - the last resort: one line, never a traceback
            message, code = _describe(error)
            print(f"ledger {command}: {_one_line(message)}", file=sys.stderr)
            return code


if __name__ == "__main__":
    sys.exit(main())
