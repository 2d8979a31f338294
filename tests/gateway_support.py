"""A deployment behind the gateway for the tests: ``ledger run ubscore``, ``engine``,
``project`` and ``gateway``, each its own OS process, over the real Kafka into the real
Cassandra (or over file logs into SQLite), with API keys made by ``ledger keys``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec

from ledger.client import Client, Reply
from ledger.client.signing import sign_headers

ROOT = Path(__file__).resolve().parent.parent
# Bounds that only turn a hung start into a failure.
START_S_MAX = 60
STOP_S_MAX = 30
SEND_S_MAX = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def signed_request(url: str, key: tuple[str, str], method: str, path: str, content: bytes = b"",
                   headers: dict[str, str] | None = None, timestamp_ms: int | None = None) -> httpx.Request:
    """A request of exactly ``content``, signed with ``key`` (id, private) at
    ``timestamp_ms`` (now unless given)."""
    signed = sign_headers(key[0], key[1], method, path, content, timestamp_ms)
    return httpx.Request(method, url + path, content=content, headers={**signed, **(headers or {})})


def send_signed(url: str, key: tuple[str, str], method: str, path: str, content: bytes = b"",
                headers: dict[str, str] | None = None, timestamp_ms: int | None = None) -> Reply:
    with httpx.Client(timeout=SEND_S_MAX) as http:
        return reply_of(http.send(signed_request(url, key, method, path, content, headers, timestamp_ms)))


def reply_of(response: httpx.Response) -> Reply:
    try:
        body = msgspec.json.decode(response.content) if response.content else None
    except msgspec.DecodeError:
        body = response.text
    return Reply(response.status_code, body)


def ledger(*argv: str) -> subprocess.CompletedProcess[str]:
    """``ledger ARGV`` in a subprocess (output captured)."""
    return subprocess.run([sys.executable, "-m", "ledger.app.cli", *argv], capture_output=True, text=True,
                          env=_env(), timeout=120)


class Deployment:
    """The services and a gateway on their own topics and keyspace (or directory)."""

    def __init__(self, tmp: Path, kafka: str | None, cassandra_port: int | None, **gateway_options: str) -> None:
        tag = uuid.uuid4().hex[:10]
        self.tmp = tmp
        self.kafka = kafka
        self.db = tmp / "gateway.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway_options = gateway_options
        if kafka is not None:
            from ledger.app.streams import KafkaStreams

            self.prefix = f"gw-{tag}-"
            self.where = ["--kafka", kafka, "--topic-prefix", self.prefix]
            self.streams: Any = KafkaStreams(kafka, topic_prefix=self.prefix)
            self.store = f"cql://127.0.0.1:{cassandra_port}/gw_{tag}"
        else:
            from ledger.app.streams import FileStreams
            from ledger.logs.file import FsyncPolicy

            root = tmp / "deployment"
            root.mkdir()
            self.where = ["--dir", str(root), "--fsync", "never"]
            self.streams = FileStreams(root, FsyncPolicy("never"))
            self.store = f"sqlite:{root / 'projection.db'}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 (the process owns it)
        process = subprocess.Popen([sys.executable, "-m", "ledger.app.cli", *argv], stdout=log,
                                   stderr=subprocess.STDOUT, env=_env())
        self.processes[name] = process
        return process

    def start_services(self) -> None:
        self.streams.create_inputs()
        common = [*self.where, "--idle-exit-s", "0", "--log-every-s", "5", "--batch-wait-ms", "1"]
        self._start("ubscore", ["run", "ubscore", *common])
        self._start("engine", ["run", "engine", *common])
        self._start("project", ["run", "project", *common, "--store", self.store])

    def start_gateway(self) -> None:
        options = [item for k, v in self.gateway_options.items() for item in (f"--{k.replace('_', '-')}", v)]
        self._start("gateway", ["run", "gateway", *self.where, "--store", self.store, "--db", str(self.db),
                                "--port", str(self.port), *options])
        deadline = time.monotonic() + START_S_MAX
        while True:
            process = self.processes["gateway"]
            assert process.poll() is None, self.output("gateway")
            assert time.monotonic() < deadline, self.output("gateway")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    # The gateway's authenticator started before it listened: a request
                    # signed after this moment is never "signed before start".
                    self.gateway_ready_s = time.time()
                    return
            except OSError:
                time.sleep(0.1)

    def start(self) -> Deployment:
        try:
            self.start_services()
            self.start_gateway()
        except BaseException:
            self.stop()  # a failed start leaves no process behind
            raise
        return self

    def stop_gateway(self, kill: bool = False) -> int:
        process = self.processes.pop("gateway")
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        return process.wait(timeout=STOP_S_MAX)

    def stop(self) -> None:
        for process in list(self.processes.values()):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=STOP_S_MAX)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def output(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def key(self, user: int | None = None, operator: bool = False) -> tuple[str, str]:
        """(key id, private key) of a new key made with ``ledger keys create``."""
        who = ["--operator"] if operator else ["--user", str(user)]
        done = ledger("keys", "create", "--db", str(self.db), *who, "--json")
        assert done.returncode == 0, done.stderr
        record = msgspec.json.decode(done.stdout)
        return record["key_id"], record["private_key"]

    def client(self, user: int | None = None, operator: bool = False) -> Client:
        key_id, private = self.key(user, operator)
        return Client(self.url, key_id, private)

    def send(self, key: tuple[str, str], method: str, path: str, content: bytes = b"",
             headers: dict[str, str] | None = None, timestamp_ms: int | None = None) -> Reply:
        """Send ``content`` as it is, signed with ``key`` (id, private) at ``timestamp_ms``
        (now unless given): bodies no client would build."""
        return send_signed(self.url, key, method, path, content, headers, timestamp_ms)

    def commands_end(self) -> int:
        log = self.streams.commands()
        try:
            return log.end_offset()
        finally:
            log.close()
