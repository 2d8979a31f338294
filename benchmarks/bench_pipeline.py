"""The services end to end on the real Kafka (and Cassandra for the projector): throughput
against the in-process exchange on the same commands, how far the projector falls
behind, latency at a steady rate, and a sweep of batch size and batch wait.

    python benchmarks/bench_pipeline.py [--kafka 127.0.0.1:9092] [--cql 127.0.0.1:9042]
        [--commands 30000] [--rate 1000] [--seconds 20] [--project-rate 300]
        [--batch 500] [--batch-wait-ms 2] [--skip-throughput] [--skip-latency]
        [--skip-project] [--sweep] [--sweep-batches 50,200,500,2000]
        [--sweep-waits 0,2,10] [--sweep-seconds 10] [--profile DIR] [--json]

1. Throughput: ``ledger run ubscore`` and ``ledger run engine`` (separate processes, the
   projector stopped) are started on the listings and deposits of a planned workload
   (``ledger.app.load``) and warmed (those answered, every engine stream open); then
   ``--commands`` commands are produced as fast as the producer goes. The rate is those
   commands over the time from the first produce to the last event on balance.events
   (its end unchanged for ``QUIET_S`` and the last command answered), against the
   in-process exchange on the same commands, timed in this run just before. Every
   command is checked to have exactly one answer.
2. The same with ``ledger run project`` into Cassandra running alongside from the start:
   the services' rate with the projector competing for the CPUs, how far the
   projector's checkpoint of balance.events falls behind the end (in events and in
   seconds: how long ago the end was where the checkpoint is), and how long after the
   last event the projection covers every stream.
3. Latency at a steady ``--rate`` commands/s for ``--seconds`` (projector stopped): each
   command carries its send time (``ts_ms``); a reader of balance.events in this
   process notes when each answer and each trade's settlement becomes visible. p50 and
   p99 from the send (before the acknowledged produce) to the answer, and from the
   taker's send to its trade's ``TradeSettled``.
4. The projected row at ``--project-rate`` commands/s: as 3, with the projector running
   and a poller reading its balance.events checkpoint from Cassandra every
   ``CHECKPOINT_POLL_S``; a row is projected when the checkpoint (written after the
   rows of its commit) reaches its event's seq. For each trade (the ``settled_trades``
   row, from the taker's send) and each command (its answer's rows).
5. ``--sweep``: 1 and 3 for each ``--batch`` x ``--batch-wait-ms`` of the lists.

Every wait has a limit; the script stops the service processes it started (by their
handles: SIGTERM, then SIGKILL). Start the servers first: ``bash scripts/services.sh
up``. Topics are prefixed ``bench-<random>-`` and left on the broker; keyspaces are
dropped. ``--profile DIR`` runs the ubscore and engine services under cProfile, one file
per service and run.
"""

from __future__ import annotations

import argparse
import bisect
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from ledger.app.exchange import Exchange
from ledger.app.load import planned_workload
from ledger.app.producer import CommandProducer
from ledger.app.services import last_answers
from ledger.app.streams import KafkaStreams
from ledger.logs import layout
from ledger.logs.base import Log, MemoryLog, scan
from ledger.protocol.codec import EVENTS, OUTPUTS
from ledger.protocol.commands import PlaceOrder
from ledger.protocol.events import OrderAccepted, TradeSettled

ROOT = Path(__file__).resolve().parent.parent
# The end of balance.events unchanged this long: the run is over.
QUIET_S = 2.0
# The steady load is sent in groups this often.
TICK_S = 0.01
# How often the ends of the logs and the projector's checkpoints are looked at.
MONITOR_POLL_S = 0.02
CHECKPOINT_POLL_S = 0.005
# Every wait gives up after this long.
RUN_LIMIT_S = 300.0
START_LIMIT_S = 60.0
USERS = 200
SYMBOLS = 3
# The throughput run's commands are produced in appends of this many.
PRODUCE_COMMANDS = 2_000

LOG_DIR = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
PROFILE_DIR: Path | None = None


