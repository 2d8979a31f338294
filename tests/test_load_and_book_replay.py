"""``ledger load`` puts a planned workload on balance.operations, paced or not, with
request ids a second load does not repeat; ``ledger replay --engine`` rebuilds an order
book from its engine stream alone and prints the live engine's state hash, on file logs
and on Kafka (where transaction markers leave holes in the offsets)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ledger.app.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, main
from ledger.app.demo import run_demo
from ledger.app.load import planned_ids, planned_workload, send_workload
from ledger.logs import layout
from ledger.logs.base import MemoryLog
from ledger.logs.file import FileLog, FsyncPolicy
from ledger.protocol.codec import COMMANDS, EVENTS
from ledger.protocol.events import Rejected
from ledger.protocol.reasons import Reason
from support import KAFKA_BOOTSTRAP, records

ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "BTC-USDT"


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "ledger.app.cli", *argv], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("book-replay") / "demo"
    summary = run_demo(root, users=20, orders=500, seed=7, progress=False, fsync=FsyncPolicy.NEVER)
    return root, summary


# -- replay --engine ----------------------------------------------------------------------


def test_replay_engine_prints_the_live_engines_hash(demo: tuple[Path, Any], capsys: Any) -> None:
    root, summary = demo
    for symbol in summary.symbols:
        assert main(["replay", "--engine", symbol, "--log", str(root), "--json"]) == EXIT_OK
        got = json.loads(capsys.readouterr().out)
        assert got["state_hash"] == summary.state_hashes[f"engine:{symbol}"]
        assert got["symbol"] == symbol and got["seq"] == got["outputs"] > 1
        assert got["last_input_seq"] > 0


def test_replay_engine_top_levels_are_the_books_best_prices(demo: tuple[Path, Any], capsys: Any) -> None:
    root, _summary = demo
    assert main(["replay", "--engine", SYMBOL, "--log", str(layout.output_dir(root, SYMBOL)), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    bids, asks = got["bids"], got["asks"]
    assert 0 < len(bids) <= 5 and 0 < len(asks) <= 5
    bid_prices = [level["price_ticks"] for level in bids]
    ask_prices = [level["price_ticks"] for level in asks]
    assert bid_prices == sorted(bid_prices, reverse=True) and ask_prices == sorted(ask_prices)
    assert bid_prices[0] < ask_prices[0]  # a book at rest is never crossed
    assert all(level["qty_lots"] >= level["orders"] >= 1 for level in bids + asks)
    assert sum(level["orders"] for level in bids) <= got["bid_orders"]
    # The whole book at a depth that covers every level: the counts add up exactly.
    assert main(["replay", "--engine", SYMBOL, "--log", str(root), "--json", "--depth", "1000"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert len(full["bids"]) == full["bid_levels"] and len(full["asks"]) == full["ask_levels"]
    assert sum(level["orders"] for level in full["asks"]) == full["ask_orders"]


def test_replay_engine_text_names_hash_seq_and_levels(demo: tuple[Path, Any], capsys: Any) -> None:
    root, summary = demo
    assert main(["replay", "--engine", SYMBOL, "--log", str(root), "--depth", "2"]) == 0
    text = capsys.readouterr().out
    assert f"state hash:   {summary.state_hashes['engine:' + SYMBOL]}" in text
    assert "last input seq" in text
    assert len([line for line in text.splitlines() if " | " in line]) == 1 + 2  # header and two levels


def test_replay_engine_until_stops_at_that_seq(demo: tuple[Path, Any], capsys: Any) -> None:
    root, summary = demo
    assert main(["replay", "--engine", SYMBOL, "--log", str(root), "--json", "--until", "50"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["seq"] == 50 and got["state_hash"] != summary.state_hashes[f"engine:{SYMBOL}"]


def _copy_stream(root: Path, target: Path, keep: Any, extra: list[bytes] | None = None) -> Path:
    with FileLog(layout.output_dir(root, SYMBOL), readonly=True) as log:
        values = records(log)
    with FileLog(target, fsync=FsyncPolicy.NEVER) as log:
        log.append([v for i, v in enumerate(values) if keep(i)] + (extra or []))
    return target


@pytest.mark.parametrize(
    ("case", "code", "expected"),
    [
        ("undecodable record", EXIT_USAGE, "offset"),
        ("gap", EXIT_CHECK_FAILED, "seq"),
        ("no BookOpened", EXIT_CHECK_FAILED, "not BookOpened"),
    ],
)
def test_a_damaged_engine_stream_fails_in_one_line_naming_where(
    demo: tuple[Path, Any], tmp_path: Path, case: str, code: int, expected: str
) -> None:
    root, _summary = demo
    if case == "undecodable record":
        bad = _copy_stream(root, tmp_path / "s", lambda i: True, [b"\xc1 is never msgpack"])
    elif case == "gap":
        bad = _copy_stream(root, tmp_path / "s", lambda i: i != 40)
    else:
        bad = _copy_stream(root, tmp_path / "s", lambda i: i != 0)
    done = _cli("replay", "--engine", SYMBOL, "--log", str(bad))
    assert done.returncode == code, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert expected in done.stderr and str(bad) in done.stderr
    assert done.stdout == ""


@pytest.mark.kafka
def test_replay_engine_on_kafka_prints_the_live_hash(demo: tuple[Path, Any], kafka_bootstrap: str) -> None:
    """The demo's stream copied to a prefixed topic, one transaction per 50 outputs (so its
    offsets have holes): the replay through the topic alone gives the live hash."""
    from ledger.logs.kafka import KafkaLog, ensure_topic

    root, summary = demo
    prefix = f"bookreplay-{uuid.uuid4().hex[:8]}-"
    topic = prefix + layout.output_topic(SYMBOL)
    ensure_topic(kafka_bootstrap, topic)
    with FileLog(layout.output_dir(root, SYMBOL), readonly=True) as source:
        values = records(source)
    sink = KafkaLog(kafka_bootstrap, topic, transactional_id=f"tx-{topic}")
    try:
        for start in range(0, len(values), 50):
            sink.append(values[start : start + 50])
        assert sink.end_offset() > len(values)  # the markers' holes
    finally:
        sink.close()
    done = _cli("replay", "--engine", SYMBOL, "--kafka", KAFKA_BOOTSTRAP, "--topic-prefix", prefix, "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["state_hash"] == summary.state_hashes[f"engine:{SYMBOL}"]
    assert got["outputs"] == got["seq"] == len(values)
    missing = _cli("replay", "--engine", "XRP-USDT", "--kafka", KAFKA_BOOTSTRAP, "--topic-prefix", prefix)
    assert missing.returncode == EXIT_USAGE and len(missing.stderr.splitlines()) == 1
    assert "XRP-USDT" in missing.stderr


# -- load -----------------------------------------------------------------------------------


def test_a_load_appends_exactly_the_planned_workload(tmp_path: Path, capsys: Any) -> None:
    assert main(["load", "--dir", str(tmp_path), "--orders", "700", "--users", "30", "--seed", "5", "--fsync",
                 "never"]) == EXIT_OK
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and f"{planned_ids(700, 30, 3):,} commands sent" in line
    with FileLog(layout.operations_dir(tmp_path), readonly=True) as log:
        sent = [COMMANDS.decode(raw) for raw in records(log)]
    assert sent == planned_workload(5, 700, 30, 3)


def test_a_second_load_uses_new_request_ids_and_only_its_listings_are_refused(tmp_path: Path) -> None:
    """Two loads (different seeds) onto one file-log deployment, then the services: the
    second load's ids start above the first's, so no command is taken for a retry; only
    its listings are refused (they exist); verify passes with every command answered."""
    reports = []
    for seed in ("1", "2"):
        done = _cli("load", "--dir", str(tmp_path), "--orders", "800", "--users", "40", "--seed", seed,
                    "--fsync", "never", "--json")
        assert done.returncode == 0, done.stderr
        reports.append(json.loads(done.stdout))
    assert reports[0]["request_ids"] == [1, planned_ids(800, 40, 3)]
    assert reports[1]["request_ids"][0] == reports[0]["request_ids"][1] + 1
    assert reports[1]["first_offset"] == reports[0]["last_offset"] + 1
    with FileLog(layout.operations_dir(tmp_path), readonly=True) as log:
        ids = [COMMANDS.decode(raw).request_id for raw in records(log)]
    assert len(ids) == 2 * planned_ids(800, 40, 3) and len(set(ids)) == len(ids)
    run = _cli("run", "all", "--dir", str(tmp_path), "--fsync", "never", "--idle-exit-s", "1", "--log-every-s", "0")
    assert run.returncode == 0, run.stderr
    with FileLog(layout.events_dir(tmp_path), readonly=True) as log:
        refused = Counter(
            Reason(e.reason).name for e in map(EVENTS.decode, records(log)) if isinstance(e, Rejected)
        )
    assert refused["ASSET_EXISTS"] > 0 and refused["SYMBOL_EXISTS"] == 3
    assert refused["DUPLICATE_REQUEST"] == refused["REQUEST_ID_CONFLICT"] == 0
    verify = _cli("verify", "--log", str(tmp_path), "--store", f"sqlite:{tmp_path / 'projection.db'}",
                  "--commands", str(layout.operations_dir(tmp_path)))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_second_load_with_the_first_ones_ids_is_answered_as_retries(tmp_path: Path) -> None:
    """Why the default base moves: with the same ids, the second load's listings and
    deposits (whose (user, request_id) pairs repeat) are answered as retries or conflicts,
    so its users are never funded."""
    for seed in ("1", "2"):
        done = _cli("load", "--dir", str(tmp_path), "--orders", "300", "--users", "20", "--seed", seed,
                    "--request-id-base", "0", "--fsync", "never")
        assert done.returncode == 0, done.stderr
    run = _cli("run", "ubscore", "--dir", str(tmp_path), "--fsync", "never", "--idle-exit-s", "1", "--log-every-s", "0")
    assert run.returncode == 0, run.stderr
    with FileLog(layout.events_dir(tmp_path), readonly=True) as log:
        refused = Counter(
            Reason(e.reason).name for e in map(EVENTS.decode, records(log)) if isinstance(e, Rejected)
        )
    assert refused["REQUEST_ID_CONFLICT"] + refused["DUPLICATE_REQUEST"] >= planned_ids(0, 20, 3)
    assert refused["REQUEST_ID_CONFLICT"] >= 20 * 4  # every deposit: the amounts differ


def test_a_paced_send_keeps_to_its_rate() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    commands = planned_workload(3, 1_000, 10, 1)
    log = MemoryLog("ops")
    report = send_workload(log, commands, rate_per_s=500, clock=lambda: now[0], sleep=sleep)
    assert report.commands == len(commands) == log.end_offset()
    assert report.appends == -(-len(commands) // 10)  # 500/s * 20 ms = 10 a chunk
    # The last chunk is due when its first command is (its index / 500 s); none goes early.
    assert report.seconds == pytest.approx((len(commands) - 1) // 10 * 10 / 500)
    assert sum(sleeps) == pytest.approx(report.seconds)
    assert [COMMANDS.decode(raw) for raw in log.read(0, len(commands)).values] == commands
    unpaced = send_workload(MemoryLog("x"), commands, sleep=sleep, clock=lambda: now[0])
    assert unpaced.appends == 1


def test_send_workload_refuses_a_rate_out_of_bounds() -> None:
    with pytest.raises(ValueError, match="rate"):
        send_workload(MemoryLog("x"), [], rate_per_s=0)


def test_a_workload_with_a_base_is_the_same_workload_shifted() -> None:
    plain = planned_workload(9, 400, 15, 2)
    shifted = planned_workload(9, 400, 15, 2, request_id_base=10_000)
    assert [c.request_id + 10_000 for c in plain] == [c.request_id for c in shifted]
    cancels = [(a, b) for a, b in zip(plain, shifted, strict=True) if hasattr(a, "order_request_id")]
    assert cancels and all(b.order_request_id == a.order_request_id + 10_000 for a, b in cancels)
    with pytest.raises(ValueError, match="request id base"):
        planned_workload(9, 400, 15, 2, request_id_base=2**63 - 100)


def test_load_on_a_missing_dir_creates_nothing(tmp_path: Path) -> None:
    done = _cli("load", "--dir", str(tmp_path / "nope"), "--orders", "10")
    assert done.returncode == EXIT_USAGE and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "nope").exists()


def test_run_with_a_snapshot_dir_restarts_from_the_newest_snapshot(tmp_path: Path) -> None:
    """``ledger run ubscore --snapshot-dir``: snapshots are written as the events grow, a
    second run starts from the newest and says so, and the log still verifies."""
    snapshots = tmp_path / "snapshots"
    run_ubscore = ("run", "ubscore", "--dir", str(tmp_path), "--fsync", "never", "--idle-exit-s", "1",
                   "--log-every-s", "0", "--batch", "100", "--snapshot-dir", str(snapshots), "--snapshot-every", "400")
    for seed in ("1", "2"):
        done = _cli("load", "--dir", str(tmp_path), "--orders", "600", "--users", "30", "--seed", seed,
                    "--fsync", "never")
        assert done.returncode == 0, done.stderr
        run = _cli(*run_ubscore)
        assert run.returncode == 0, run.stderr
    assert "written" in run.stderr and "state from ubscore-" in run.stderr, run.stderr
    files = sorted(p.name for p in snapshots.iterdir())
    assert 1 <= len(files) <= 3 and all(name.endswith(".snapshot") for name in files), files
    replayed = _cli("replay", "--log", str(layout.events_dir(tmp_path)), "--json")
    assert replayed.returncode == 0, replayed.stderr
    (snapshots / files[-1]).write_bytes(b"not json")  # damaged: passed over, not fatal
    again = _cli(*run_ubscore)
    assert again.returncode == 0 and "passed over" in again.stderr, again.stderr
    bad = _cli("run", "ubscore", "--dir", str(tmp_path), "--snapshot-dir", str(snapshots / files[0]))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a directory" in bad.stderr, bad.stderr
