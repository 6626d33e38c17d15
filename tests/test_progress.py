"""The progress display: a live bar on a terminal, plain periodic lines elsewhere, nothing when quiet."""

from __future__ import annotations

import io

import pytest

from raeflow import console, progress
from raeflow.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_tenth_with_counts_rate_eta_and_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    with Progress("embed", total=1000, stream=out) as bar:
        for _ in range(40):
            bar.advance(25, rejected=1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # one per 10% of the total, none in between, the last at 100%
    assert lines[0].startswith("[embed] 100/1,000 images (10%), ") and lines[0].endswith(", 4 rejected")
    assert "images/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("[embed] 1,000/1,000 images (100%)") and "ETA" not in lines[-1]
    assert lines[-1].endswith("40 rejected")


def test_plain_lines_without_a_total_come_with_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    bar = Progress("shard", stream=out)
    for _ in range(5):
        now[0] += 4.0
        bar.advance(10)
    assert out.getvalue().splitlines() == ["[shard] 30 images, 2.5 images/s, 0 rejected"]  # at 12 s
    bar.close()
    assert out.getvalue().splitlines()[1:] == ["[shard] 50 images, 2.5 images/s, 0 rejected"]


def test_terminal_gets_a_live_bar() -> None:
    out = Terminal()
    with Progress("denoise", total=100, stream=out) as bar:
        assert bar.live
        bar.advance(60, rejected=2)
        bar.say("part 1 written")
        bar.advance(40)
    text = out.getvalue()
    assert "100/100" in text and "2 rejected" in text and "[denoise] part 1 written" in text


def test_quiet_console_shows_nothing() -> None:
    out = Terminal()
    console.set_level("quiet")
    try:
        with Progress("report", total=10, stream=out) as bar:
            bar.advance(10)
            bar.say("hello")
    finally:
        console.set_level("normal")
    assert out.getvalue() == ""