class BenchError(Exception):
    pass


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def in_process_rate(head: list[Any], body: list[Any]) -> float:
    """Commands/s of the in-process exchange on ``body`` (after ``head``, not timed)."""
    outputs: dict[str, MemoryLog] = {}
    exchange = Exchange(MemoryLog(), MemoryLog(), lambda s: outputs.setdefault(s, MemoryLog(s)))
    exchange.submit(head)
    started = time.perf_counter()
    for start in range(0, len(body), 1_000):
        exchange.submit(body[start : start + 1_000])
    return len(body) / (time.perf_counter() - started)


def service(name: str, kafka: str, prefix: str, batch: int, wait_ms: float, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    argv = [sys.executable]
    if PROFILE_DIR is not None and name in ("ubscore", "engine"):
        argv += ["-m", "cProfile", "-o", str(PROFILE_DIR / f"{prefix}{name}.prof")]
    argv += [
        "-m",
        "ledger.app.cli",
        "run",
        name,
        "--kafka",
        kafka,
        "--topic-prefix",
        prefix,
        "--log-every-s",
        "0",
    ]
    if name != "project":
        argv += ["--batch", str(batch), "--batch-wait-ms", str(wait_ms)]
    argv += list(extra)
    out = open(LOG_DIR / f"{prefix}{name}.log", "wb")  # noqa: SIM115 (the child holds it)
    try:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    finally:
        out.close()


def check_running(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        code = process.poll()
        if code is not None:
            name = process.args[process.args.index("run") + 1]  # type: ignore[union-attr]
            prefix = process.args[process.args.index("--topic-prefix") + 1]  # type: ignore[union-attr]
            tail = (LOG_DIR / f"{prefix}{name}.log").read_text(errors="replace")[-2000:]
            raise BenchError(f"service {name} exited with {code}:\n{tail}")


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM (the batch in hand is finished), SIGKILL after 30 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def last_seq(log: Log, kind: Any) -> int:
    """The seq of the last record of ``log`` (0 if none)."""
    end = log.end_offset()
    span = 64
    while True:
        start = max(0, end - span)
        values = [v for batch in scan(log, start, end) for v in batch.values]
        if values:
            return int(kind.decode(values[-1]).seq)
        if start == 0:
            return 0
        span *= 4


def pct(values: list[float], p: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * p))], 1) if values else -1.0


class CheckpointPoller:
    """Reads the projector's checkpoints from Cassandra in a thread: for balance.events,
    every change with the time it was seen; for every stream, the latest."""

    def __init__(self, cql: str, keyspace: str, poll_s: float) -> None:
        self.cql = cql
        self.keyspace = keyspace
        self.poll_s = poll_s
        self.times: list[float] = []  # monotonic s, rising
        self.seqs: list[int] = []  # balance.events checkpoint seq at that time, rising
        self.offsets: list[int] = []  # its next_offset
        self.latest: dict[str, int] = {}  # stream -> checkpoint seq
        self.streams: list[str] = [layout.EVENTS]
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from settlement.cql import CqlStore

        host, port = self.cql.rsplit(":", 1)
        store = None
        deadline = time.monotonic() + START_LIMIT_S
        try:
            while store is None and not self._stop.is_set():
                try:
                    store = CqlStore((host,), int(port), self.keyspace, create=False)
                except Exception:  # noqa: BLE001 (the projector has not made it yet)
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            round_ = 0
            while store is not None and not self._stop.is_set():
                checkpoint = store.checkpoint(layout.EVENTS)
                now = time.monotonic()
                if checkpoint is not None and (not self.seqs or checkpoint.seq != self.seqs[-1]):
                    self.times.append(now)
                    self.seqs.append(checkpoint.seq)
                    self.offsets.append(checkpoint.next_offset)
                    self.latest[layout.EVENTS] = checkpoint.seq
                round_ += 1
                if round_ % 20 == 0:
                    for stream in self.streams[1:]:
                        other = store.checkpoint(stream)
                        if other is not None:
                            self.latest[stream] = other.seq
                time.sleep(self.poll_s)
        except BaseException as error:  # noqa: BLE001 (reported by the caller)
            self.error = error
        finally:
            if store is not None:
                store.close()

    def seen_at(self, seq: int) -> float | None:
        """When the balance.events checkpoint was first seen at or past ``seq``."""
        i = bisect.bisect_left(self.seqs, seq)
        return self.times[i] if i < len(self.seqs) else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def drop_keyspace(cql: str, keyspace: str) -> None:
    from settlement.cql import CqlStore

    host, port = cql.rsplit(":", 1)
    try:
        store = CqlStore((host,), int(port), keyspace, create=False)
    except Exception:  # noqa: BLE001 (never made)
        return
    try:
        store.drop()
    finally:
        store.close()


