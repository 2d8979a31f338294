"""The gateway over HTTP against the gateway's own path to the logs (``Bridge``, the
Python API), with the real services behind both, in one run.

    python benchmarks/bench_gateway.py [--kafka 127.0.0.1:9092] [--cql 127.0.0.1:9042]
        [--clients 32] [--seconds 15] [--rate 100] [--latency-seconds 25] [--rounds 2]
        [--skip-project] [--json]

A deployment on fresh topics and a fresh keyspace: ``ledger run ubscore``, ``ledger run
engine``, ``ledger run project`` (into Cassandra; ``--skip-project`` leaves it out) and
``ledger run gateway`` (its rate limit raised out of the way), each its own process.
One symbol, BTC-USDT; ``--clients`` users, each with a trader key and funds.

Every order is a limit order of one lot at one price: clients of even number buy, of
odd number sell, so about half the orders trade and the book stays small. Each carries
a client order id (unique over the run, whatever the path), so the two paths never
share a request id.

Per round, and for each path:

1. Throughput: ``--clients`` clients each send their next order when the last one is
   answered, for ``--seconds``. Orders answered/s (accepted: HTTP 200 /
   ``OrderAccepted``), and the CPU the load generator (this process) and the gateway
   process used, as a share of one core.
2. Latency at a steady ``--rate`` orders/s for ``--latency-seconds`` (sent on schedule,
   whatever is still outstanding): p50, p99, p999 and max from the scheduled send to the
   answer.

HTTP: ``ledger.client.AsyncClient`` (httpx, Ed25519 signatures) to the gateway process:
request, signature check, JSON and decimal conversion, the gateway's request table,
balance.operations, UBSCore, balance.events, the answer. Python API: a
``ledger.app.gateway.bridge.Bridge`` in this process on the same topics (its own
request table), given ``PlaceOrder`` commands in integer units: the same path without
HTTP, signatures, JSON and decimals. The rounds alternate the paths, for ratios within
one run. Every wait has a limit; the script stops the processes it started (SIGTERM,
then SIGKILL) and drops its keyspace. Start the servers first: ``bash
scripts/services.sh up``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from bench_pipeline import drop_keyspace, load_avg, pct, stop

from ledger.app.gateway.bridge import Bridge, request_digest
from ledger.app.gateway.keys import KeyStore
from ledger.app.streams import KafkaStreams
from ledger.client import AsyncClient, Client
from ledger.protocol.codec import EVENTS
from ledger.protocol.commands import PlaceOrder, Side
from ledger.protocol.events import OrderAccepted

ROOT = Path(__file__).resolve().parent.parent
START_LIMIT_S = 60.0
# A request unanswered this long fails the run (the gateway answers 202 after 5 s).
REQUEST_LIMIT_S = 30.0
# Orders outstanding at once in the latency run, at most (beyond: the run fails, the
# path cannot keep up with the rate).
OUTSTANDING_MAX = 2_000
# The gateway's rate limit, out of the way of a benchmark.
RATE_UNLIMITED = "1000000"
PRICE = "100"  # USDT per BTC, whole ticks
LOT = "0.01"
QTY_LOTS = 1
DEPOSIT = {"BTC": "1000", "USDT": "10000000"}


class BenchError(Exception):
    pass


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Deployment:
    """The services and a gateway on fresh topics and a fresh keyspace."""

    def __init__(self, kafka: str, cql: str, project: bool, logs: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.kafka = kafka
        self.cql = cql
        self.prefix = f"bench-gw-{tag}-"
        self.keyspace = f"bench_gw_{tag}"
        self.store = f"cql://{cql}/{self.keyspace}"
        self.project = project
        self.logs = logs
        self.db = logs / "gateway.db"
        self.streams = KafkaStreams(kafka, topic_prefix=self.prefix)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self.url = ""

    def _start(self, name: str, *argv: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (the child holds it)
        try:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "ledger.app.cli", "run", name, "--kafka", self.kafka, "--topic-prefix",
                 self.prefix, *argv], stdout=out, stderr=subprocess.STDOUT, env=env)
        finally:
            out.close()

    def start(self) -> None:
        import socket

        self.streams.create_inputs()
        common = ["--idle-exit-s", "0", "--log-every-s", "0"]
        self._start("ubscore", *common)
        self._start("engine", *common)
        if self.project:
            self._start("project", *common, "--store", self.store)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._start("gateway", "--store", self.store, "--db", str(self.db), "--port", str(self.port),
                    "--rate-per-s", RATE_UNLIMITED, "--burst", RATE_UNLIMITED)
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            self.check()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"the gateway did not listen within {START_LIMIT_S:g} s") from None
                time.sleep(0.1)

    def check(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise BenchError(f"{name} exited with {process.returncode}: see {self.logs / (name + '.log')}")

    def stop(self) -> None:
        stop(list(self.processes.values()))
        self.processes.clear()
        if self.project:
            drop_keyspace(self.cql, self.keyspace)


class Orders:
    """Client order ids, unique over the run whatever the path."""

    def __init__(self) -> None:
        self.next_id = 1

    def take(self) -> int:
        self.next_id += 1
        return self.next_id - 1


async def http_sender(url: str, keys: list[tuple[str, str]], orders: Orders
                      ) -> tuple[list[Callable[[], Awaitable[bool]]], Callable[[], Awaitable[None]]]:
    """One order sender per client over HTTP, and what closes their connections."""
    clients = [AsyncClient(url, *key, timeout_s=REQUEST_LIMIT_S) for key in keys]

    def sender(i: int) -> Callable[[], Awaitable[bool]]:
        client = clients[i]
        side = "buy" if i % 2 == 0 else "sell"

        async def send() -> bool:
            body = {"symbol": "BTC-USDT", "side": side, "qty": LOT, "price": PRICE,
                    "client_order_id": orders.take()}
            reply = await client.call("POST", "/v1/orders", body)
            if reply.status != 200:
                raise BenchError(f"an order was answered {reply.status}: {reply.body}")
            return True

        return send

    async def close() -> None:
        await asyncio.gather(*(c.aclose() for c in clients))

    return [sender(i) for i in range(len(keys))], close


def api_sender(bridge: Bridge, users: list[int], orders: Orders) -> list[Callable[[], Awaitable[bool]]]:
    """One order sender per client through ``bridge`` (integer units: 1 lot, price in ticks)."""
    price_ticks = int(PRICE)

    def sender(i: int) -> Callable[[], Awaitable[bool]]:
        user = users[i]
        side = Side.BUY if i % 2 == 0 else Side.SELL
        scope = f"user:{user}"

        async def send() -> bool:
            client_id = orders.take()
            command = PlaceOrder(user, client_id, "BTC-USDT", side, QTY_LOTS, price_ticks,
                                 ts_ms=int(time.time() * 1000))
            sent = await bridge.send(command, scope, None, request_digest("POST", "/v1/orders", b""), client_id)
            if sent.offset is None:
                raise BenchError(f"an order was not sent (request {sent.ref})")
            answer = sent.answer or await bridge.answer(sent.offset, REQUEST_LIMIT_S)
            if answer is None:
                raise BenchError(f"no answer to the order at offset {sent.offset} within {REQUEST_LIMIT_S:g} s")
            event = EVENTS.decode(answer, "balance.events record")
            if type(event) is not OrderAccepted:
                raise BenchError(f"an order was answered {event}")
            return True

        return send

    return [sender(i) for i in range(len(users))]


async def throughput(senders: list[Callable[[], Awaitable[bool]]], seconds: float, gateway_pid: int | None
                     ) -> dict[str, Any]:
    """Each sender in a closed loop for ``seconds``: orders answered/s and CPU shares."""
    count = 0
    until = time.monotonic() + seconds

    async def loop(send: Callable[[], Awaitable[bool]]) -> None:
        nonlocal count
        while time.monotonic() < until:
            await send()
            count += 1

    cpu0, gw0, started = time.process_time(), cpu_s(gateway_pid) if gateway_pid else 0.0, time.monotonic()
    await asyncio.gather(*(loop(s) for s in senders))
    wall = time.monotonic() - started
    result = {"orders": count, "seconds": round(wall, 2), "orders_per_s": round(count / wall),
              "generator_cpu": round((time.process_time() - cpu0) / wall, 2)}
    if gateway_pid:
        result["gateway_cpu"] = round((cpu_s(gateway_pid) - gw0) / wall, 2)
    return result


async def latency(senders: list[Callable[[], Awaitable[bool]]], rate: float, seconds: float) -> dict[str, Any]:
    """Orders sent on a schedule of ``rate``/s, round robin over the senders: the time from
    each order's scheduled send to its answer."""
    latencies: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    total = int(rate * seconds)
    started = time.monotonic()

    async def one(send: Callable[[], Awaitable[bool]], due: float) -> None:
        await send()
        latencies.append(time.monotonic() - due)

    for n in range(total):
        due = started + n / rate
        delay = due - time.monotonic()
        if delay > 0:  # never early: an order sent before its time would be measured short
            await asyncio.sleep(delay)
        if len(tasks) >= OUTSTANDING_MAX:
            raise BenchError(f"{OUTSTANDING_MAX:,} orders outstanding at {rate:g}/s: the path cannot keep up")
        task = asyncio.create_task(one(senders[n % len(senders)], due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait_for(asyncio.gather(*tasks), REQUEST_LIMIT_S)
    ms = sorted(x * 1000 for x in latencies)
    return {"orders": len(ms), "rate": rate, "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99),
            "p999_ms": pct(ms, 0.999), "max_ms": round(ms[-1], 1)}


def set_up(deployment: Deployment, clients: int) -> tuple[list[int], list[tuple[str, str]]]:
    """Listings, users, their keys and funds (over HTTP, by an operator key)."""
    users = [1_000 + i for i in range(clients)]
    with KeyStore(deployment.db) as keys:
        traders = [(k.key_id, private) for k, private in (keys.create(u, "trader") for u in users)]
        operator_key, operator_private = keys.create(0, "operator")
    operator = Client(deployment.url, operator_key.key_id, operator_private)
    try:
        operator.list_asset("BTC", 8).check()
        operator.list_asset("USDT", 6).check()
        operator.list_symbol("BTC-USDT", "BTC", "USDT", lot=LOT, price_step="1").check()
        for user in users:
            for asset, amount in DEPOSIT.items():
                operator.call("POST", "/v1/deposits", {"user": user, "asset": asset, "amount": amount}).check()
    finally:
        operator.close()
    return users, traders


async def run(args: argparse.Namespace, deployment: Deployment, users: list[int], keys: list[tuple[str, str]]
              ) -> list[dict[str, Any]]:
    orders = Orders()
    gateway_pid = deployment.processes["gateway"].pid
    streams = deployment.streams
    bridge = Bridge(deployment.logs / "api.db", streams.commands(writer=True), streams.events(), streams.events())
    bridge.start()
    results: list[dict[str, Any]] = []
    http, close_http = await http_sender(deployment.url, keys, orders)
    api = api_sender(bridge, users, orders)
    try:
        # Warm both paths (connections, the engine's stream, the bridges' tailers).
        await throughput(http, 2.0, None)
        await throughput(api, 2.0, None)
        for round_no in range(1, args.rounds + 1):
            for path, senders in (("http", http), ("api", api)):
                deployment.check()
                row: dict[str, Any] = {"round": round_no, "path": path, "load": load_avg()}
                row["throughput"] = await throughput(senders, args.seconds, gateway_pid if path == "http" else None)
                row["latency"] = await latency(senders, args.rate, args.latency_seconds)
                results.append(row)
                report(row, args.json)
    finally:
        await close_http()
        bridge.close()
    return results


def report(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(msgspec.json.encode(row).decode(), flush=True)
        return
    t, lat = row["throughput"], row["latency"]
    cpu = f"generator {t['generator_cpu']:.2f}" + (f", gateway {t['gateway_cpu']:.2f}" if "gateway_cpu" in t else "")
    print(f"round {row['round']} {row['path']:>4} (load {row['load']}): {t['orders_per_s']:,} orders/s "
          f"({t['orders']:,} in {t['seconds']} s; CPU {cpu}); at {lat['rate']:g}/s p50 {lat['p50_ms']} ms, "
          f"p99 {lat['p99_ms']} ms, p999 {lat['p999_ms']} ms, max {lat['max_ms']} ms", flush=True)


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round: HTTP / API orders/s and latency ratios."""
    rounds = []
    for round_no in sorted({r["round"] for r in results}):
        http, api = (next(r for r in results if r["round"] == round_no and r["path"] == p) for p in ("http", "api"))
        rounds.append({
            "round": round_no,
            "throughput_http_over_api": round(http["throughput"]["orders_per_s"] / api["throughput"]["orders_per_s"],
                                              2),
            **{f"{q}_http_over_api": round(http["latency"][f"{q}_ms"] / api["latency"][f"{q}_ms"], 2)
               for q in ("p50", "p99", "p999")},
        })
    return {"ratios": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka", default="127.0.0.1:9092")
    parser.add_argument("--cql", default="127.0.0.1:9042")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--latency-seconds", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-project", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "load": load_avg(), "service_logs": str(logs)}
    print(msgspec.json.encode({"machine": machine}).decode() if args.json else f"machine: {machine}", flush=True)
    deployment = Deployment(args.kafka, args.cql, not args.skip_project, logs)
    try:
        deployment.start()
        users, keys = set_up(deployment, args.clients)
        results = asyncio.run(run(args, deployment, users, keys))
    except BenchError as error:
        sys.exit(f"bench_gateway: {error}")
    finally:
        deployment.stop()
    print(msgspec.json.encode(summary(results)).decode(), flush=True)


if __name__ == "__main__":
    main()
