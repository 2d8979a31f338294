"""Views of UBSCore state for comparisons (tests, verification tools)."""

from __future__ import annotations

from typing import Any

from ledger.ubscore import State, canonical


def without_sequence(state: State, keep_requests: bool = True) -> dict[str, Any]:
    """The canonical state without the fields every event moves (seq, input position),
    and optionally without the request window: what a rejection must leave unchanged."""
    view = canonical(state)
    del view["seq"], view["last_input_offset"]
    if not keep_requests:
        del view["requests"]
    return view
