"""Progress of a long job on the console: items done / total, rate, ETA, rejected so far.

    with Progress("embed", total=13_000) as progress:
        for batch in batches:
            progress.advance(len(batch), rejected=num_bad)
        progress.say("wrote part-00000.parquet")

On a terminal it is a live bar (rich) on stderr, redrawn several times a second. Elsewhere (CI,
`ray job logs`, a pipe) a plain line comes every `PLAIN_EVERY_S` seconds from a timer while the job
runs, whether or not work finished meanwhile (a job's first block may take a minute), every
`PLAIN_EVERY_FRACTION` of the total as work finishes, and once at the end. Where the total is not
known yet or cannot be known, the display says so (`set_total(None, note=...)`). Nothing is shown
with `quiet` or at the console's quiet level. Ray-free.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, TextColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

from raeflow import console

PLAIN_EVERY_S = 10.0
"""Seconds between plain progress lines when stderr is not a terminal (`$RAEFLOW_PROGRESS_EVERY_S`)."""
PLAIN_EVERY_ENV = "RAEFLOW_PROGRESS_EVERY_S"
"""Environment variable that sets the seconds between plain progress lines."""
PLAIN_EVERY_FRACTION = 0.1
"""Share of the total between plain progress lines when stderr is not a terminal."""


def _stderr() -> IO[str]:
    return sys.stderr  # looked up at each use: connect_ray may swap it for the terminal's duplicate


def plain_every_s() -> float:
    """Seconds between plain progress lines: `$RAEFLOW_PROGRESS_EVERY_S`, else `PLAIN_EVERY_S`."""
    value = os.environ.get(PLAIN_EVERY_ENV, "")
    try:
        seconds = float(value) if value else PLAIN_EVERY_S
    except ValueError:
        return PLAIN_EVERY_S
    return seconds if seconds > 0 else PLAIN_EVERY_S


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


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C during a job, with what to tell the user (what is committed, how to resume).

    Still a `KeyboardInterrupt`, so everything that stops on Ctrl-C stops; the CLI prints
    `aborted: <message>`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Progress:
    """One job's progress display (stderr); `advance` as work finishes, `say` for a line of text.

    `plain_lines=False` leaves out the periodic lines off a terminal, for callers that already print
    one line per unit of work (training's per-epoch line). `every_s` sets the seconds between plain
    lines (default: `plain_every_s()`).
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
        every_s: float | None = None,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.total_note: str | None = None
        self.quiet = quiet or console.is_quiet()
        self.plain_lines = plain_lines
        self.every_s = every_s if every_s is not None else plain_every_s()
        self._stream = stream
        self.done = 0
        self.rejected = 0
        self.started = time.monotonic()
        self._last_line_at = self.started
        self._last_line_done = 0
        self._closed = False
        self._lock = threading.RLock()  # the timer thread prints too
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._live: Any = None
        if not self.quiet and self._isatty():
            self._live = self._start_live()
        elif not self.quiet and self.plain_lines:
            self._timer = threading.Thread(target=self._tick, name=f"raeflow-progress-{label}", daemon=True)
            self._timer.start()

    # --- what callers use -------------------------------------------------------------------
    def advance(self, count: int = 1, *, rejected: int = 0) -> None:
        """`count` more items finished, `rejected` of them refused."""
        with self._lock:
            self.done += count
            self.rejected += rejected
            if self.quiet:
                return
            if self._live is not None:
                bar, task = self._live
                bar.update(task, completed=self.done)
            elif self.plain_lines and self._line_due():
                self._plain_line()

    def set_total(self, total: int | None, *, note: str | None = None) -> None:
        """The total became known (or changed); without one, `note` says why (`counting`, `total unknown`)."""
        with self._lock:
            self.total, self.total_note = total, note
            if self._live is not None:
                bar, task = self._live
                bar.update(task, total=total, refresh=True)

    def say(self, text: str) -> None:
        """Print one line of text (above the live bar, if any)."""
        if self.quiet:
            return
        line = f"[{self.label}] {text}"
        with self._lock:
            if self._live is not None:
                self._live[0].console.print(line, markup=False, highlight=False)
            else:
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the display; off a terminal, print the final count unless it was just printed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
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
        return self._rate(self.elapsed)

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None without a total or a rate)."""
        return self._eta(self._rate(self.elapsed))

    def line(self) -> str:
        """The plain progress line: `[embed] 500/1,797 images (28%), 105 images/s, ETA 12 s, 0 rejected`."""
        return f"[{self.label}] {self.status()}"

    def status(self) -> str:
        """The line without the label (also what the live bar shows beside the bar)."""
        elapsed = self.elapsed  # read once: tests drive the clock one reading at a time
        if self.total:
            parts = [
                f"{format_count(self.done)}/{format_count(self.total)} {self.unit} "
                f"({100 * self.done / self.total:.0f}%)"
            ]
        else:
            note = f" ({self.total_note})" if self.total_note else ""
            parts = [f"{format_count(self.done)} {self.unit}{note}"]
        rate = self._rate(elapsed)
        if rate is not None:
            parts.append(f"{rate:,.1f} {self.unit}/s" if rate < 10 else f"{rate:,.0f} {self.unit}/s")
        elif not self.done:
            parts.append(f"none finished yet after {format_duration(elapsed)}")
        eta = self._eta(rate)
        if eta is not None and self.done < (self.total or 0):
            parts.append(f"ETA {format_duration(eta)}")
        parts.append(f"{format_count(self.rejected)} rejected")
        return ", ".join(parts)

    def _rate(self, elapsed: float) -> float | None:
        return self.done / elapsed if self.done and elapsed > 0.5 else None

    def _eta(self, rate: float | None) -> float | None:
        if self.total is None or not rate:
            return None
        return max(0.0, (self.total - self.done) / rate)

    # --- display ------------------------------------------------------------------------------
    def _isatty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def _line_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_line_at >= self.every_s:
            return True
        if self.total:
            return (self.done - self._last_line_done) >= PLAIN_EVERY_FRACTION * self.total
        return False

    def _plain_line(self) -> None:
        self._last_line_at, self._last_line_done = time.monotonic(), self.done
        print(self.line(), file=self.stream, flush=True)

    def _tick(self) -> None:
        """The timer: a plain line whenever `every_s` passed without one, until `close`."""
        while not self._stop.wait(min(1.0, self.every_s / 4)):
            with self._lock:
                if self._closed:
                    return
                if time.monotonic() - self._last_line_at >= self.every_s:
                    try:
                        self._plain_line()
                    except (OSError, ValueError):  # the stream went away (closed pipe, test capture)
                        return

    def _start_live(self) -> tuple[Any, Any]:
        bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            _StatusColumn(self),
            console=Console(file=self.stream),
            redirect_stdout=False,
            redirect_stderr=False,
        )
        task = bar.add_task(self.label, total=self.total)
        bar.start()
        return bar, task


class _StatusColumn(ProgressColumn):
    """Done/total, rate, ETA and rejected of a `Progress`, as its plain line says them; redrawn by
    rich's own refresh, so the elapsed time and ETA move between blocks too."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self.progress = progress

    def render(self, task: Any) -> Text:
        return Text(self.progress.status())
