"""Deterministic per-symbol order books (price-time priority) and the matching engine
that drives them from balance.events and writes each symbol's engine.outputs.

The engine reads only the shared vocabulary (``ledger.protocol``): it never imports the
UBSCore reducer, and UBSCore never imports it; only ``ledger.app`` wires the two.

>>> from matching import MatchingEngine
>>> MatchingEngine("BTC-USDT").symbol
'BTC-USDT'
"""

from ledger.protocol.outputs import (
    ENGINE_OUTPUT_TYPES,
    BookOpened,
    EngineOutput,
    OrderCancelled,
    OrderExpired,
    OrderRejected,
    OrderRested,
    Trade,
)
from matching.book import BookError, OrderBook
from matching.engine import EngineError, MatchingEngine

__all__ = [
    "BookOpened",
    "ENGINE_OUTPUT_TYPES",
    "BookError",
    "EngineError",
    "EngineOutput",
    "MatchingEngine",
    "OrderBook",
    "OrderCancelled",
    "OrderExpired",
    "OrderRejected",
    "OrderRested",
    "Trade",
]
