"""``ledger run gateway`` on the command line: one-line failures with documented exit
codes, and a clean stop on SIGTERM (file logs, no server needed)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gateway_support import _env, free_port, ledger


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    root = tmp_path / "d"
    root.mkdir()
    done = ledger("run", "all", "--dir", str(root), "--fsync", "never", "--idle-exit-s", "0.5")
    assert done.returncode == 0, done.stderr
    return root


def _one_line_failure(done: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert words in done.stderr, done.stderr


def test_every_bad_start_is_one_line_and_exit_2(deployment: Path, tmp_path: Path) -> None:
    store, db = f"sqlite:{deployment / 'projection.db'}", str(tmp_path / "g.db")
    _one_line_failure(ledger("run", "gateway", "--dir", str(deployment), "--store", "sqlite:none/p.db", "--db", db),
                      2, "no such directory")
    _one_line_failure(ledger("run", "gateway", "--dir", str(tmp_path / "none"), "--store", store, "--db", db),
                      2, "no such directory")
    _one_line_failure(ledger("run", "gateway", "--dir", str(deployment), "--store", store,
                             "--db", str(tmp_path / "no" / "g.db")), 2, "not a file in an existing directory")
    _one_line_failure(ledger("run", "gateway", "--dir", str(deployment), "--store", store, "--db", db,
                             "--port", "0"), 2, "--port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        _one_line_failure(ledger("run", "gateway", "--dir", str(deployment), "--store", store, "--db", db,
                                 "--port", port), 2, "Address already in use")


def test_the_gateway_serves_on_file_logs_and_stops_cleanly_on_sigterm(deployment: Path, tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "ledger.app.cli", "run", "gateway", "--dir", str(deployment), "--fsync", "never",
            "--store", f"sqlite:{deployment / 'projection.db'}", "--db", str(tmp_path / "g.db"), "--port", str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health.status_code == 200 and health.json()["ok"] is True, health.text
        refused = httpx.post(f"http://127.0.0.1:{port}/v1/orders", content=b"{}", timeout=5)
        assert refused.status_code == 401 and refused.json()["error"] == "missing_header"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/openapi.json", timeout=5).json()["openapi"] == "3.1.0"
        _kept_alive_past_5_s(port)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "gateway: 0 commands sent" in out, out


def _kept_alive_past_5_s(port: int) -> None:
    """An idle connection outlives the 5 s after which clients' pools (httpx's default)
    drop it: had the gateway closed it at 5 s too, a client reusing it at that moment got
    no answer (seen in the load test)."""
    from ledger.app.gateway.limits import KEEP_ALIVE_S
    from ledger.client import CONNECTION_IDLE_S

    assert CONNECTION_IDLE_S < 5 < KEEP_ALIVE_S
    request = f"GET /v1/openapi.json HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for pause_s in (0.0, 6.0):
            time.sleep(pause_s)
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk, (pause_s, data)  # closed without an answer
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), (pause_s, head)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            while len(body) < length:  # the whole document, so the next answer starts clean
                chunk = sock.recv(65536)
                assert chunk, (pause_s, len(body), length)
                body += chunk


def test_the_gateways_connections_send_without_waiting_for_acks() -> None:
    """The listening socket says it is TCP, so asyncio turns Nagle's algorithm off on the
    connections it accepts (a response is written in two parts: with Nagle on, the second
    waited for the client's delayed ACK, about 40 ms a request)."""
    import asyncio

    from ledger.app.gateway.server import listen

    async def accept_one() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("socket")
            seen.set_result(peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = listen("127.0.0.1", 0)
        server = await asyncio.start_server(on_client, sock=sock)
        try:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(accept_one()) != 0
