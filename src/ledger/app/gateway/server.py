"""``ledger run gateway``: the gateway's process (uvicorn serving ``Gateway.app``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledger.app.gateway.app import Gateway, GatewayConfig
from ledger.app.gateway.bridge import Bridge

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


def serve(gateway: Gateway, address: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn's own handling: in-flight requests finish)."""
    import uvicorn

    config = uvicorn.Config(gateway.app, host=address, port=port, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)

    original = server.startup

    async def startup(*args: Any, **kwargs: Any) -> None:
        await original(*args, **kwargs)
        if server.started:
            sys.stderr.write(f"gateway: listening on http://{address}:{port}\n")
            sys.stderr.flush()

    server.startup = startup  # type: ignore[method-assign]
    try:
        server.run()
    finally:
        gateway.bridge.close()
    if not server.started:
        raise OSError(f"cannot listen on {address}:{port} (in use, or not an address of this host?)")
