"""What a batch job shows while it runs off a terminal (done/total, rate, ETA, a line while nothing
has finished yet) and what Ctrl-C tells the user; real embed jobs on the shared local Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from raeflow import progress
from raeflow.batch import runner
from raeflow.cli import main
from tests.batch.inputs import write_digit_parquet


def embed_args(data: Path, bundle: str, out: Path) -> list[str]:
    return ["embed", "--data", str(data), "--model", bundle, "--out", str(out)]


def test_plain_progress_of_an_embed_shows_done_of_total_rate_and_eta(
    ray_session, tmp_path, conv_bundle, mnist_digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    digits, labels = mnist_digits
    write_digit_parquet(str(tmp_path / "in"), digits, labels, files=6, rows=20)  # total from the footers
    monkeypatch.setenv(progress.PLAIN_EVERY_ENV, "0.1")
    result = CliRunner().invoke(main, embed_args(tmp_path / "in", conv_bundle, tmp_path / "emb"))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if re.match(r"\[embed\] \d+(/\d+)? images", line)]
    # While the pool starts, the timer says the job is alive and what it has to do.
    assert any(line.startswith("[embed] 0/120 images (0%), none finished yet after ") for line in lines), (
        lines
    )
    # Each shard is a sixth of the total: once the first is written, a line with its rate and ETA.
    partial = [line for line in lines if re.match(r"\[embed\] (20|40|60|80|100)/120 images \(\d+%\), ", line)]
    assert partial and all(re.search(r"[\d.]+ images/s, ETA \d+ (s|min)", line) for line in partial), lines
    assert lines[-1].startswith("[embed] 120/120 images (100%), ") and lines[-1].endswith(", 0 rejected")


def test_ctrl_c_says_what_is_committed_and_the_same_command_resumes(
    ray_session, tmp_path, conv_bundle, mnist_digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    digits, labels = mnist_digits
    write_digit_parquet(str(tmp_path / "in"), digits, labels, files=4, rows=20)
    out = tmp_path / "emb"
    real_stream = runner._stream

    def ctrl_c_after_the_first_commit(*args, **kwargs):  # Ctrl-C while the job waits for more
        for record in real_stream(*args, **kwargs):
            yield record
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_stream", ctrl_c_after_the_first_commit)
    stopped = CliRunner().invoke(main, embed_args(tmp_path / "in", conv_bundle, out))
    assert stopped.exit_code == 130, stopped.output
    committed = [json.loads(p.read_text()) for p in (out / "_manifest").glob("shard-*.json")]
    assert len(committed) == 1 and not (out / "_SUCCESS").exists()
    assert stopped.stderr.splitlines()[-1] == (
        f"aborted: 1 of 4 shards (20 images) are committed to {out} (1 by this run); run the same "
        "command again to resume: it skips the committed shards and redoes the others"
    )

    monkeypatch.setattr(runner, "_stream", real_stream)
    resumed = CliRunner().invoke(main, embed_args(tmp_path / "in", conv_bundle, out))
    assert resumed.exit_code == 0, resumed.output
    assert "3 of 4 shards to do" in resumed.stderr and "1 shards (20 images) done before" in resumed.stderr
    assert "80 images in, 80 out" in resumed.stdout and "(1 already done)" in resumed.stdout
    assert re.search(r"^\[embed\] 60/60 images \(100%\)", resumed.stderr, re.M), resumed.stderr
