"""The ``ledger`` command line.

    ledger demo [--dir DIR] [--users N] [--symbols N] [--orders N] [--seed N] [--json]
    ledger replay --log DIR [--json] [--until SEQ] [--snapshot FILE] [--save-snapshot FILE]
    ledger replay --kafka HOST:PORT --topic NAME [--partition N] [--json] ...
    ledger project (--log DIR | --kafka HOST:PORT [--engine-topic SYMBOL=TOPIC ...]) --store URL
                   (or --source DIR | --source kafka://HOST:PORT)
                   [--policy halt|refetch] [--follow [--max-seconds S]] [--json]
    ledger gaps --store URL [--all] [--json]
    ledger verify (--log DIR | --kafka HOST:PORT) --store URL [--json]
    ledger run ubscore (--commands DIR --events DIR | --kafka HOST:PORT) [--batch N] [--follow]

Stores: ``sqlite:PATH`` (embedded) or ``cql://HOST:PORT/KEYSPACE`` (ScyllaDB, Cassandra).

Exit status: 0 when the command completed and every check passed; 1 when a check failed
(conservation, a stream halted on a sequence fault, open gaps, a difference found by
verify; the reason is printed); 2 for bad usage, an unreadable log or store.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ledger.app.stage import BATCH_COMMANDS_DEFAULT
from ledger.gctune import relaxed_gc
from ledger.logs import layout

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


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


def _cmd_replay(args: argparse.Namespace) -> int:
    from ledger.logs.base import Log, LogError
    from ledger.logs.file import FileLog
    from ledger.rebuild import replay_summary
    from ledger.ubscore import LedgerError

    if (args.log is None) == (args.kafka is None):
        print("ledger replay: give --log DIR, or --kafka HOST:PORT --topic NAME", file=sys.stderr)
        return EXIT_USAGE
    snap = Path(args.snapshot).read_bytes() if args.snapshot else None
    try:
        if args.kafka:
            from ledger.logs.kafka import KafkaLog

            log: Log = KafkaLog(args.kafka, args.topic, args.partition)
        else:
            file_log = FileLog(args.log, readonly=True)
            if file_log.recovered:
                print(f"warning: {file_log.recovered}", file=sys.stderr)
            log = file_log
        try:
            summary, core = replay_summary(log, snapshot=snap, until=args.until, progress=args.progress)
            if args.save_snapshot:
                Path(args.save_snapshot).write_bytes(core.snapshot())
        finally:
            log.close()
    except (LogError, LedgerError, ValueError) as error:
        print(f"ledger replay: {error}", file=sys.stderr)
        return EXIT_CHECK_FAILED if isinstance(error, LedgerError) else EXIT_USAGE
    _print_summary(summary, args.json)
    return EXIT_CHECK_FAILED if summary.conservation_problems else EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from ledger.app.demo import run_demo
    from ledger.logs.file import FsyncPolicy

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
        print(f"ledger demo: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
    else:
        print(f"directory:    {summary.directory}  (seed {summary.seed}, {summary.users:,} users)")
        print(f"symbols:      {', '.join(summary.symbols)}")
        print(
            f"commands:     {summary.commands:,} in {summary.seconds:.2f} s "
            f"({summary.commands_per_second:,.0f} commands/s, end to end, logs written)"
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
                "checks:       ok (replayed hashes equal live ones, engines re-run byte for byte, "
                "conservation holds for every asset)"
            )
        else:
            print("CHECKS FAILED:")
            for problem in summary.problems:
                print(f"  {problem}")
    return EXIT_OK if summary.checks_ok else EXIT_CHECK_FAILED


def _log_or_kafka(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(file-log directory, Kafka bootstrap): exactly one is set."""
    log, kafka = args.log, args.kafka
    if args.source is not None:
        if log is not None or kafka is not None:
            raise ValueError("give --source, or --log / --kafka, not both")
        if args.source.startswith("kafka://"):
            kafka = args.source[len("kafka://") :]
        else:
            log = args.source.removeprefix("file:")
    if (log is None) == (kafka is None):
        raise ValueError("give --log DIR, or --kafka HOST:PORT (or --source DIR|kafka://HOST:PORT)")
    return log, kafka


def _sources(args: argparse.Namespace) -> list[Any]:
    from settlement.projector import file_sources, kafka_sources

    log, kafka = _log_or_kafka(args)
    if log is not None:
        return file_sources(log)
    topics: dict[str, str] = {}
    for item in args.engine_topic or []:
        symbol, sep, topic = item.partition("=")
        if not sep or not symbol or not topic:
            raise ValueError(f"--engine-topic {item!r}: use SYMBOL=TOPIC")
        topics[symbol] = topic
    assert kafka is not None
    return kafka_sources(kafka, args.topic, topics, args.partition)


