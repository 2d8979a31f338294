"""Garbage-collector settings for the ledger's hot loops.

Reference counting frees everything the reducers drop (events, order lists, request
entries): none of it forms a reference cycle. The cyclic collector still runs a pass
every few hundred container allocations and walks the young objects each time, which
made it about a third of a replay's cost. ``relaxed_gc`` raises the young-generation
threshold to ``GC_YOUNG_THRESHOLD`` for the duration of a loop and restores the previous
settings afterwards. Collection still happens, only less often; nothing is frozen or
disabled, so cyclic garbage made by other code is still reclaimed.

The threshold is process-wide (CPython has one collector): nested uses restore in order,
and the last one out restores what was there before.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from ledger.protocol.limits import GC_YOUNG_THRESHOLD


@contextmanager
def relaxed_gc(young: int = GC_YOUNG_THRESHOLD) -> Iterator[None]:
    """Run the body with the collector's young-generation threshold at least ``young``;
    as a decorator (``@relaxed_gc()``), run each call of the function that way.

    >>> import gc
    >>> before = gc.get_threshold()
    >>> with relaxed_gc(10_000):
    ...     gc.get_threshold()[0] >= 10_000
    True
    >>> gc.get_threshold() == before
    True
    """
    if young < 1:
        raise ValueError(f"young-generation threshold {young} must be at least 1")
    previous = gc.get_threshold()
    gc.set_threshold(max(previous[0], young), *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
