"""UBSCore on the real Kafka broker: replay throughput, and a stage's commands/s with and
without transactions.

    python benchmarks/bench_kafka.py [--kafka 127.0.0.1:9092] [--orders 60000] [--batch 500] [--json]

1. Makes a workload with the demo (seed 42): its balance.operations (commands) and
   balance.events (a realistic mix: deposits, locks, trade settlements, unlocks).
2. Replay: appends balance.events to a fresh topic, then times, each from offset 0 to
   the end with ``assign()`` and read_committed: reading alone, reading + decoding, and
   ``ledger.rebuild`` (read + decode + evolve into a UBSCore). Target: 300,000 events/s.
3. Stage: appends balance.operations to a fresh topic, then runs the UBSCore service
   (``ledger.app.services.UBSCoreService``, no engine: commands only) over it into a
   fresh events topic, once with a transactional producer (one transaction per batch of
   ``--batch`` commands: what the service uses) and once idempotent-only, and reports
   commands/s and the ratio.

Start the broker first: ``bash scripts/services.sh up kafka``. Topics are named
``bench-<random>`` and left on the broker.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from ledger.app.demo import run_demo
from ledger.app.services import Stopper, UBSCoreService, run_services
from ledger.app.streams import MemoryStreams
from ledger.logs.base import Log, scan
from ledger.logs.file import FileLog, FsyncPolicy
from ledger.logs.kafka import KafkaLog, ensure_topic
from ledger.protocol.codec import EVENTS
from ledger.rebuild import replay

APPEND_CHUNK_RECORDS = 10_000


def records_of(path: Path) -> list[bytes]:
    with FileLog(path, readonly=True) as log:
        return [bytes(raw) for batch in scan(log) for raw in batch.values]


def fresh_topic(bootstrap: str, label: str, transactional: bool) -> KafkaLog:
    topic = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic)
    return KafkaLog(bootstrap, topic, transactional_id=f"tx-{topic}" if transactional else None)


def fill(log: KafkaLog, values: list[bytes]) -> None:
    for start in range(0, len(values), APPEND_CHUNK_RECORDS):
        log.append(values[start : start + APPEND_CHUNK_RECORDS])


def timed(label: str, count: int, work: Any) -> dict[str, Any]:
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return {"what": label, "count": count, "seconds": round(seconds, 3), "per_s": round(count / seconds)}


def bench_replay(bootstrap: str, events: list[bytes]) -> list[dict[str, Any]]:
    topic = fresh_topic(bootstrap, "events", transactional=False)
    fill(topic, events)
    topic.close()
    results = []

    def read_only(log: Log) -> None:
        for _batch in scan(log):
            pass

    def read_decode(log: Log) -> None:
        decode = EVENTS.decode
        for batch in scan(log):
            for raw in batch.values:
                decode(raw)

    for label, work in (
        ("read", read_only),
        ("read + decode", read_decode),
        ("read + decode + evolve (ledger.rebuild)", replay),
    ):
        reader = KafkaLog(bootstrap, topic.topic)
        results.append(timed(label, len(events), lambda reader=reader, work=work: work(reader)))
        reader.close()
    return results


def bench_stage(bootstrap: str, commands: list[bytes], batch: int) -> list[dict[str, Any]]:
    source = fresh_topic(bootstrap, "operations", transactional=False)
    fill(source, commands)
    results = []
    for label, transactional in (("stage, transactional (one transaction a batch)", True),
                                 ("stage, idempotent producer only", False)):
        sink = fresh_topic(bootstrap, "stage-out", transactional=transactional)
        reader = KafkaLog(bootstrap, source.topic)
        service = UBSCoreService(MemoryStreams.of(reader, sink), batch, 0)

        def run(service: UBSCoreService = service) -> None:
            run_services([service], Stopper(), idle_exit_s=0.2, summary_every_s=0)

        results.append(timed(label, len(commands), run))
        reader.close()
        sink.close()
    source.close()
    results[0]["over_idempotent"] = round(results[0]["per_s"] / results[1]["per_s"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--orders", type=int, default=60_000, help="demo commands after setup")
    parser.add_argument("--batch", type=int, default=500, help="commands per stage batch (one transaction)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "logs"
        run_demo(root, orders=args.orders, seed=42, progress=False, fsync=FsyncPolicy.NEVER)
        events = records_of(root / "balance.events")
        commands = records_of(root / "balance.operations")
    result = {
        "events": len(events),
        "commands": len(commands),
        "replay": bench_replay(args.kafka, events),
        "stage": bench_stage(args.kafka, commands, args.batch),
    }
    if args.json:
        print(msgspec.json.encode(result).decode())
        return
    print(f"workload: {len(events):,} balance events, {len(commands):,} commands")
    for row in (*result["replay"], *result["stage"]):
        print(f"  {row['what']:<48} {row['per_s']:>9,}/s  ({row['count']:,} in {row['seconds']} s)")
    print(f"  transactions cost: transactional / idempotent = {result['stage'][0]['over_idempotent']}")
    print("target: replay at least 300,000 events/s end to end")


if __name__ == "__main__":
    main()