def _open_sources_and_store(args: argparse.Namespace, command: str) -> tuple[list[Any], Any] | None:
    """The command's sources and store, or None (after saying why on stderr)."""
    from ledger.logs.base import LogError
    from settlement import open_store
    from settlement.store import StoreError

    sources: list[Any] = []
    try:
        sources = _sources(args)
        return sources, open_store(args.store)
    except (ValueError, LogError, StoreError) as error:
        for source in sources:
            source.log.close()
        print(f"ledger {command}: {error}", file=sys.stderr)
        return None


def _cmd_project(args: argparse.Namespace) -> int:
    from ledger.logs.base import LogError
    from settlement.projector import Projector
    from settlement.store import StoreError

    opened = _open_sources_and_store(args, "project")
    if opened is None:
        return EXIT_USAGE
    sources, store = opened
    projector = None
    try:
        options: dict[str, Any] = {} if args.state_every is None else {"state_every_events": args.state_every}
        directory, _kafka = _log_or_kafka(args)
        if args.follow and directory is not None:
            from settlement.projector import file_sources

            # Symbols listed while following get their engine.outputs projected too.
            options["discover"] = lambda known: file_sources(directory, known)
        projector = Projector(store, sources, policy=args.policy, **options)
        report = projector.run(follow=args.follow, max_seconds=args.max_seconds)
    except (LogError, StoreError) as error:
        print(f"ledger project: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        # Streams found while following are the projector's; close those too.
        for source in [s.source for s in projector.streams] if projector is not None else sources:
            source.log.close()
        # run() writes everything before it returns; a store failure was reported above.
        with contextlib.suppress(StoreError):
            store.close()
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
    for r in report.streams:
        if r.halted and r.fault is not None:
            print(f"ledger project: stream {r.stream} halted at seq {r.applied_seq}: {r.fault.detail}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def _cmd_gaps(args: argparse.Namespace) -> int:
    from settlement import open_store
    from settlement.store import StoreError

    try:
        store = open_store(args.store)
        try:
            faults = store.faults(open_only=not args.all)
        finally:
            store.close()
    except (ValueError, StoreError) as error:
        print(f"ledger gaps: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        sys.stdout.write(msgspec.json.encode(faults).decode() + "\n")
    else:
        if not faults:
            print("no open gaps" if not args.all else "no gaps recorded")
        for f in faults:
            span = f"missing {f.expected}..{f.received - 1}" if f.kind == "gap" else f"at seq {f.expected}"
            state = "resolved" if f.resolved else "OPEN"
            print(f"{f.stream:<28} {f.kind:<9} {span:<28} {state:<8} {f.detail}")
    return EXIT_CHECK_FAILED if any(not f.resolved for f in faults) else EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from ledger.logs.base import LogError
    from ledger.ubscore import LedgerError
    from settlement.store import StoreError
    from settlement.verify import verify_store

    opened = _open_sources_and_store(args, "verify")
    if opened is None:
        return EXIT_USAGE
    sources, store = opened
    try:
        balance = sources[0]
        report = verify_store(store, balance.log, balance.stream)
    except LedgerError as error:  # the log itself fails its audit (a gap, a bad event)
        print(f"ledger verify: the log cannot be replayed: {error}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except (LogError, StoreError) as error:
        print(f"ledger verify: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        for source in sources:
            source.log.close()
        with contextlib.suppress(StoreError):
            store.close()
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print(f"store:        {store.name}")
        print(f"log:          seq 1..{report.final_seq}; store checkpoint at seq {report.checkpoint_seq}")
        print(f"balances:     {report.balances_checked:,} (user, asset) pairs compared with a fresh replay")
        print(f"trades:       {report.trades_in_store:,} in the store, {report.trades_in_log:,} in the log")
        if report.ok:
            print("verify:       ok (no difference)")
        else:
            print(f"DIFFERENCES ({report.differences_total:,}):")
            for line in report.differences:
                print(f"  {line}")
            if report.differences_total > len(report.differences):
                print(f"  ... and {report.differences_total - len(report.differences):,} more")
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED


def _cmd_run_ubscore(args: argparse.Namespace) -> int:
    from ledger.app.stage import UBSCoreStage
    from ledger.logs.base import Log

    if not args.kafka and not (args.commands and args.events):
        print("ledger run ubscore: give --commands DIR and --events DIR, or --kafka HOST:PORT", file=sys.stderr)
        return EXIT_USAGE
    commands: Log
    events: Log
    if args.kafka:
        from ledger.logs.kafka import KafkaLog, ensure_topic

        ensure_topic(args.kafka, args.events_topic)
        commands = KafkaLog(args.kafka, args.commands_topic)
        events = KafkaLog(args.kafka, args.events_topic, transactional_id=f"ubscore-{args.events_topic}-0")
    else:
        from ledger.logs.file import FileLog, FsyncPolicy

        commands = FileLog(args.commands, readonly=True)
        events = FileLog(args.events, fsync=FsyncPolicy(args.fsync))
    try:
        stage = UBSCoreStage(commands, events)
        handled = stage.run(args.batch, follow=args.follow, idle_s_max=args.idle_exit_s)
    finally:
        commands.close()
        events.close()
    print(f"handled {handled} commands; events end at seq {stage.core.state.seq}; hash {stage.core.state_hash()}")
    return EXIT_OK


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="DIR (file logs) or kafka://HOST:PORT: the same as --log or --kafka")
    parser.add_argument("--log", help="a file-log directory as `ledger demo` writes it")
    parser.add_argument("--kafka", help="bootstrap servers of a Kafka cluster")
    parser.add_argument("--topic", default=layout.EVENTS, help="with --kafka: the balance.events topic")
    parser.add_argument("--partition", type=int, default=0, help="with --kafka: the partition (one UBSCore shard)")
    parser.add_argument(
        "--engine-topic", action="append", metavar="SYMBOL=TOPIC", help="with --kafka: a symbol's engine.outputs topic"
    )
    parser.add_argument("--store", required=True, help="sqlite:PATH or cql://HOST:PORT/KEYSPACE")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="ledger", description="Event-sourced exchange ledger tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="rebuild UBSCore state from balance.events and summarize it")
    rp.add_argument("--log", help="directory of a file log holding balance.events")
    rp.add_argument("--kafka", help="bootstrap servers of a Kafka cluster holding balance.events")
    rp.add_argument("--topic", default=layout.EVENTS, help="with --kafka: the topic")
    rp.add_argument("--partition", type=int, default=0, help="with --kafka: the partition (one UBSCore shard)")
    rp.add_argument("--until", type=int, help="stop after the event with this seq")
    rp.add_argument("--snapshot", help="start from this verified snapshot file")
    rp.add_argument("--save-snapshot", help="write a snapshot of the final state to this file")
    rp.add_argument("--json", action="store_true", help="print the summary as JSON")
    rp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    rp.set_defaults(run=_cmd_replay)

    dp = sub.add_parser("demo", help="run a deterministic exchange workload on file logs, then verify it")
    dp.add_argument("--dir", default="demo-data", help="directory for the logs (replaced if a previous demo)")
    dp.add_argument("--users", type=int, default=1_000)
    dp.add_argument("--symbols", type=int, default=2, help="1..4")
    dp.add_argument("--orders", type=int, default=50_000, help="commands after setup (orders, cancels, ...)")
    dp.add_argument("--seed", type=int, default=42)
    dp.add_argument("--fsync", choices=["always", "never"], default="always", help="file log fsync policy")
    dp.add_argument("--json", action="store_true", help="print the summary as JSON")
    dp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    dp.set_defaults(run=_cmd_demo)

    pp = sub.add_parser("project", help="project balance.events and engine.outputs into a store")
    _source_arguments(pp)
    pp.add_argument("--policy", choices=["halt", "refetch"], default="halt", help="what a sequence gap does")
    pp.add_argument("--follow", action="store_true", help="keep projecting new records as they arrive")
    pp.add_argument("--max-seconds", type=float, help="with --follow: stop after this long")
    pp.add_argument(
        "--state-every",
        type=int,
        help="save the projector's fold state every N events of a stream, so a restart need not re-read "
        "the stream from its start (0: never; default: settlement.projector.STATE_EVERY_EVENTS)",
    )
    pp.set_defaults(run=_cmd_project)

    gp = sub.add_parser("gaps", help="list the sequence faults a projection recorded")
    gp.add_argument("--store", required=True, help="sqlite:PATH or cql://HOST:PORT/KEYSPACE")
    gp.add_argument("--all", action="store_true", help="resolved ones too")
    gp.add_argument("--json", action="store_true", help="print them as JSON")
    gp.set_defaults(run=_cmd_gaps)

    vp = sub.add_parser("verify", help="compare a projection with a fresh replay of balance.events")
    _source_arguments(vp)
    vp.set_defaults(run=_cmd_verify)

    run = sub.add_parser("run", help="run one service of the exchange")
    services = run.add_subparsers(dest="service", required=True)
    up = services.add_parser("ubscore", help="UBSCore as a stage: balance.operations in, balance.events out")
    up.add_argument("--commands", help="file log of balance.operations")
    up.add_argument("--events", help="file log of balance.events")
    up.add_argument("--fsync", choices=["always", "never"], default="always", help="file log fsync policy")
    up.add_argument("--kafka", help="bootstrap servers; use topics instead of file logs")
    up.add_argument("--commands-topic", default=layout.OPERATIONS)
    up.add_argument("--events-topic", default=layout.EVENTS)
    up.add_argument("--batch", type=int, default=BATCH_COMMANDS_DEFAULT, help="commands per output batch")
    up.add_argument("--follow", action="store_true", help="keep polling for new commands")
    up.add_argument("--idle-exit-s", type=float, default=0.0, help="with --follow: exit after this idle time")
    up.set_defaults(run=_cmd_run_ubscore)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ledger`` console script."""
    args = build_parser().parse_args(argv)
    with relaxed_gc():
        return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
