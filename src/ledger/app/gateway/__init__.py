"""The HTTP gateway: an authenticated, idempotent API in front of the services.

``ledger run gateway`` serves it. Commands go onto balance.operations and are answered
from balance.events; reads come from the projection. See ``docs/gateway.md``.
"""
