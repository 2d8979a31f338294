"""A dependency-free progress line for long replays (stderr, only on a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

# Redraw at most this often; more would cost more than the work it reports on.
REDRAW_INTERVAL_S = 0.25


class Progress:
    """``Progress("replay", total)``; call ``advance(n)``; ``close()`` at the end."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._drawn = 0.0

    def advance(self, count: int) -> None:
        """Count ``count`` more units done; redraws if enough time has passed."""
        self.done += count
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn >= REDRAW_INTERVAL_S:
                self._drawn = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._started, 1e-9)
        share = f" ({100 * self.done // self.total}%)" if self.total else ""
        width = 30
        filled = width * self.done // self.total if self.total else 0
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done:,}/{self.total:,}{share} {self.done / elapsed:,.0f}/s")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
