"""`raeflow demo`, shortened: the whole flow runs on a fresh local Ray and leaves every output it names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from raeflow.demo import DemoConfig, run_demo


@pytest.mark.slow
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
    assert set(listed) >= {
        "shards",
        "model bundle",
        "embedding table",
        "noisy copy",
        "denoised images",
        "held-out (clean)",
        "report",
    }
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
    # ... and the report read their clean copies, which the summary names too.
    clean = sorted(
        p.relative_to(listed["held-out (clean)"]) for p in Path(listed["held-out (clean)"]).rglob("*.png")
    )
    assert clean == noisy

    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["counts"]["rows_out"] == 4000 and summary["counts"]["rows_rejected"] == 0
    assert "held-out PSNR noisy -> denoised" in text


def test_summary_names_every_folder_the_demo_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The flow's steps stand in for themselves (each writes its folder); the demo's own files are real.
    import raeflow.batch.denoise
    import raeflow.batch.embed
    import raeflow.data.shard_writer
    import raeflow.report.job
    import raeflow.train.trainer

    def made(folder: str, **fields: object) -> SimpleNamespace:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(out=folder, lines=lambda: [], images_per_second=1.0, **fields)

    def denoise(config) -> SimpleNamespace:  # the demo reads the denoised digits back
        shutil.copytree(config.data, config.out)
        return made(config.out)

    monkeypatch.setattr(
        raeflow.data.shard_writer, "pack_source", lambda s: made(s.out, num_rows=5000, shards=[1] * 5)
    )
    monkeypatch.setattr(
        raeflow.train.trainer,
        "run_training",
        lambda c, echo: made(c.out, bundle=str(made(c.out + "/model").out), last={"val_psnr": 20.0}),
    )
    monkeypatch.setattr(raeflow.batch.embed, "run_embed", lambda c: made(c.out))
    monkeypatch.setattr(raeflow.batch.denoise, "run_denoise", denoise)
    monkeypatch.setattr(raeflow.report.job, "run_report", lambda c: made(c.out))
    printed: list[str] = []
    out = tmp_path / "demo"
    summary = run_demo(DemoConfig(out=str(out), train_images=4900, tsne=False), echo=printed.append)

    outputs = summary.outputs
    assert outputs["held-out (clean)"] == str(out / "held-out")
    assert len(list((out / "held-out").rglob("*.png"))) == 100  # the digits after the first 4,900
    written = {p.name for p in out.iterdir()}
    named = {Path(uri).relative_to(out).parts[0] for uri in outputs.values()}
    assert written <= named, f"written but not in the summary: {written - named}"
    assert any(line.strip().startswith("held-out (clean)") for line in printed)
