"""The per-worker loop without Ray: a tiny run writes a bundle, metrics, grids; a rerun continues it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from raeflow.models import load_bundle
from raeflow.train.config import TrainConfig
from raeflow.train.plain import run_plain

# `import ray` fails in this interpreter, so the run proves the loop needs no Ray at all.
NO_RAY = "import sys; sys.modules['ray'] = None; from raeflow.train.plain import main; main(sys.argv[1:])"


def test_plain_loop_trains_without_ray_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--data", "builtin:mnist", "--model", "conv", "--out", str(out), "--limit", "300"]
    done = subprocess.run(
        [sys.executable, "-c", NO_RAY, *args, "--epochs", "1", "--batch-size", "32"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch 1/1" in done.stdout and f"model bundle: {out}/model" in done.stdout
    assert {p.name for p in (out / "model").iterdir()} == {"weights.safetensors", "bundle.json"}
    assert (out / "checkpoints" / "checkpoint-epoch-0001" / "optimizer.safetensors").exists()
    with Image.open(out / "grids" / "epoch-0001.png") as grid:
        assert grid.width > 8 * 28 and grid.height > 2 * 28  # originals and reconstructions, 8 wide

    record = run_plain(
        TrainConfig(data="builtin:mnist", model="conv", out=str(out), limit=300, epochs=2, batch_size=32),
        quiet=True,
    )
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert lines[1]["restored_from_epoch"] == 1 and record["epoch"] == 2
    assert lines[1]["step"] > lines[0]["step"]  # the step count went on from the checkpoint
    assert lines[0]["train_images"] + lines[0]["val_images"] == 300
    assert all(len(line["load_average"]) == 3 and line["load_average"][0] >= 0 for line in lines)

    bundle = load_bundle(str(out / "model"))
    assert bundle.meta["training"]["epochs"] == 2 and bundle.meta["training"]["data"] == "builtin:mnist"
    assert bundle.meta["settings"]["limit"] == 300 and "val_psnr" in bundle.meta["metrics"]
    recon = bundle.model(torch.rand(3, 1, 28, 28))["recon"]
    assert recon.shape == (3, 1, 28, 28) and torch.isfinite(recon).all()