def put_commands(streams: KafkaStreams, commands: list[Any]) -> float:
    streams.create_inputs()
    log = streams.commands(writer=True)
    started = time.perf_counter()
    producer = CommandProducer(log)
    for start in range(0, len(commands), 10_000):
        producer.send(commands[start : start + 10_000])
    seconds = time.perf_counter() - started
    log.close()
    return len(commands) / seconds


def count_answers(streams: KafkaStreams) -> tuple[int, int, int]:
    """(commands answered, commands answered twice, trades settled) on balance.events."""
    log = streams.events()
    answered: set[int] = set()
    twice = trades = 0
    previous = -1
    try:
        for batch in scan(log):
            for raw in batch.values:
                event = EVENTS.decode(raw)
                if type(event) is TradeSettled:
                    trades += 1
                    continue
                offset = getattr(event, "input_offset", -1)
                if offset >= 0 and offset != previous:  # one answer may be several events
                    if offset in answered:
                        twice += 1
                    answered.add(offset)
                    previous = offset
    finally:
        log.close()
    return len(answered), twice, trades


def wait_ready(
    streams: KafkaStreams, answered_upto: int, running: list[subprocess.Popen[bytes]], poller: CheckpointPoller | None
) -> None:
    """Until the command at offset ``answered_upto`` is answered, every symbol's engine
    has opened its stream (its producer's transactions initialised) and, with a poller,
    the projection has caught up with balance.events."""
    events = streams.events()
    deadline = time.monotonic() + START_LIMIT_S
    try:
        while True:
            check_running(running)
            if poller is not None and poller.error is not None:
                raise BenchError(f"checkpoint poller: {poller.error!r}")
            answered = last_answers(events, 1) if events.end_offset() else []
            if answered and answered[0].input_offset == answered_upto:
                symbols = streams.output_symbols()
                opened = 0
                for symbol in symbols:
                    out = streams.outputs(symbol)
                    try:
                        opened += out.end_offset() > 0
                    finally:
                        out.close()
                if opened == SYMBOLS and (
                    poller is None or poller.latest.get(layout.EVENTS, 0) >= last_seq(events, EVENTS)
                ):
                    return
            if time.monotonic() > deadline:
                raise BenchError(f"the services not ready {START_LIMIT_S} s after their start")
            time.sleep(0.1)
    finally:
        events.close()


