"""The progress display: a live bar on a terminal, plain periodic lines elsewhere, nothing when quiet."""

from __future__ import annotations

import io
import time

import pytest

from raeflow import console, progress
from raeflow.batch.manifest import ShardRecord
from raeflow.batch.summary import interrupted_message
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


def test_a_timer_line_comes_while_nothing_has_finished_yet() -> None:
    # A job's first block may take a minute: the log must still show the job is alive, and its total.
    out = io.StringIO()
    with Progress("embed", total=3000, stream=out, every_s=0.05):
        deadline = time.monotonic() + 10
        while not out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        first = out.getvalue().splitlines()[0]
    assert first.startswith("[embed] 0/3,000 images (0%), none finished yet after ")
    assert first.endswith(" s, 0 rejected")


def test_the_interval_of_plain_lines_is_set_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(progress.PLAIN_EVERY_ENV, "0.25")
    assert Progress("embed", quiet=True).every_s == 0.25
    monkeypatch.setenv(progress.PLAIN_EVERY_ENV, "soon")
    assert Progress("embed", quiet=True).every_s == progress.PLAIN_EVERY_S


def test_a_total_not_known_is_said_on_the_bar_not_shown_as_a_question_mark() -> None:
    plain = io.StringIO()
    with Progress("embed", stream=plain, every_s=60) as bar:
        bar.set_total(None, note="total unknown: no _index.json")
        bar.advance(22)
    assert plain.getvalue().startswith("[embed] 22 images (total unknown: no _index.json), ")

    out = Terminal()
    with Progress("embed", stream=out) as bar:
        bar.advance(22)
        bar.set_total(None, note="counting the total")  # a new total or note is drawn at once
        bar.set_total(3000)
        bar.advance(8)
    text = out.getvalue()
    assert "22 images (counting the total)" in text and "30/3,000 images (1%)" in text
    assert "/?" not in text


def test_ctrl_c_message_names_what_is_committed_and_that_the_command_resumes() -> None:
    def record(index: int, rows: int) -> ShardRecord:
        return ShardRecord(
            shard=index, name=f"s{index}", rows_in=rows, rows_out=rows, rows_rejected=0, seconds=1
        )

    done = {0: record(0, 1000), 3: record(3, 1000), 4: record(4, 500)}
    message = interrupted_message("/data/emb", 10, done, num_before=1)
    assert message == (
        "3 of 10 shards (2,500 images) are committed to /data/emb (2 by this run, 1 by earlier runs); "
        "run the same command again to resume: it skips the committed shards and redoes the others"
    )
    assert interrupted_message("s3://b/emb", 4, {}, num_before=0).startswith(
        "0 of 4 shards (0 images) are committed to s3://b/emb (0 by this run); run the same command again"
    )
