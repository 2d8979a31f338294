"""``ledger run gateway``: the gateway's process (uvicorn serving ``Gateway.app``)."""

from __future__ import annotations

import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.app.gateway.app import Gateway, GatewayConfig
from ledger.app.gateway.bridge import Bridge
from ledger.app.gateway.limits import KEEP_ALIVE_S

log = logging.getLogger("ledger.gateway")


def build(
    streams: Any,
    db_path: str | Path,
    open_store: Callable[[], Any],
    config: GatewayConfig,
    auth_options: dict[str, Any] | None = None,
) -> Gateway:
    """The gateway on ``streams`` (file or Kafka), its own database ``db_path`` (keys and
    requests), and the projection ``open_store`` opens."""
    from ledger.app.gateway.auth import Authenticator
    from ledger.app.gateway.keys import KeyStore

    streams.create_inputs()
    bridge = Bridge(db_path, streams.commands(writer=True), streams.events(), streams.events())
    keys = KeyStore(db_path)
    gateway = Gateway(bridge, open_store, Authenticator(keys, **(auth_options or {})), config)
    bridge.start()
    return gateway


def listen(address: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts (``OSError`` if the
    address is in use or not this host's)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    # IPPROTO_TCP named, not left 0: the accepted sockets inherit it, and asyncio turns
    # Nagle's algorithm off (TCP_NODELAY) only on sockets whose proto says TCP. Without
    # it, uvicorn's two writes per response (head, then body) wait for the client's
    # delayed ACK: about 40 ms on every request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(gateway: Gateway, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGINT or SIGTERM (uvicorn's own handling: in-flight
    requests finish)."""
    import uvicorn

    address, port = sock.getsockname()[:2]
    config = uvicorn.Config(gateway.app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=10, timeout_keep_alive=KEEP_ALIVE_S,
                            log_config=None)  # uvicorn's loggers go to ours: one line each
    server = uvicorn.Server(config)

    original = server.startup

    async def startup(*args: Any, **kwargs: Any) -> None:
        await original(*args, **kwargs)
        if server.started:
            sys.stderr.write(f"gateway: listening on http://{address}:{port}\n")
            sys.stderr.flush()

    server.startup = startup  # type: ignore[method-assign]
    # uvicorn handles SIGINT and SIGTERM itself, then raises the signal again for the
    # handler it found: make that one a no-op, so the process stops here, cleanly.
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        gateway.bridge.close()
        sock.close()
    if not server.started:
        raise OSError(f"the server on {address}:{port} did not start")
