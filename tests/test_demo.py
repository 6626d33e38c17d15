"""`raeflow demo`, shortened: the whole flow runs on a fresh local Ray and leaves every output it names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow


def test_short_demo_leaves_every_output_it_lists(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "raeflow.cli",
            "demo",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--train-images",
            "1000",
            "--no-tsne",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout

    # The summary names every output, and each one is really there.
    listed = {}
    for line in text[text.index("outputs:") : text.index("numbers:")].splitlines()[1:]:
        if line.strip():
            what, uri = line.strip().rsplit(" ", 1)
            listed[what.strip()] = uri
    assert set(listed) >= {"shards", "model bundle", "embedding table", "denoised images", "report"}
    assert {p.name for p in Path(listed["model bundle"]).iterdir()} >= {"weights.safetensors", "bundle.json"}
    assert (Path(listed["report"])).is_file() and Path(listed["report"]).stat().st_size > 10_000

    # 5,000 digits embedded exactly once, one part per input shard.
    parts = sorted((out / "embeddings").glob("part-*.parquet"))
    assert len(parts) == 5
    keys = [k for p in parts for k in pq.read_table(p, columns=["key"]).column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == 5000
    assert (out / "embeddings" / "_SUCCESS").exists()

    # The held-out noisy copy comes back denoised under the same relative names.
    noisy = sorted(p.relative_to(out / "noisy") for p in (out / "noisy").rglob("*.png"))
    denoised = sorted(p.relative_to(out / "denoised") for p in (out / "denoised").rglob("*.png"))
    assert len(noisy) == 4000 and noisy == denoised

    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["counts"]["rows_out"] == 4000 and summary["counts"]["rows_rejected"] == 0
    assert "held-out PSNR noisy -> denoised" in text
