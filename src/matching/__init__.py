"""Per-symbol order books and the events the matching engine emits (engine.outputs)."""

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
