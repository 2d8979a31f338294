"""The services end to end on the real Kafka (and Cassandra for the projector): throughput
against the in-process exchange on the same commands, and latency at a steady rate.

    python benchmarks/bench_pipeline.py [--kafka 127.0.0.1:9092] [--commands 20000]
        [--rate 1000] [--seconds 20] [--batch 500] [--batch-wait-ms 2] [--json]

1. Throughput: a planned workload (``ledger.app.load``) is put on balance.operations
   first; ``ledger run ubscore`` and ``ledger run engine`` (separate processes, the
   projector stopped) answer and settle it. The rate is commands over the time from the
   services' start to the last event (balance.events stops moving), against the
   in-process exchange on the same commands in this run.
2. With ``ledger run project`` into Cassandra as well: how long after the last event the
   projection reaches the end.
3. Latency at a steady ``--rate`` commands/s for ``--seconds``: each command carries its
   send time (``ts_ms``); a reader of balance.events notes when each answer and each
   trade's settlement becomes visible. p50 and p99 from send to answer and from the
   taker's send to its settlement.

Start the servers first: ``bash scripts/services.sh up``. Topics are prefixed
``bench-<random>-`` and left on the broker; the keyspace is dropped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from ledger.app.exchange import Exchange
from ledger.app.load import planned_workload
from ledger.app.producer import CommandProducer
from ledger.app.streams import KafkaStreams
from ledger.logs import layout
from ledger.logs.base import MemoryLog
from ledger.protocol.codec import EVENTS
from ledger.protocol.commands import PlaceOrder
from ledger.protocol.events import OrderAccepted, TradeSettled

ROOT = Path(__file__).resolve().parent.parent
# The end of balance.events unchanged this long: the run is over.
QUIET_S = 2.0
# The steady load is sent in groups this often.
TICK_S = 0.01


def in_process_rate(commands: list[Any]) -> float:
    outputs: dict[str, MemoryLog] = {}
    exchange = Exchange(MemoryLog(), MemoryLog(), lambda s: outputs.setdefault(s, MemoryLog(s)))
    started = time.perf_counter()
    for start in range(0, len(commands), 1_000):
        exchange.submit(commands[start : start + 1_000])
    return len(commands) / (time.perf_counter() - started)


def service(name: str, kafka: str, prefix: str, batch: int, wait_ms: float, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    argv = [
        sys.executable,
        "-m",
        "ledger.app.cli",
        "run",
        name,
        "--kafka",
        kafka,
        "--topic-prefix",
        prefix,
        "--batch",
        str(batch),
        "--batch-wait-ms",
        str(wait_ms),
        "--log-every-s",
        "0",
        *extra,
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def wait_quiet(streams: KafkaStreams, started: float, limit_s: float = 600) -> tuple[int, float]:
    """(final end of balance.events, seconds from ``started`` to when it last moved)."""
    log = streams.events()
    last_end, last_move = -1, time.monotonic()
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            end = log.end_offset()
            now = time.monotonic()
            if end != last_end:
                last_end, last_move = end, now
            elif end > 0 and now - last_move >= QUIET_S:
                break
            time.sleep(0.05)
    finally:
        log.close()
    return last_end, last_move - started


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(timeout=60)


def bench_throughput(kafka: str, commands: list[Any], batch: int, wait_ms: float) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    streams = KafkaStreams(kafka, topic_prefix=prefix)
    streams.create_inputs()
    log = streams.commands(writer=True)
    producer = CommandProducer(log)
    for start in range(0, len(commands), 10_000):
        producer.send(commands[start : start + 10_000])
    log.close()
    started = time.monotonic()
    running = [service("ubscore", kafka, prefix, batch, wait_ms), service("engine", kafka, prefix, batch, wait_ms)]
    end, seconds = wait_quiet(streams, started)
    stop(running)
    result: dict[str, Any] = {
        "events": end,
        "seconds": round(seconds, 2),
        "commands_per_s": round(len(commands) / seconds),
    }
    keyspace = f"bench_{uuid.uuid4().hex[:8]}"
    projector_started = time.monotonic()
    project = service("project", kafka, prefix, batch, wait_ms, "--store", f"cql://127.0.0.1:9042/{keyspace}")
    # Everything is already in the topics: how long the projector takes for all of it.
    from settlement.cql import CqlStore

    time.sleep(1)
    store = None
    while store is None:
        try:
            store = CqlStore(("127.0.0.1",), 9042, keyspace, create=False)
        except Exception:  # noqa: BLE001 (not made yet)
            time.sleep(0.5)
    try:
        while True:
            checkpoint = store.checkpoint(layout.EVENTS)
            if checkpoint is not None and checkpoint.next_offset >= end:
                break
            time.sleep(0.2)
    finally:
        result["projector_seconds_for_all"] = round(time.monotonic() - projector_started, 2)
        stop([project])
        store.drop()
        store.close()
    return result


def bench_latency(kafka: str, rate: int, seconds: float, batch: int, wait_ms: float) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    streams = KafkaStreams(kafka, topic_prefix=prefix)
    streams.create_inputs()
    plan = planned_workload(seed=3, commands=int(rate * seconds), users=200, symbols=3)
    head = plan[: len(plan) - int(rate * seconds)]  # listings and deposits
    body = plan[len(head) :]
    log = streams.commands(writer=True)
    CommandProducer(log).send(head)
    running = [service("ubscore", kafka, prefix, batch, wait_ms), service("engine", kafka, prefix, batch, wait_ms)]
    seen_answer: dict[int, float] = {}  # input offset -> wall ms seen
    settled: list[tuple[int, float]] = []  # (taker order id, wall ms seen)
    accepted: dict[int, int] = {}  # order id -> input offset
    stop_reading = threading.Event()

    def read() -> None:
        events = streams.events()
        offset = 0
        while not stop_reading.is_set():
            found = events.read(offset, 5_000)
            now = time.time() * 1000
            for raw in found.values:
                event = EVENTS.decode(raw)
                if getattr(event, "input_offset", -1) >= 0:
                    seen_answer[event.input_offset] = now
                if type(event) is OrderAccepted:
                    accepted[event.order_id] = event.input_offset
                elif type(event) is TradeSettled:
                    settled.append((event.taker_order_id, now))
            offset = found.next_offset
            if not found.values:
                time.sleep(0.001)
        events.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(3)  # the services are up and the setup answered
    first = log.end_offset()
    sent_ms: dict[int, float] = {}
    producer = CommandProducer(log)
    # Sent in groups every TICK_S (one acknowledged append each), so the producer keeps
    # the rate; each command carries its group's send time.
    group = max(1, int(rate * TICK_S))
    next_at = time.monotonic()
    for start in range(0, len(body), group):
        now_ms = time.time() * 1000
        stamped = [msgspec.structs.replace(c, ts_ms=int(now_ms)) for c in body[start : start + group]]
        first_offset = producer.send(stamped)
        for i in range(len(stamped)):
            sent_ms[first_offset + i] = now_ms
        next_at += TICK_S
        pause = next_at - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        elif -pause > 5:
            break  # cannot keep the rate: report what was sent
    time.sleep(QUIET_S + 1)
    stop_reading.set()
    reader.join(timeout=10)
    stop(running)
    log.close()
    answers = sorted(seen_answer[o] - sent_ms[o] for o in sent_ms if o in seen_answer)
    settles = sorted(
        when - sent_ms[accepted[taker]] for taker, when in settled if taker in accepted and accepted[taker] in sent_ms
    )

    def pct(values: list[float], p: float) -> float:
        return round(values[min(len(values) - 1, int(len(values) * p))], 1) if values else -1.0

    return {
        "rate": rate,
        "sent": len(sent_ms),
        "first_offset": first,
        "answered": len(answers),
        "answer_ms_p50": pct(answers, 0.5),
        "answer_ms_p99": pct(answers, 0.99),
        "settled_trades": len(settles),
        "settlement_ms_p50": pct(settles, 0.5),
        "settlement_ms_p99": pct(settles, 0.99),
        "orders": sum(1 for c in body if type(c) is PlaceOrder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batch-wait-ms", type=float, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    commands = planned_workload(seed=13, commands=args.commands, users=200, symbols=3)
    result: dict[str, Any] = {"commands": len(commands), "batch": args.batch, "batch_wait_ms": args.batch_wait_ms}
    if not args.skip_throughput:
        result["in_process_commands_per_s"] = round(in_process_rate(commands))
        result["services"] = bench_throughput(args.kafka, commands, args.batch, args.batch_wait_ms)
        result["ratio"] = round(result["services"]["commands_per_s"] / result["in_process_commands_per_s"], 2)
    if not args.skip_latency:
        result["latency"] = bench_latency(args.kafka, args.rate, args.seconds, args.batch, args.batch_wait_ms)
    print(
        msgspec.json.encode(result).decode() if args.json else msgspec.json.format(msgspec.json.encode(result)).decode()
    )


if __name__ == "__main__":
    main()
