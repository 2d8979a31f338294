"""Per-symbol order books and the events the matching engine emits (engine.outputs)."""

# ledger's codec imports matching.events, and matching.events imports ledger.commands:
# initialising ledger first lets ``import matching`` (or matching.engine) come first in a
# program without hitting the half-initialised cycle.
import ledger  # noqa: F401
from matching.events import (
    EngineOutput,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)

__all__ = [
    "EngineOutput",
    "OrderCancelled",
    "OrderExpired",
    "OrderRejected",
    "OrderRested",
    "Trade",
]
