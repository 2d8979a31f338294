"""An order book rebuilt from its engine output stream alone (``ledger replay --engine``).

A symbol's stream opens with ``BookOpened``, which carries the definition, so nothing
else is read: every output is decoded (a damaged record is an error naming its offset)
and applied with ``MatchingEngine.apply``, which checks that each one fits the book
(contiguous seqs, a maker that exists and holds the quantity). The result's state hash
equals the live engine's at the same seq.
"""

from __future__ import annotations

import time

import msgspec

from ledger.logs.base import Log, scan
from ledger.protocol.codec import OUTPUTS
from ledger.protocol.outputs import BookOpened
from matching.book import BookError
from matching.engine import MatchingEngine

# Levels per side a summary shows unless told otherwise.
DEPTH_DEFAULT = 5
# The most levels per side a summary lists (a look at the top of the book, not a dump).
DEPTH_MAX = 1_000


class BookReplayError(Exception):
    """The stream does not rebuild a book: the message names the log and the offset."""


class PriceLevel(msgspec.Struct, frozen=True):
    """One price level: price in ticks, total quantity in lots, resting orders."""

    price_ticks: int
    qty_lots: int
    orders: int


class BookSummary(msgspec.Struct, frozen=True):
    """What a replay of one engine stream rebuilt."""

    symbol: str
    log: str
    outputs: int
    seq: int
    last_input_seq: int
    state_hash: str
    bid_orders: int
    ask_orders: int
    bid_levels: int
    ask_levels: int
    bids: list[PriceLevel]
    asks: list[PriceLevel]
    seconds: float


def replay_book(log: Log, symbol: str, until: int | None = None) -> tuple[MatchingEngine, int]:
    """The engine of ``symbol`` rebuilt from ``log`` (its output stream), up to and
    including the output with seq ``until`` (default: the end), and the number of
    outputs applied. Raises ``BookReplayError`` if the stream does not open with
    ``symbol``'s ``BookOpened`` or an output does not fit; a damaged or undecodable
    record raises the log's or the codec's error naming its offset."""
    engine = MatchingEngine(symbol)
    applied = 0
    for batch in scan(log):
        for offset, raw in zip(batch.offsets, batch.values, strict=True):
            where = f"{log.name} offset {offset}"
            output = OUTPUTS.decode(raw, where)
            if applied == 0 and type(output) is not BookOpened:
                raise BookReplayError(f"{where}: the stream opens with {type(output).__name__}, not BookOpened")
            try:
                engine.apply(output)
            except BookError as error:
                raise BookReplayError(f"{where}: {error}") from None
            applied += 1
            if until is not None and engine.seq >= until:
                return engine, applied
    return engine, applied


def top_levels(engine: MatchingEngine, side: int, depth: int = DEPTH_DEFAULT) -> list[PriceLevel]:
    """The best ``depth`` price levels of ``side`` (0 bids, 1 asks), best first."""
    levels = engine.book.levels[side]
    prices = sorted(levels, reverse=side == 0)[:depth]
    return [PriceLevel(p, sum(o.remaining for o in levels[p].values()), len(levels[p])) for p in prices]


def summarize_book(log: Log, symbol: str, until: int | None = None, depth: int = DEPTH_DEFAULT) -> BookSummary:
    """Replay ``log`` as ``symbol``'s stream (``replay_book``) and summarize the book."""
    if not 0 <= depth <= DEPTH_MAX:
        raise ValueError(f"depth {depth}: 0..{DEPTH_MAX:,}")
    started = time.perf_counter()
    engine, applied = replay_book(log, symbol, until)
    book = engine.book
    return BookSummary(
        symbol=symbol,
        log=log.name,
        outputs=applied,
        seq=engine.seq,
        last_input_seq=engine.last_input_seq,
        state_hash=engine.state_hash(),
        bid_orders=sum(len(level) for level in book.levels[0].values()),
        ask_orders=sum(len(level) for level in book.levels[1].values()),
        bid_levels=len(book.levels[0]),
        ask_levels=len(book.levels[1]),
        bids=top_levels(engine, 0, depth),
        asks=top_levels(engine, 1, depth),
        seconds=time.perf_counter() - started,
    )


__all__ = [
    "DEPTH_DEFAULT",
    "DEPTH_MAX",
    "BookReplayError",
    "BookSummary",
    "PriceLevel",
    "replay_book",
    "summarize_book",
    "top_levels",
]


def book_levels(symbol: str, log: Log) -> tuple[dict[tuple[int, int], tuple[int, int]], int]:
    """A symbol's price levels, (side, price) -> (lots, orders), and the last seq, from
    the matching engine's replay of its outputs (``settlement.verify_store``'s
    ``book_levels``); a log that does not rebuild a book raises ``ValueError``."""
    engine = MatchingEngine(symbol)
    try:
        for batch in scan(log):
            for raw in batch.values:
                engine.apply(OUTPUTS.decode(raw))
    except BookError as error:
        raise ValueError(str(error)) from None
    levels: dict[tuple[int, int], tuple[int, int]] = {}
    for side in (0, 1):
        for price, level in engine.book.levels[side].items():
            levels[(side, price)] = (sum(order.remaining for order in level.values()), len(level))
    return levels, engine.seq
