"""Every failure of the ``ledger`` command line is one line on stderr and a documented exit
code (2: usage or unreadable or wrong input, 1: a failed check), never a traceback, and a
failing command creates or changes nothing.

One scratch directory holds everything the table reads: a small demo deployment, damaged
and empty logs, projections, snapshots, files that are not what they are named as. Each
case compares a listing (with sizes, modes and mtimes of files) of it before and after.
Argument errors run in-process (``main``); everything that opens a file runs as a real
subprocess, and the permission cases run without the capabilities that let root read any
file (so a file with mode 000 is unreadable, as it is to everyone else).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.app.cli import EXIT_CHECK_FAILED, EXIT_USAGE, main
from ledger.app.demo import ORDERS_MAX, USERS_MAX, run_demo
from ledger.app.gateway.keys import LABEL_CHARS_MAX, KeyStore
from ledger.app.load import LOAD_COMMANDS_MAX, LOAD_USERS_MAX
from ledger.client.signing import public_key_of
from ledger.logs import layout
from ledger.logs.file import FileLog, FsyncPolicy
from ledger.protocol.limits import USER_ID_MAX
from ledger.rebuild import replay

ROOT = Path(__file__).resolve().parent.parent
SEGMENT = "00000000000000000000.seg"
# Root reads any file whatever its mode; dropping these two capabilities (from the
# inheritable and bounding sets, so the command cannot get them back) makes it obey file
# permissions. An unprivileged user (setpriv --reuid) cannot run this interpreter: it
# lives under /root, which only root may enter.
DROP_READ_ANYTHING = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]
IN_PROCESS, SUBPROCESS, UNPRIVILEGED = "in-process", "subprocess", "unprivileged"
# The scratch key store holds one key, revoked, under this id (ids are random otherwise).
REVOKED_KEY_ID = "k" + "0" * 20
REVOKED_PUBLIC_KEY = public_key_of("11" * 32)


def _corrupt(directory: Path) -> None:
    """Flip one byte of ``directory``'s segment, from its middle on, where the log reports
    corruption on open or read (not a torn tail, which a reader may rightly ignore)."""
    from ledger.logs.base import CorruptRecordError

    path = directory / SEGMENT
    original = path.read_bytes()
    for at in range(len(original) // 2, len(original)):
        data = bytearray(original)
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            with FileLog(directory, readonly=True) as log:
                log.read(0, log.end_offset())
        except CorruptRecordError:
            return
    raise AssertionError(f"no byte of {path} reads as corruption")


def _records(directory: Path) -> list[bytes]:
    with FileLog(directory, readonly=True) as log:
        return log.read(0, log.end_offset()).values


def _build_scratch(scratch: Path, elsewhere: Path) -> None:
    never = FsyncPolicy.NEVER
    demo = scratch / "demo"
    run_demo(demo, users=20, orders=500, seed=7, progress=False, fsync=never)
    events = layout.events_dir(demo)
    with FileLog(events, readonly=True) as log:
        (scratch / "s100.snap").write_bytes(replay(log, until=100).snapshot())
    # A snapshot of the same workload run longer: its seq is past the demo log's end.
    run_demo(elsewhere / "long", users=20, orders=1_000, seed=7, progress=False, fsync=never)
    with FileLog(layout.events_dir(elsewhere / "long"), readonly=True) as log:
        (scratch / "beyond.snap").write_bytes(replay(log).snapshot())

    (scratch / "empty").mkdir()
    (scratch / "afile").write_text("not a log, not a database, not a snapshot\n")
    (scratch / "empty.db").write_bytes(b"")
    (scratch / "notdemo").mkdir()
    (scratch / "notdemo" / "keep-me").write_text("somebody's data\n")
    (scratch / "segdir" / SEGMENT).mkdir(parents=True)
    (scratch / "badheader").mkdir()
    (scratch / "badheader" / SEGMENT).write_bytes(b"this is not a log segment at all")
    (scratch / "badname").mkdir()
    (scratch / "badname" / "abc.seg").write_bytes(b"")
    for name in ("headeronly", "ev-empty-log"):
        FileLog(scratch / name, fsync=never).close()
    other = sqlite3.connect(scratch / "other.db")
    other.execute("CREATE TABLE t (x INTEGER)")
    other.commit()
    other.close()

    # A deployment whose balance.events misses one event (a gap), and its projection.
    records = _records(events)
    gapped = scratch / "gapped"
    with FileLog(layout.events_dir(gapped), fsync=never) as log:
        log.append(records[:300] + records[301:])
    shutil.copytree(layout.outputs_dir(demo), layout.outputs_dir(gapped))
    from settlement import Projector, file_sources
    from settlement.sqlite import SQLiteStore

    for db, root in (("halted.db", gapped), ("proj.db", demo)):
        store = SQLiteStore(scratch / db)
        sources = file_sources(root)
        Projector(store, sources).run()
        for source in sources:
            source.log.close()
        store.close()

    # Damage: a flipped payload byte with intact records after it is corruption.
    shutil.copytree(demo, scratch / "corrupt-deploy")
    _corrupt(layout.events_dir(scratch / "corrupt-deploy"))
    shutil.copytree(layout.operations_dir(demo), scratch / "corrupt-ops")
    _corrupt(scratch / "corrupt-ops")
    shutil.copytree(scratch / "corrupt-ops", layout.operations_dir(scratch / "corrupt-ops-deploy"))
    with FileLog(scratch / "undecodable-ops", fsync=never) as log:
        log.append([b"\xc1 is never valid msgpack"])
    # Command logs the demo's events do not answer exactly: one command more, one less.
    operations = _records(layout.operations_dir(demo))
    with FileLog(scratch / "ops-one-more", fsync=never) as log:
        log.append([*operations, operations[-1]])
    with FileLog(scratch / "ops-one-less", fsync=never) as log:
        log.append(operations[:-1])

    # Deployments for `ledger run`: balance.events a file, or a log with a bad header.
    (scratch / "events-file-deploy").mkdir()
    (scratch / "events-file-deploy" / layout.EVENTS).write_text("not a log\n")
    (scratch / "ops-file-deploy").mkdir()
    (scratch / "ops-file-deploy" / layout.OPERATIONS).write_text("not a log\n")
    shutil.copytree(scratch / "badheader", layout.events_dir(scratch / "badheader-deploy"))

    # A gateway database holding one revoked key.
    with KeyStore(scratch / "keys.db") as keys:
        keys.revoke(keys.add(5, "trader", REVOKED_PUBLIC_KEY, "revoked").key_id)
    with contextlib.closing(sqlite3.connect(scratch / "keys.db")) as db, db:
        db.execute("UPDATE api_keys SET key_id = ?", (REVOKED_KEY_ID,))
    shutil.copytree(demo, scratch / "locked-deploy")

    # Unreadable to anyone but a process that may read anything.
    shutil.copytree(events, scratch / "unreadable-seg")
    (scratch / "unreadable-seg" / SEGMENT).chmod(0)
    shutil.copytree(events, scratch / "unreadable-dir")
    shutil.copytree(demo, scratch / "unreadable-deploy")
    (layout.events_dir(scratch / "unreadable-deploy") / SEGMENT).chmod(0)
    shutil.copy(scratch / "proj.db", scratch / "unreadable.db")
    (scratch / "unreadable.db").chmod(0)
    (scratch / "ro").mkdir()
    (scratch / "ro").chmod(0o555)
    (scratch / "unreadable-dir").chmod(0)


def _listing(scratch: Path) -> dict[str, Any]:
    """Every path under ``scratch``: files with size, mode and mtime; directories by mode
    (a directory's mtime moves when SQLite makes and removes its -wal beside a database
    it only reads, which leaves the listing itself unchanged)."""
    found: dict[str, Any] = {}
    for directory, dirs, files in os.walk(scratch):
        for name in dirs:
            path = Path(directory, name)
            found[str(path.relative_to(scratch))] = ("dir", stat.S_IMODE(path.stat().st_mode))
        for name in files:
            info = Path(directory, name).stat()
            found[str(Path(directory, name).relative_to(scratch))] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return found


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    scratch = tmp_path_factory.mktemp("cli-errors")
    _build_scratch(scratch, tmp_path_factory.mktemp("cli-errors-elsewhere"))
    # A writer holds this log open for the whole module: a second writer is refused.
    held = FileLog(scratch / "locked-events", fsync=FsyncPolicy.NEVER)
    held_deployment = FileLog(layout.events_dir(scratch / "locked-deploy"), fsync=FsyncPolicy.NEVER)
    try:
        yield scratch
    finally:
        held.close()
        held_deployment.close()
        for path in (scratch / "unreadable-dir", scratch / "ro"):
            path.chmod(0o755)


S = "{S}"
D = "{S}/demo"
E = "{S}/demo/balance.events"
OPS = "{S}/demo/balance.operations"
NEW_DB = "sqlite:{S}/new.db"
PROJ = "sqlite:{S}/proj.db"
CRED_STORE = "cql://admin:S3cret@127.0.0.1:9042/ks"
CRED_KAFKA = "admin:S3cret@127.0.0.1:9092"
KEYS = "{S}/keys.db"
NEW_KEYS = "{S}/new-keys.db"

# (id, mode, exit code, argv)
CASES: list[tuple[str, str, int, list[str]]] = [
    # -- usage: argparse, one line, before anything is opened
    ("no-command", IN_PROCESS, 2, []),
    ("unknown-command", IN_PROCESS, 2, ["bogus"]),
    ("unknown-option", IN_PROCESS, 2, ["replay", "--bogus"]),
    ("unknown-option-echoes-no-credentials", IN_PROCESS, 2, ["replay", "--bogus", CRED_STORE]),
    ("until-negative", IN_PROCESS, 2, ["replay", "--log", E, "--until", "-5"]),
    ("until-zero", IN_PROCESS, 2, ["replay", "--log", E, "--until", "0"]),
    ("until-not-a-number", IN_PROCESS, 2, ["replay", "--log", E, "--until", "abc"]),
    ("until-fraction", IN_PROCESS, 2, ["replay", "--log", E, "--until", "1.5"]),
    ("until-missing-value", IN_PROCESS, 2, ["replay", "--log", E, "--until"]),
    ("partition-negative", IN_PROCESS, 2, ["replay", "--log", E, "--partition", "-1"]),
    ("replay-log-empty-string", IN_PROCESS, 2, ["replay", "--log", ""]),
    ("snapshot-empty-string", IN_PROCESS, 2, ["replay", "--log", E, "--snapshot", ""]),
    ("save-snapshot-empty-string", IN_PROCESS, 2, ["replay", "--log", E, "--save-snapshot", ""]),
    ("progress-takes-no-value", IN_PROCESS, 2, ["replay", "--log", E, "--progress", "x"]),
    ("replay-kafka-credentials", IN_PROCESS, 2, ["replay", "--kafka", CRED_KAFKA]),
    ("replay-kafka-user-only", IN_PROCESS, 2, ["replay", "--kafka", "admin@127.0.0.1:9092"]),
    ("replay-kafka-empty", IN_PROCESS, 2, ["replay", "--kafka", ""]),
    ("replay-kafka-empty-server", IN_PROCESS, 2, ["replay", "--kafka", "127.0.0.1:9092,,127.0.0.1:9093"]),
    ("demo-users-1", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--users", "1"]),
    ("demo-users-0", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--users", "0"]),
    ("demo-users-negative", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--users", "-3"]),
    ("demo-users-10**22", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--users", str(10**22)]),
    ("demo-users-over-max", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--users", str(USERS_MAX + 1)]),
    ("demo-users-expression", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--users", "10**22"]),
    ("demo-orders-negative", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--orders", "-1"]),
    ("demo-orders-over-max", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--orders", str(ORDERS_MAX + 1)]),
    ("demo-orders-float", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--orders", "1e3"]),
    ("demo-symbols-0", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--symbols", "0"]),
    ("demo-symbols-5", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--symbols", "5"]),
    ("demo-seed-not-a-number", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--seed", "x"]),
    ("demo-seed-over-64-bits", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--seed", str(2**64)]),
    ("demo-fsync-choice", IN_PROCESS, 2, ["demo", "--dir", "{S}/d", "--fsync", "sometimes"]),
    ("demo-dir-empty-string", IN_PROCESS, 2, ["demo", "--dir", ""]),
    ("project-no-store", IN_PROCESS, 2, ["project", "--log", D]),
    ("state-every-negative", IN_PROCESS, 2, ["project", "--log", D, "--store", NEW_DB, "--state-every", "-1"]),
    ("state-every-not-a-number", IN_PROCESS, 2, ["project", "--log", D, "--store", NEW_DB, "--state-every", "x"]),
    (
        "max-seconds-negative",
        IN_PROCESS,
        2,
        ["project", "--log", D, "--store", NEW_DB, "--follow", "--max-seconds", "-1"],
    ),
    ("max-seconds-nan", IN_PROCESS, 2, ["project", "--log", D, "--store", NEW_DB, "--follow", "--max-seconds", "nan"]),
    ("max-seconds-inf", IN_PROCESS, 2, ["project", "--log", D, "--store", NEW_DB, "--follow", "--max-seconds", "inf"]),
    ("policy-choice", IN_PROCESS, 2, ["project", "--log", D, "--store", NEW_DB, "--policy", "ignore"]),
    ("project-store-credentials", IN_PROCESS, 2, ["project", "--log", D, "--store", CRED_STORE]),
    ("project-store-user-only", IN_PROCESS, 2, ["project", "--log", D, "--store", "cql://admin@127.0.0.1/ks"]),
    ("project-kafka-credentials", IN_PROCESS, 2, ["project", "--kafka", CRED_KAFKA, "--store", NEW_DB]),
    ("project-source-credentials", IN_PROCESS, 2, ["project", "--source", f"kafka://{CRED_KAFKA}", "--store", NEW_DB]),
    (
        "project-source-url-credentials",
        IN_PROCESS,
        2,
        ["project", "--source", "file://admin:S3cret@x/y", "--store", NEW_DB],
    ),
    ("gaps-no-store", IN_PROCESS, 2, ["gaps"]),
    ("gaps-store-credentials", IN_PROCESS, 2, ["gaps", "--store", CRED_STORE, "--all"]),
    ("verify-store-credentials", IN_PROCESS, 2, ["verify", "--log", D, "--store", CRED_STORE]),
    ("verify-kafka-credentials", IN_PROCESS, 2, ["verify", "--kafka", CRED_KAFKA, "--store", PROJ]),
    ("verify-source-credentials", IN_PROCESS, 2, ["verify", "--source", f"kafka://{CRED_KAFKA}", "--store", PROJ]),
    ("run-no-service", IN_PROCESS, 2, ["run"]),
    ("run-unknown-service", IN_PROCESS, 2, ["run", "matching"]),
    ("batch-0", IN_PROCESS, 2, ["run", "ubscore", "--dir", "{S}/empty", "--batch", "0"]),
    ("batch-negative", IN_PROCESS, 2, ["run", "engine", "--dir", "{S}/empty", "--batch", "-1"]),
    ("batch-over-max", IN_PROCESS, 2, ["run", "ubscore", "--dir", "{S}/empty", "--batch", "65537"]),
    ("idle-exit-negative", IN_PROCESS, 2, ["run", "ubscore", "--dir", "{S}/empty", "--idle-exit-s", "-1"]),
    ("batch-wait-negative", IN_PROCESS, 2, ["run", "all", "--dir", "{S}/empty", "--batch-wait-ms", "-1"]),
    ("outage-limit-not-a-number", IN_PROCESS, 2, ["run", "project", "--dir", D, "--outage-s-max", "soon"]),
    ("run-kafka-credentials", IN_PROCESS, 2, ["run", "ubscore", "--kafka", CRED_KAFKA]),
    ("run-fsync-choice", IN_PROCESS, 2, ["run", "ubscore", "--fsync", "maybe"]),
    ("load-no-orders", IN_PROCESS, 2, ["load", "--dir", D]),
    ("load-orders-negative", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "-1"]),
    ("load-orders-over-max", IN_PROCESS, 2, ["load", "--dir", D, "--orders", str(LOAD_COMMANDS_MAX + 1)]),
    ("load-users-0", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--users", "0"]),
    ("load-users-over-max", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--users", str(LOAD_USERS_MAX + 1)]),
    ("load-symbols-0", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--symbols", "0"]),
    ("load-seed-not-a-number", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--seed", "x"]),
    ("load-rate-0", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--rate", "0"]),
    ("load-rate-nan", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--rate", "nan"]),
    ("load-rate-over-max", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--rate", "1e9"]),
    ("load-request-id-base-negative", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--request-id-base", "-1"]),
    (
        "load-request-id-base-too-high",
        IN_PROCESS,
        2,
        ["load", "--dir", D, "--orders", "10", "--request-id-base", str(2**63 - 10)],
    ),
    ("load-kafka-credentials", IN_PROCESS, 2, ["load", "--kafka", CRED_KAFKA, "--orders", "10"]),
    ("load-kafka-user-only", IN_PROCESS, 2, ["load", "--kafka", "admin@127.0.0.1:9092", "--orders", "10"]),
    ("load-fsync-choice", IN_PROCESS, 2, ["load", "--dir", D, "--orders", "10", "--fsync", "sometimes"]),
    ("replay-depth-negative", IN_PROCESS, 2, ["replay", "--engine", "BTC-USDT", "--log", D, "--depth", "-1"]),
    ("replay-engine-empty-string", IN_PROCESS, 2, ["replay", "--engine", "", "--log", D]),
    # -- usage: combinations argparse cannot see
    ("load-no-target", IN_PROCESS, 2, ["load", "--orders", "10"]),
    ("load-dir-and-kafka", IN_PROCESS, 2, ["load", "--dir", D, "--kafka", "127.0.0.1:9092", "--orders", "10"]),
    ("load-topic-prefix-with-dir", IN_PROCESS, 2, ["load", "--dir", D, "--topic-prefix", "x-", "--orders", "10"]),
    (
        "load-fsync-with-kafka",
        IN_PROCESS,
        2,
        ["load", "--kafka", "127.0.0.1:9092", "--fsync", "never", "--orders", "1"],
    ),
    ("replay-engine-no-log", IN_PROCESS, 2, ["replay", "--engine", "BTC-USDT"]),
    (
        "replay-engine-snapshot",
        IN_PROCESS,
        2,
        ["replay", "--engine", "BTC-USDT", "--log", D, "--snapshot", "{S}/s100.snap"],
    ),
    (
        "replay-engine-save-snapshot",
        IN_PROCESS,
        2,
        ["replay", "--engine", "BTC-USDT", "--log", D, "--save-snapshot", "{S}/x.snap"],
    ),
    ("replay-engine-partition", IN_PROCESS, 2, ["replay", "--engine", "BTC-USDT", "--log", D, "--partition", "1"]),
    ("replay-depth-without-engine", IN_PROCESS, 2, ["replay", "--log", E, "--depth", "3"]),
    ("replay-topic-prefix-with-log", IN_PROCESS, 2, ["replay", "--log", E, "--topic-prefix", "x-"]),
    ("verify-topic-prefix-with-log", IN_PROCESS, 2, ["verify", "--log", D, "--store", PROJ, "--topic-prefix", "x-"]),
    ("replay-no-log", IN_PROCESS, 2, ["replay"]),
    ("replay-log-and-kafka", IN_PROCESS, 2, ["replay", "--log", E, "--kafka", "127.0.0.1:9092"]),
    ("project-no-log", IN_PROCESS, 2, ["project", "--store", NEW_DB]),
    ("project-log-and-source", IN_PROCESS, 2, ["project", "--log", D, "--source", D, "--store", NEW_DB]),
    (
        "project-engine-topic-with-log",
        IN_PROCESS,
        2,
        ["project", "--log", D, "--engine-topic", "X=y", "--store", NEW_DB],
    ),
    (
        "project-max-seconds-without-follow",
        IN_PROCESS,
        2,
        ["project", "--log", D, "--store", NEW_DB, "--max-seconds", "1"],
    ),
    (
        "project-engine-topic-malformed",
        IN_PROCESS,
        2,
        ["project", "--kafka", "127.0.0.1:9092", "--engine-topic", "bad", "--store", NEW_DB],
    ),
    ("verify-no-log", IN_PROCESS, 2, ["verify", "--store", PROJ]),
    ("run-nothing", IN_PROCESS, 2, ["run", "ubscore"]),
    ("run-old-stage-options", IN_PROCESS, 2, ["run", "ubscore", "--commands", OPS]),
    ("run-kafka-and-files", IN_PROCESS, 2, ["run", "ubscore", "--kafka", "127.0.0.1:9092", "--dir", D]),
    ("run-topic-prefix-with-files", IN_PROCESS, 2, ["run", "engine", "--dir", D, "--topic-prefix", "x-"]),
    ("run-project-no-store", IN_PROCESS, 2, ["run", "project", "--dir", D]),
    ("run-symbol-for-ubscore", IN_PROCESS, 2, ["run", "ubscore", "--dir", D, "--symbol", "BTC-USDT"]),
    ("gaps-memory-store", IN_PROCESS, 2, ["gaps", "--store", "sqlite::memory:"]),
    ("verify-memory-store", IN_PROCESS, 2, ["verify", "--log", D, "--store", "sqlite::memory:"]),
    ("gaps-sqlite-no-path", IN_PROCESS, 2, ["gaps", "--store", "sqlite:"]),
    ("gaps-unknown-scheme", IN_PROCESS, 2, ["gaps", "--store", "mysql://127.0.0.1/db"]),
    ("gaps-cql-bad-port", IN_PROCESS, 2, ["gaps", "--store", "cql://127.0.0.1:port/ks"]),
    # -- replay: wrong or unreadable input
    ("replay-deployment-root", SUBPROCESS, 2, ["replay", "--log", D]),
    ("replay-empty-dir", SUBPROCESS, 2, ["replay", "--log", "{S}/empty"]),
    ("replay-missing-dir", SUBPROCESS, 2, ["replay", "--log", "{S}/missing"]),
    ("replay-log-is-a-file", SUBPROCESS, 2, ["replay", "--log", "{S}/afile"]),
    ("replay-header-only-log", SUBPROCESS, 2, ["replay", "--log", "{S}/headeronly"]),
    ("replay-dir-named-seg", SUBPROCESS, 2, ["replay", "--log", "{S}/segdir"]),
    ("replay-bad-segment-header", SUBPROCESS, 2, ["replay", "--log", "{S}/badheader"]),
    ("replay-bad-segment-name", SUBPROCESS, 2, ["replay", "--log", "{S}/badname"]),
    ("replay-corrupt-record", SUBPROCESS, 2, ["replay", "--log", "{S}/corrupt-deploy/balance.events"]),
    ("replay-until-past-end", SUBPROCESS, 2, ["replay", "--log", E, "--until", "999999"]),
    (
        "replay-until-before-snapshot",
        SUBPROCESS,
        2,
        ["replay", "--log", E, "--snapshot", "{S}/s100.snap", "--until", "50"],
    ),
    ("replay-snapshot-beyond-end", SUBPROCESS, 2, ["replay", "--log", E, "--snapshot", "{S}/beyond.snap"]),
    ("replay-snapshot-is-a-dir", SUBPROCESS, 2, ["replay", "--log", E, "--snapshot", S]),
    ("replay-snapshot-missing", SUBPROCESS, 2, ["replay", "--log", E, "--snapshot", "{S}/missing.snap"]),
    ("replay-save-snapshot-to-dir", SUBPROCESS, 2, ["replay", "--log", E, "--save-snapshot", S]),
    ("replay-save-snapshot-no-parent", SUBPROCESS, 2, ["replay", "--log", E, "--save-snapshot", "{S}/nodir/x.snap"]),
    (
        "replay-until-past-end-saves-nothing",
        SUBPROCESS,
        2,
        ["replay", "--log", E, "--until", "5000", "--save-snapshot", "{S}/x.snap"],
    ),
    ("replay-snapshot-not-a-snapshot", SUBPROCESS, 1, ["replay", "--log", E, "--snapshot", "{S}/afile"]),
    ("replay-log-with-a-gap", SUBPROCESS, 1, ["replay", "--log", "{S}/gapped/balance.events"]),
    ("replay-log-with-a-gap-json", SUBPROCESS, 1, ["replay", "--log", "{S}/gapped/balance.events", "--json"]),
    # -- replay --engine: a stream that is not there, or not an engine stream
    ("replay-engine-missing-stream", SUBPROCESS, 2, ["replay", "--engine", "XRP-USDT", "--log", D]),
    ("replay-engine-missing-dir", SUBPROCESS, 2, ["replay", "--engine", "BTC-USDT", "--log", "{S}/missing"]),
    ("replay-engine-empty-dir", SUBPROCESS, 2, ["replay", "--engine", "BTC-USDT", "--log", "{S}/empty"]),
    ("replay-engine-header-only", SUBPROCESS, 2, ["replay", "--engine", "BTC-USDT", "--log", "{S}/headeronly"]),
    ("replay-engine-on-balance-events", SUBPROCESS, 2, ["replay", "--engine", "BTC-USDT", "--log", E]),
    (
        "replay-engine-other-symbols-stream",
        SUBPROCESS,
        1,
        ["replay", "--engine", "BTC-USDT", "--log", f"{D}/engine.outputs/ETH-USDT"],
    ),
    ("replay-engine-until-past-end", SUBPROCESS, 2, ["replay", "--engine", "BTC-USDT", "--log", D, "--until", "99999"]),
    # -- load: a deployment that is not there, or whose command log is damaged
    ("load-dir-missing", SUBPROCESS, 2, ["load", "--dir", "{S}/missing", "--orders", "10"]),
    ("load-dir-is-a-file", SUBPROCESS, 2, ["load", "--dir", "{S}/afile", "--orders", "10"]),
    ("load-operations-is-a-file", SUBPROCESS, 2, ["load", "--dir", "{S}/ops-file-deploy", "--orders", "10"]),
    ("load-operations-corrupt", SUBPROCESS, 2, ["load", "--dir", "{S}/corrupt-ops-deploy", "--orders", "10"]),
    # -- demo: refused before anything is created
    ("demo-dir-is-a-file", SUBPROCESS, 2, ["demo", "--dir", "{S}/afile"]),
    ("demo-dir-is-a-segment", SUBPROCESS, 2, ["demo", "--dir", f"{E}/{SEGMENT}"]),
    ("demo-dir-under-a-file", SUBPROCESS, 2, ["demo", "--dir", "{S}/afile/sub"]),
    ("demo-dir-not-a-demo", SUBPROCESS, 2, ["demo", "--dir", "{S}/notdemo"]),
    # -- project
    ("project-empty-dir", SUBPROCESS, 2, ["project", "--log", "{S}/empty", "--store", NEW_DB]),
    ("project-log-not-a-root", SUBPROCESS, 2, ["project", "--log", E, "--store", NEW_DB]),
    ("project-missing-dir", SUBPROCESS, 2, ["project", "--log", "{S}/missing", "--store", NEW_DB]),
    ("project-source-empty-dir", SUBPROCESS, 2, ["project", "--source", "{S}/empty", "--store", NEW_DB]),
    ("project-store-not-a-db", SUBPROCESS, 2, ["project", "--log", D, "--store", "sqlite:{S}/afile"]),
    ("project-store-segment", SUBPROCESS, 2, ["project", "--log", D, "--store", f"sqlite:{E}/{SEGMENT}"]),
    ("project-store-is-a-dir", SUBPROCESS, 2, ["project", "--log", D, "--store", "sqlite:{S}"]),
    ("project-store-no-parent", SUBPROCESS, 2, ["project", "--log", D, "--store", "sqlite:{S}/nodir/x.db"]),
    ("project-store-sqlite-no-path", SUBPROCESS, 2, ["project", "--log", D, "--store", "sqlite:"]),
    ("project-corrupt-log", SUBPROCESS, 2, ["project", "--log", "{S}/corrupt-deploy", "--store", NEW_DB]),
    # -- gaps
    ("gaps-mistyped-path", SUBPROCESS, 2, ["gaps", "--store", "sqlite:{S}/typo.db"]),
    ("gaps-not-a-db", SUBPROCESS, 2, ["gaps", "--store", "sqlite:{S}/afile"]),
    ("gaps-segment", SUBPROCESS, 2, ["gaps", "--store", f"sqlite:{E}/{SEGMENT}"]),
    ("gaps-dir", SUBPROCESS, 2, ["gaps", "--store", "sqlite:{S}"]),
    ("gaps-empty-file", SUBPROCESS, 2, ["gaps", "--store", "sqlite:{S}/empty.db"]),
    ("gaps-not-a-projection", SUBPROCESS, 2, ["gaps", "--store", "sqlite:{S}/other.db"]),
    ("gaps-no-parent", SUBPROCESS, 2, ["gaps", "--store", "sqlite:{S}/nodir/x.db"]),
    ("gaps-open-fault", SUBPROCESS, 1, ["gaps", "--store", "sqlite:{S}/halted.db"]),
    ("gaps-open-fault-all-json", SUBPROCESS, 1, ["gaps", "--store", "sqlite:{S}/halted.db", "--all", "--json"]),
    # -- verify
    ("verify-mistyped-store", SUBPROCESS, 2, ["verify", "--log", D, "--store", "sqlite:{S}/typo.db"]),
    ("verify-not-a-projection", SUBPROCESS, 2, ["verify", "--log", D, "--store", "sqlite:{S}/other.db"]),
    ("verify-store-not-a-db", SUBPROCESS, 2, ["verify", "--log", D, "--store", "sqlite:{S}/afile"]),
    ("verify-empty-dir", SUBPROCESS, 2, ["verify", "--log", "{S}/empty", "--store", PROJ]),
    ("verify-log-not-a-root", SUBPROCESS, 2, ["verify", "--log", E, "--store", PROJ]),
    ("verify-corrupt-log", SUBPROCESS, 2, ["verify", "--log", "{S}/corrupt-deploy", "--store", PROJ]),
    ("verify-log-with-a-gap", SUBPROCESS, 1, ["verify", "--log", "{S}/gapped", "--store", "sqlite:{S}/halted.db"]),
    ("verify-store-behind", SUBPROCESS, 1, ["verify", "--log", D, "--store", "sqlite:{S}/halted.db"]),
    ("verify-store-behind-json", SUBPROCESS, 1, ["verify", "--log", D, "--store", "sqlite:{S}/halted.db", "--json"]),
    ("verify-commands-empty-string", IN_PROCESS, 2, ["verify", "--log", D, "--store", PROJ, "--commands", ""]),
    ("verify-commands-missing", SUBPROCESS, 2, ["verify", "--log", D, "--store", PROJ, "--commands", "{S}/missing"]),
    ("verify-commands-not-a-log", SUBPROCESS, 2, ["verify", "--log", D, "--store", PROJ, "--commands", "{S}/empty"]),
    ("verify-commands-root", SUBPROCESS, 2, ["verify", "--log", D, "--store", PROJ, "--commands", D]),
    (
        "verify-commands-corrupt",
        SUBPROCESS,
        2,
        ["verify", "--log", D, "--store", PROJ, "--commands", "{S}/corrupt-ops"],
    ),
    (
        "verify-commands-unanswered",
        SUBPROCESS,
        1,
        ["verify", "--log", D, "--store", PROJ, "--commands", "{S}/ops-one-more"],
    ),
    (
        "verify-commands-answer-past-the-end",
        SUBPROCESS,
        1,
        ["verify", "--log", D, "--store", PROJ, "--commands", "{S}/ops-one-less", "--json"],
    ),
    (
        "verify-commands-and-store-behind",
        SUBPROCESS,
        1,
        ["verify", "--log", D, "--store", "sqlite:{S}/halted.db", "--commands", "{S}/ops-one-more"],
    ),
    # -- run: a deployment whose logs are wrong is left as it was
    ("run-dir-missing", SUBPROCESS, 2, ["run", "ubscore", "--dir", "{S}/missing"]),
    ("run-dir-is-a-file", SUBPROCESS, 2, ["run", "ubscore", "--dir", "{S}/afile"]),
    ("run-engine-dir-is-a-file", SUBPROCESS, 2, ["run", "engine", "--dir", "{S}/afile"]),
    ("run-events-is-a-file", SUBPROCESS, 2, ["run", "ubscore", "--dir", "{S}/events-file-deploy"]),
    ("run-events-corrupt", SUBPROCESS, 2, ["run", "ubscore", "--dir", "{S}/corrupt-deploy"]),
    ("run-events-held-by-another-writer", SUBPROCESS, 2, ["run", "ubscore", "--dir", "{S}/locked-deploy"]),
    ("run-events-bad-segment", SUBPROCESS, 2, ["run", "ubscore", "--dir", "{S}/badheader-deploy"]),
    ("run-events-log-with-a-gap", SUBPROCESS, 1, ["run", "ubscore", "--dir", "{S}/gapped"]),
    # -- keys: refused before the database is opened, or by a database that is not one
    ("keys-no-action", IN_PROCESS, 2, ["keys"]),
    ("keys-unknown-action", IN_PROCESS, 2, ["keys", "rotate"]),
    ("keys-create-no-db", IN_PROCESS, 2, ["keys", "create", "--user", "1"]),
    ("keys-create-db-empty-string", IN_PROCESS, 2, ["keys", "create", "--db", "", "--user", "1"]),
    ("keys-create-no-user", IN_PROCESS, 2, ["keys", "create", "--db", NEW_KEYS]),
    ("keys-create-user-0", IN_PROCESS, 2, ["keys", "create", "--db", NEW_KEYS, "--user", "0"]),
    ("keys-create-user-negative", IN_PROCESS, 2, ["keys", "create", "--db", NEW_KEYS, "--user", "-1"]),
    ("keys-create-user-not-a-number", IN_PROCESS, 2, ["keys", "create", "--db", NEW_KEYS, "--user", "bob"]),
    ("keys-create-user-over-max", IN_PROCESS, 2, ["keys", "create", "--db", NEW_KEYS, "--user", str(USER_ID_MAX + 1)]),
    ("keys-create-operator-user", IN_PROCESS, 2, ["keys", "create", "--db", NEW_KEYS, "--operator", "--user", "7"]),
    (
        "keys-create-label-newline",
        IN_PROCESS,
        2,
        ["keys", "create", "--db", NEW_KEYS, "--user", "1", "--label", "two\nlines"],
    ),
    (
        "keys-create-label-too-long",
        IN_PROCESS,
        2,
        ["keys", "create", "--db", NEW_KEYS, "--user", "1", "--label", "x" * (LABEL_CHARS_MAX + 1)],
    ),
    ("keys-add-no-public-key", IN_PROCESS, 2, ["keys", "add", "--db", NEW_KEYS, "--user", "1"]),
    ("keys-add-public-key-short", IN_PROCESS, 2, ["keys", "add", "--db", NEW_KEYS, "--user", "1", "--public-key", "a"]),
    (
        "keys-add-public-key-not-hex",
        IN_PROCESS,
        2,
        ["keys", "add", "--db", NEW_KEYS, "--user", "1", "--public-key", "zz" * 32],
    ),
    (
        "keys-add-public-key-small-order",
        IN_PROCESS,
        2,
        ["keys", "add", "--db", NEW_KEYS, "--user", "1", "--public-key", "01" + "00" * 31],
    ),
    ("keys-revoke-no-key-id", IN_PROCESS, 2, ["keys", "revoke", "--db", KEYS]),
    ("keys-list-no-db", IN_PROCESS, 2, ["keys", "list"]),
    ("keys-create-db-is-a-dir", SUBPROCESS, 2, ["keys", "create", "--db", S, "--user", "1"]),
    ("keys-create-db-not-a-db", SUBPROCESS, 2, ["keys", "create", "--db", "{S}/afile", "--user", "1"]),
    ("keys-create-db-segment", SUBPROCESS, 2, ["keys", "create", "--db", f"{E}/{SEGMENT}", "--user", "1"]),
    ("keys-create-db-no-parent", SUBPROCESS, 2, ["keys", "create", "--db", "{S}/nodir/k.db", "--user", "1"]),
    (
        "keys-add-public-key-registered-before",
        SUBPROCESS,
        2,
        ["keys", "add", "--db", KEYS, "--user", "5", "--public-key", REVOKED_PUBLIC_KEY],
    ),
    ("keys-list-missing-db", SUBPROCESS, 2, ["keys", "list", "--db", "{S}/typo.db"]),
    ("keys-list-empty-file", SUBPROCESS, 2, ["keys", "list", "--db", "{S}/empty.db"]),
    ("keys-list-not-a-db", SUBPROCESS, 2, ["keys", "list", "--db", "{S}/afile"]),
    ("keys-list-not-a-key-store", SUBPROCESS, 2, ["keys", "list", "--db", "{S}/other.db"]),
    ("keys-list-dir", SUBPROCESS, 2, ["keys", "list", "--db", S]),
    ("keys-revoke-missing-db", SUBPROCESS, 2, ["keys", "revoke", "--db", "{S}/typo.db", REVOKED_KEY_ID]),
    ("keys-revoke-not-a-key-store", SUBPROCESS, 2, ["keys", "revoke", "--db", "{S}/other.db", REVOKED_KEY_ID]),
    ("keys-revoke-unknown-key", SUBPROCESS, 2, ["keys", "revoke", "--db", KEYS, "k" + "f" * 20]),
    ("keys-revoke-not-a-key-id", SUBPROCESS, 2, ["keys", "revoke", "--db", KEYS, "bogus"]),
    ("keys-revoke-already-revoked", SUBPROCESS, 2, ["keys", "revoke", "--db", KEYS, REVOKED_KEY_ID]),
    # -- permissions: as a process that cannot read what it is not allowed to
    ("unreadable-segment", UNPRIVILEGED, 2, ["replay", "--log", "{S}/unreadable-seg"]),
    ("unreadable-directory", UNPRIVILEGED, 2, ["replay", "--log", "{S}/unreadable-dir"]),
    (
        "save-snapshot-read-only-dir",
        UNPRIVILEGED,
        2,
        ["replay", "--log", E, "--until", "100", "--save-snapshot", "{S}/ro/x.snap"],
    ),
    ("project-unreadable-segment", UNPRIVILEGED, 2, ["project", "--log", "{S}/unreadable-deploy", "--store", NEW_DB]),
    ("verify-unreadable-segment", UNPRIVILEGED, 2, ["verify", "--log", "{S}/unreadable-deploy", "--store", PROJ]),
    ("gaps-unreadable-db", UNPRIVILEGED, 2, ["gaps", "--store", "sqlite:{S}/unreadable.db"]),
    ("project-store-read-only-dir", UNPRIVILEGED, 2, ["project", "--log", D, "--store", "sqlite:{S}/ro/x.db"]),
    ("demo-dir-read-only-parent", UNPRIVILEGED, 2, ["demo", "--dir", "{S}/ro/new", "--users", "20", "--orders", "10"]),
    ("run-events-unreadable", UNPRIVILEGED, 2, ["run", "ubscore", "--dir", "{S}/unreadable-deploy"]),
    ("keys-create-read-only-dir", UNPRIVILEGED, 2, ["keys", "create", "--db", "{S}/ro/k.db", "--user", "1"]),
    ("keys-list-unreadable-db", UNPRIVILEGED, 2, ["keys", "list", "--db", "{S}/unreadable.db"]),
]


def test_the_table_is_big_enough_and_its_ids_unique() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) >= 100
    assert len(set(ids)) == len(ids)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run(mode: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    if mode == IN_PROCESS:
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
        return code, capsys.readouterr().err
    command = [sys.executable, "-m", "ledger.app.cli", *argv]
    if mode == UNPRIVILEGED and os.geteuid() == 0:
        command = DROP_READ_ANYTHING + command
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_env())
    return done.returncode, done.stderr


@pytest.mark.parametrize(("mode", "code", "argv"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_command_line_fails_in_one_line_and_changes_nothing(
    scratch: Path, mode: str, code: int, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    if mode == UNPRIVILEGED and os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing: cannot drop root's power to read any file")
    argv = [arg.replace("{S}", str(scratch)) for arg in argv]
    before = _listing(scratch)
    exit_code, stderr = _run(mode, argv, capsys)
    lines = stderr.splitlines()
    assert exit_code == code, stderr
    assert len(lines) == 1 and lines[0].strip(), stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("ledger"), stderr
    assert "S3cret" not in stderr
    assert _listing(scratch) == before
    assert code in (EXIT_USAGE, EXIT_CHECK_FAILED)


def _on_garbage_first_frame(scratch: Path, tmp_path: Path, command: str) -> subprocess.CompletedProcess[str]:
    """``ledger COMMAND`` on a copy of the demo whose BTC-USDT engine log starts with garbage
    where its first frame's header is."""
    root = tmp_path / "deployment"
    shutil.copytree(scratch / "demo", root)
    segment = layout.output_dir(root, "BTC-USDT") / SEGMENT
    data = bytearray(segment.read_bytes())
    data[16:32] = b"garbage garbage!"  # just past the segment's own header
    segment.write_bytes(bytes(data))
    store = f"sqlite:{scratch / 'proj.db'}" if command == "verify" else f"sqlite:{tmp_path / 'p.db'}"
    argv = [sys.executable, "-m", "ledger.app.cli", command, "--log", str(root), "--store", store]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env())


