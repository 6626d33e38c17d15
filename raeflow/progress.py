"""Progress of a long job on the console: items done / total, rate, ETA, rejected so far.

    with Progress("embed", total=13_000) as progress:
        for batch in batches:
            progress.advance(len(batch), rejected=num_bad)
        progress.say("wrote part-00000.parquet")

On a terminal it is a live bar (rich) on stderr; elsewhere (CI, `ray job logs`, a pipe) a plain
line every `PLAIN_EVERY_S` seconds or `PLAIN_EVERY_FRACTION` of the total, whichever comes first,
and one at the end. Nothing is shown with `quiet` or at the console's quiet level. Ray-free.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

from raeflow import console

PLAIN_EVERY_S = 10.0
"""Seconds between plain progress lines when stderr is not a terminal."""
PLAIN_EVERY_FRACTION = 0.1
"""Share of the total between plain progress lines when stderr is not a terminal."""


def _stderr() -> IO[str]:
    return sys.stderr  # looked up at each use: connect_ray may swap it for the terminal's duplicate


def format_count(value: float) -> str:
    """1797 -> '1,797'; 12.5 -> '12.5'."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def format_duration(seconds: float) -> str:
    """75 -> '1 min 15 s', 8 -> '8 s', 4000 -> '1 h 07 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """One job's progress display (stderr); `advance` as work finishes, `say` for a line of text.

    `plain_lines=False` leaves out the periodic lines off a terminal, for callers that already print
    one line per unit of work (training's per-epoch line).
    """

    def __init__(
        self,
        label: str,
        *,
        total: int | None = None,
        unit: str = "images",
        quiet: bool = False,
        plain_lines: bool = True,
        stream: IO[str] | None = None,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.quiet = quiet or console.is_quiet()
        self.plain_lines = plain_lines
        self._stream = stream
        self.done = 0
        self.rejected = 0
        self.started = time.monotonic()
        self._last_line_at = self.started
        self._last_line_done = 0
        self._closed = False
        self._live: Any = None
        if not self.quiet and self._isatty():
            self._live = self._start_live()

    # --- what callers use -------------------------------------------------------------------
    def advance(self, count: int = 1, *, rejected: int = 0) -> None:
        """`count` more items finished, `rejected` of them refused."""
        self.done += count
        self.rejected += rejected
        if self.quiet:
            return
        if self._live is not None:
            bar, task = self._live
            bar.update(task, completed=self.done, rejected=self.rejected)
        elif self.plain_lines and self._line_due():
            self._plain_line()

    def set_total(self, total: int | None) -> None:
        """The total became known (or changed)."""
        self.total = total
        if self._live is not None:
            bar, task = self._live
            bar.update(task, total=total)

    def say(self, text: str) -> None:
        """Print one line of text (above the live bar, if any)."""
        if self.quiet:
            return
        line = f"[{self.label}] {text}"
        if self._live is not None:
            self._live[0].console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the display; off a terminal, print the final count unless it was just printed."""
        if self._closed:
            return
        self._closed = True
        if self._live is not None:
            self._live[0].stop()
            self._live = None
        elif not self.quiet and self.plain_lines and self.done != self._last_line_done:
            self._plain_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- numbers ------------------------------------------------------------------------------
    @property
    def stream(self) -> IO[str]:
        """Where the display goes (stderr unless given)."""
        return self._stream or _stderr()

    @property
    def live(self) -> bool:
        """Whether a live bar is on screen (then print lines through `say`, not beside it)."""
        return self._live is not None

    @property
    def elapsed(self) -> float:
        """Seconds since the display started."""
        return time.monotonic() - self.started

    @property
    def rate(self) -> float | None:
        """Items per second so far (None before the first second or the first item)."""
        elapsed = self.elapsed
        return self.done / elapsed if self.done and elapsed > 0.5 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None without a total or a rate)."""
        rate = self.rate
        if self.total is None or not rate:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def line(self) -> str:
        """The plain progress line: `[embed] 500/1,797 images (28%), 105 images/s, ETA 12 s, 0 rejected`."""
        parts = []
        if self.total:
            parts.append(
                f"{format_count(self.done)}/{format_count(self.total)} {self.unit} "
                f"({100 * self.done / self.total:.0f}%)"
            )
        else:
            parts.append(f"{format_count(self.done)} {self.unit}")
        rate = self.rate
        if rate is not None:
            parts.append(f"{rate:,.1f} {self.unit}/s" if rate < 10 else f"{rate:,.0f} {self.unit}/s")
        eta = self.eta
        if eta is not None and self.done < (self.total or 0):
            parts.append(f"ETA {format_duration(eta)}")
        parts.append(f"{format_count(self.rejected)} rejected")
        return f"[{self.label}] " + ", ".join(parts)

    # --- display ------------------------------------------------------------------------------
    def _isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def _line_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_line_at >= PLAIN_EVERY_S:
            return True
        if self.total:
            return (self.done - self._last_line_done) >= PLAIN_EVERY_FRACTION * self.total
        return False

    def _plain_line(self) -> None:
        self._last_line_at, self._last_line_done = time.monotonic(), self.done
        print(self.line(), file=self.stream, flush=True)

    def _start_live(self) -> tuple[Any, Any]:
        bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(self.unit),
            _RateColumn(self.unit),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[rejected]} rejected"),
            console=Console(file=self.stream),
            redirect_stdout=False,
            redirect_stderr=False,
        )
        task = bar.add_task(self.label, total=self.total, rejected=0)
        bar.start()
        return bar, task


class _RateColumn(ProgressColumn):
    """Items per second of a rich task, in the job's unit."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Any) -> Text:
        speed = task.speed
        return Text("" if speed is None else f"{speed:,.1f} {self.unit}/s")