def bench_throughput(
    kafka: str, cql: str, head: list[Any], body: list[Any], batch: int, wait_ms: float, project: bool
) -> dict[str, Any]:
    """The services started and warm (the listings and deposits of ``head`` answered,
    every engine's stream open), then ``body`` produced as fast as the producer goes:
    its commands over the time from the first produce to the last event."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    streams = KafkaStreams(kafka, topic_prefix=prefix)
    put_commands(streams, head)
    keyspace = f"bench_{uuid.uuid4().hex[:8]}"
    running = [service("ubscore", kafka, prefix, batch, wait_ms), service("engine", kafka, prefix, batch, wait_ms)]
    poller: CheckpointPoller | None = None
    events = streams.events()
    ends_t: list[float] = []  # when balance.events' end was first seen at each value
    ends: list[int] = []
    result: dict[str, Any] = {}
    producing: threading.Thread | None = None
    try:
        if project:
            running.append(service("project", kafka, prefix, batch, wait_ms, "--store", f"cql://{cql}/{keyspace}"))
            poller = CheckpointPoller(cql, keyspace, MONITOR_POLL_S)
        wait_ready(streams, len(head) - 1, running, poller)
        result["load"] = load_avg()
        base_end = events.end_offset()
        produced: list[float] = []

        def produce() -> None:
            log = streams.commands(writer=True)
            producer = CommandProducer(log)
            for start in range(0, len(body), PRODUCE_COMMANDS):
                producer.send(body[start : start + PRODUCE_COMMANDS])
            produced.append(time.monotonic())
            log.close()

        started = time.monotonic()
        producing = threading.Thread(target=produce, daemon=True)
        producing.start()
        last_move = started
        deadline = started + RUN_LIMIT_S
        final = len(head) + len(body) - 1
        while True:
            if time.monotonic() > deadline:
                raise BenchError(f"balance.events still moving after {RUN_LIMIT_S} s")
            check_running(running)
            end = events.end_offset()
            now = time.monotonic()
            if end > (ends[-1] if ends else base_end):
                ends_t.append(now)
                ends.append(end)
                last_move = now
            elif now - last_move >= QUIET_S and produced:
                # Quiet, and the last command answered: over (its trades settle before).
                answered = last_answers(events, 1)
                if answered and answered[0].input_offset == final:
                    break
            time.sleep(MONITOR_POLL_S)
        seconds = last_move - started
        final_end = ends[-1]
        final_seq = last_seq(events, EVENTS)
        result.update(
            commands=len(body),
            events=final_seq,
            producer_seconds=round(produced[0] - started, 2),
            seconds=round(seconds, 2),
            commands_per_s=round(len(body) / seconds),
        )
        if poller is not None:
            symbols = streams.output_symbols()
            wanted = {layout.EVENTS: final_seq}
            for symbol in symbols:
                out = streams.outputs(symbol)
                try:
                    wanted[layout.output_stream(symbol)] = last_seq(out, OUTPUTS)
                finally:
                    out.close()
            poller.streams = list(wanted)
            while any(poller.latest.get(s, 0) < seq for s, seq in wanted.items()):
                if poller.error is not None:
                    raise BenchError(f"checkpoint poller: {poller.error!r}")
                if time.monotonic() > deadline:
                    raise BenchError(f"the projection not complete after {RUN_LIMIT_S} s: {poller.latest} of {wanted}")
                check_running(running)
                time.sleep(MONITOR_POLL_S)
            done = time.monotonic()
            # The projector's lag at each of its checkpoints after the start: in events
            # (offsets behind the end) and in seconds (how long ago the end was where
            # the checkpoint is).
            lag_events: list[int] = []
            lag_s: list[float] = []
            for t, offset in zip(poller.times, poller.offsets, strict=True):
                if t < started:
                    continue
                i = bisect.bisect_left(ends, offset)
                if i < len(ends):
                    lag_s.append(max(t - ends_t[i], 0.0))
                j = bisect.bisect_right(ends_t, t) - 1
                if j >= 0:
                    lag_events.append(max(ends[j] - offset, 0))
            at_last = [o for t, o in zip(poller.times, poller.offsets, strict=True) if t <= last_move]
            result.update(
                projector_behind_at_last_event=final_end - (at_last[-1] if at_last else 0),
                projector_behind_max=max(lag_events, default=0),
                projector_lag_s_p50=round(sorted(lag_s)[len(lag_s) // 2], 2) if lag_s else -1,
                projector_lag_s_max=round(max(lag_s, default=-1), 2),
                projection_done_after_last_event_s=round(done - last_move, 2),
                projector_events_per_s=round((final_seq - len(head)) / (done - started)),
            )
    finally:
        stop(running)
        events.close()
        if producing is not None:
            producing.join(timeout=60)
        if poller is not None:
            poller.stop()
            drop_keyspace(cql, keyspace)
    answered, twice, trades = count_answers(streams)
    if answered != len(head) + len(body) or twice:
        raise BenchError(f"{answered} of {len(head) + len(body)} commands answered, {twice} twice")
    result["trades"] = trades
    return result


def bench_latency(
    kafka: str, cql: str, rate: int, seconds: float, batch: int, wait_ms: float, project: bool
) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    streams = KafkaStreams(kafka, topic_prefix=prefix)
    streams.create_inputs()
    plan = planned_workload(seed=3, commands=int(rate * seconds), users=USERS, symbols=SYMBOLS)
    head = plan[: len(plan) - int(rate * seconds)]  # listings and deposits
    body = plan[len(head) :]
    log = streams.commands(writer=True)
    CommandProducer(log).send(head)
    keyspace = f"bench_{uuid.uuid4().hex[:8]}"
    running = [service("ubscore", kafka, prefix, batch, wait_ms), service("engine", kafka, prefix, batch, wait_ms)]
    poller: CheckpointPoller | None = None
    if project:
        running.append(service("project", kafka, prefix, batch, wait_ms, "--store", f"cql://{cql}/{keyspace}"))
        poller = CheckpointPoller(cql, keyspace, CHECKPOINT_POLL_S)
    seen_answer: dict[int, float] = {}  # input offset -> monotonic s its first answer was seen
    answer_seq: dict[int, int] = {}  # input offset -> seq of its last answering event
    settled: list[tuple[int, int, float]] = []  # (taker order id, seq, monotonic s seen)
    accepted: dict[int, int] = {}  # order id -> input offset
    stop_reading = threading.Event()
    reader_error: list[BaseException] = []

    def read() -> None:
        events = streams.events()
        offset = 0
        try:
            while not stop_reading.is_set():
                found = events.read(offset, 5_000)
                now = time.monotonic()
                for raw in found.values:
                    event = EVENTS.decode(raw)
                    kind = type(event)
                    if kind is TradeSettled:
                        settled.append((event.taker_order_id, event.seq, now))
                        continue
                    input_offset = getattr(event, "input_offset", -1)
                    if input_offset >= 0:
                        seen_answer.setdefault(input_offset, now)
                        answer_seq[input_offset] = event.seq
                    if kind is OrderAccepted:
                        accepted[event.order_id] = input_offset
                offset = found.next_offset
                if not found.values:
                    time.sleep(0.002)
        except BaseException as error:  # noqa: BLE001 (reported below)
            reader_error.append(error)
        finally:
            events.close()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent_at: dict[int, float] = {}  # input offset -> monotonic s before its produce
    produce_s: list[float] = []
    result: dict[str, Any] = {"rate": rate, "load_before": load_avg()}
    try:
        # The services are up, the setup is answered (and projected), every engine's
        # stream is open; then a second more for the start-up to settle.
        wait_ready(streams, len(head) - 1, running, poller)
        time.sleep(1.0)
        if reader_error:
            raise BenchError(f"reader: {reader_error[0]!r}")
        producer = CommandProducer(log)
        # Sent in groups every TICK_S (one acknowledged append each), so the producer keeps
        # the rate; each command carries its group's send time.
        group = max(1, int(rate * TICK_S))
        send_started = next_at = time.monotonic()
        behind = False
        for start in range(0, len(body), group):
            now = time.monotonic()
            stamped = [msgspec.structs.replace(c, ts_ms=int(time.time() * 1000)) for c in body[start : start + group]]
            first_offset = producer.send(stamped)
            produce_s.append(time.monotonic() - now)
            for i in range(len(stamped)):
                sent_at[first_offset + i] = now
            next_at += TICK_S
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            elif -pause > 5:
                behind = True
                break  # cannot keep the rate: report what was sent
        send_seconds = time.monotonic() - send_started
        # Everything sent answered (and projected), or a limit.
        deadline = time.monotonic() + 60
        last = max(sent_at)
        while last not in seen_answer or (poller is not None and poller.seen_at(answer_seq[last]) is None):
            if time.monotonic() > deadline or reader_error:
                raise BenchError(f"not all answered 60 s after the last send: {reader_error}")
            check_running(running)
            time.sleep(0.05)
        time.sleep(1.0)  # the last trades' settlements
        result["load_after"] = load_avg()
    finally:
        stop_reading.set()
        reader.join(timeout=10)
        stop(running)
        log.close()
        if poller is not None:
            poller.stop()
            drop_keyspace(cql, keyspace)
    if reader_error:
        raise BenchError(f"reader: {reader_error[0]!r}")
    ms = 1000.0
    answers = sorted((seen_answer[o] - t) * ms for o, t in sent_at.items() if o in seen_answer)
    takers = [(accepted[taker], seq, when) for taker, seq, when in settled if accepted.get(taker, -1) in sent_at]
    settles = sorted((when - sent_at[o]) * ms for o, _seq, when in takers)
    result.update(
        sent=len(sent_at),
        sent_per_s=round(len(sent_at) / send_seconds),
        kept_rate=not behind,
        produce_ms_p50=pct(sorted(x * ms for x in produce_s), 0.5),
        produce_ms_p99=pct(sorted(x * ms for x in produce_s), 0.99),
        answered=len(answers),
        answer_ms_p50=pct(answers, 0.5),
        answer_ms_p99=pct(answers, 0.99),
        answer_ms_max=round(answers[-1], 1) if answers else -1,
        settled_trades=len(settles),
        settlement_ms_p50=pct(settles, 0.5),
        settlement_ms_p99=pct(settles, 0.99),
        orders=sum(1 for c in body if type(c) is PlaceOrder),
    )
    if poller is not None:
        rows = []
        for o, seq, _when in takers:
            seen = poller.seen_at(seq)
            if seen is not None:
                rows.append((seen - sent_at[o]) * ms)
        commands_rows = []
        for o, t in sent_at.items():
            seq = answer_seq.get(o)
            seen = poller.seen_at(seq) if seq is not None else None
            if seen is not None:
                commands_rows.append((seen - t) * ms)
        rows.sort()
        commands_rows.sort()
        result.update(
            trade_row_ms_p50=pct(rows, 0.5),
            trade_row_ms_p99=pct(rows, 0.99),
            trade_rows=len(rows),
            command_rows_ms_p50=pct(commands_rows, 0.5),
            command_rows_ms_p99=pct(commands_rows, 0.99),
            checkpoint_poll_ms=CHECKPOINT_POLL_S * ms,
        )
    return result


def main() -> None:
    global PROFILE_DIR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--cql", default="127.0.0.1:9042")
    parser.add_argument("--commands", type=int, default=30_000)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--project-rate", type=int, default=300)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batch-wait-ms", type=float, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-project", action="store_true", help="no projector runs (2 and 4)")
    parser.add_argument("--sweep", action="store_true", help="only the batch x wait sweep")
    parser.add_argument("--sweep-batches", default="50,200,500,2000")
    parser.add_argument("--sweep-waits", default="0,2,10")
    parser.add_argument("--sweep-seconds", type=float, default=10)
    parser.add_argument("--profile", help="run ubscore and engine under cProfile, the files in this directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.profile:
        PROFILE_DIR = Path(args.profile).resolve()
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    plan = planned_workload(seed=13, commands=args.commands, users=USERS, symbols=SYMBOLS)
    head, body = plan[: len(plan) - args.commands], plan[len(plan) - args.commands :]
    result: dict[str, Any] = {"commands": len(body), "load_start": load_avg(), "service_logs": str(LOG_DIR)}

    def throughput(batch: int, wait_ms: float, project: bool) -> dict[str, Any]:
        in_process = in_process_rate(head, body)
        found = bench_throughput(args.kafka, args.cql, head, body, batch, wait_ms, project)
        found["in_process_commands_per_s"] = round(in_process)
        found["ratio"] = round(found["commands_per_s"] / in_process, 3)
        return found

    if args.sweep:
        rows = []
        for batch in [int(x) for x in args.sweep_batches.split(",")]:
            for wait in [float(x) for x in args.sweep_waits.split(",")]:
                row: dict[str, Any] = {"batch": batch, "batch_wait_ms": wait}
                try:
                    if not args.skip_throughput:
                        row["throughput"] = throughput(batch, wait, project=False)
                    if not args.skip_latency:
                        row["latency"] = bench_latency(
                            args.kafka, args.cql, args.rate, args.sweep_seconds, batch, wait, project=False
                        )
                except Exception as error:  # noqa: BLE001 (one point of the sweep lost, not all)
                    row["error"] = f"{type(error).__name__}: {error}"
                print(msgspec.json.encode(row).decode(), file=sys.stderr, flush=True)
                rows.append(row)
        result["sweep"] = rows
    else:
        result.update(batch=args.batch, batch_wait_ms=args.batch_wait_ms)
        if not args.skip_throughput:
            result["throughput"] = throughput(args.batch, args.batch_wait_ms, project=False)
            if not args.skip_project:
                result["throughput_with_projector"] = throughput(args.batch, args.batch_wait_ms, project=True)
        if not args.skip_latency:
            result["latency"] = bench_latency(
                args.kafka, args.cql, args.rate, args.seconds, args.batch, args.batch_wait_ms, project=False
            )
            if not args.skip_project:
                result["latency_projected"] = bench_latency(
                    args.kafka, args.cql, args.project_rate, args.seconds, args.batch, args.batch_wait_ms, project=True
                )
    result["load_end"] = load_avg()
    print(
        msgspec.json.encode(result).decode() if args.json else msgspec.json.format(msgspec.json.encode(result)).decode()
    )


if __name__ == "__main__":
    main()