@pytest.mark.parametrize("command", ["project", "verify"])
def test_garbage_in_the_first_frame_of_an_engine_log_is_never_quiet(
    scratch: Path, tmp_path: Path, command: str
) -> None:
    done = _on_garbage_first_frame(scratch, tmp_path, command)
    assert "Traceback" not in done.stderr
    assert "engine.outputs/BTC-USDT" in done.stderr, done.stderr


@pytest.mark.parametrize("command", ["project", "verify"])
def test_garbage_in_the_first_frame_of_an_engine_log_fails_in_one_line(
    scratch: Path, tmp_path: Path, command: str
) -> None:
    done = _on_garbage_first_frame(scratch, tmp_path, command)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "engine.outputs/BTC-USDT" in done.stderr
    assert not (tmp_path / "p.db").exists()


def test_run_ubscore_answers_an_undecodable_command_and_goes_on(scratch: Path, tmp_path: Path) -> None:
    """A record of balance.operations that is not a command is a client's bug: the stage
    answers it with Rejected(MALFORMED_COMMAND) and exits 0, it does not stop."""
    from ledger.protocol.codec import EVENTS
    from ledger.protocol.reasons import Reason

    shutil.copytree(scratch / "undecodable-ops", layout.operations_dir(tmp_path))
    events_dir = layout.events_dir(tmp_path)
    argv = [sys.executable, "-m", "ledger.app.cli", "run", "ubscore", "--dir", str(tmp_path), "--fsync", "never",
            "--idle-exit-s", "0.5"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    with FileLog(events_dir, readonly=True) as events:
        (answer,) = [EVENTS.decode(raw) for raw in events.read(0).values]
    assert answer.reason == Reason.MALFORMED_COMMAND and answer.command is None
