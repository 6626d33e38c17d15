"""`raeflow train` on Ray Train (the shared local Ray): resume, lost workers, and that models learn.

Each run is tiny (`--limit`, small batches, 1-4 epochs); workers reserve half a CPU each so the
decode tasks still get a core of the two the shared session has.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import numpy as np
import pytest
import s3fs
from click.testing import CliRunner

from raeflow.cli import main
from raeflow.errors import ConfigError
from raeflow.models import load_bundle
from raeflow.report.metrics import psnr
from raeflow.train.batches import is_validation
from raeflow.train.config import TrainConfig
from raeflow.train.loop import FAIL_AT_ENV, FAIL_MARKER_ENV
from raeflow.train.trainer import run_training

pytestmark = pytest.mark.slow


def _config(out: Path | str, **overrides) -> TrainConfig:
    settings = {"data": "builtin:mnist", "model": "conv", "out": str(out), "limit": 400, "batch_size": 32}
    return TrainConfig(**{**settings, "cpus_per_worker": 0.5, **overrides})


def _records(out: Path | str) -> list[dict]:
    with fsspec.open(f"{out}/metrics.jsonl", "r") as handle:
        return [json.loads(line) for line in handle]


def test_rerun_with_more_epochs_continues_from_the_last_checkpoint_in_a_bucket(
    ray_session, s3_bucket: str
) -> None:
    out = f"{s3_bucket}/runs/mnist"  # Ray Train's storage, metrics, grids and bundles all in S3
    with pytest.raises(ConfigError, match="no checkpoint to continue from"):
        run_training(_config(out, resume=True))
    shown: list[str] = []
    first = run_training(_config(out, epochs=2), echo=shown.append)
    assert first.epochs == 2 and first.resumed_from == 0
    assert [line.split()[1] for line in shown if line.startswith("epoch")] == ["1/2", "2/2"]

    second = run_training(_config(out, epochs=4, resume=True), echo=shown.append)
    records = _records(out)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["restored_from_epoch"] for r in records] == [0, 0, 2, 2]
    assert records[2]["step"] > records[1]["step"]  # optimizer steps went on, not from zero
    assert second.resumed_from == 2 and second.epochs == 4 and second.bundle == f"{out}/model"
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    kept = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{out}/checkpoints") if "checkpoint-epoch" in p)
    assert kept == ["checkpoint-epoch-0003", "checkpoint-epoch-0004"]  # --keep-checkpoints 2
    assert fs.exists(f"{out}/checkpoints/checkpoint-epoch-0004/optimizer.safetensors")
    bundle = load_bundle(f"{out}/model")
    assert bundle.meta["training"]["epochs"] == 4 and bundle.meta["metrics"]["epoch"] == 4
    assert load_bundle(f"{out}/checkpoints/checkpoint-epoch-0004").fingerprint == bundle.fingerprint
    grids = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{out}/grids"))
    assert grids == [f"epoch-000{i}.png" for i in range(1, 5)]

    with pytest.raises(ConfigError, match="use a new --out"):
        run_training(_config(out, model="dense", epochs=5))


def test_lost_worker_restarts_from_the_last_checkpoint(ray_session, tmp_path: Path, monkeypatch) -> None:
    out, marker = tmp_path / "run", tmp_path / "failed-once"
    # 2 workers share ~360 training images: 6 steps per epoch each, so step 15 is inside epoch 3.
    monkeypatch.setenv(FAIL_AT_ENV, "rank:1,step:15")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(marker))
    summary = run_training(_config(out, epochs=3, workers=2, max_failures=1))
    assert marker.exists(), "the test hook never fired"
    records = _records(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]  # each epoch once: redone epochs replace their line
    assert records[0]["restored_from_epoch"] == 0
    # Ray registers a reported checkpoint when it next polls the workers (every 2 s), so a failure
    # right after epoch 2's report may restart from epoch 1's checkpoint; never from scratch.
    assert records[2]["restored_from_epoch"] in (1, 2)
    assert all(r["rank_train_images"][0] == r["rank_train_images"][1] > 0 for r in records)
    assert summary.epochs == 3 and load_bundle(str(out / "model")).meta["training"]["workers"] == 2


def test_lost_worker_without_retries_fails_in_one_line(ray_session, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setenv(FAIL_AT_ENV, "rank:1,step:3")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(tmp_path / "failed-once"))
    args = ["train", "--data", "builtin:mnist", "--model", "conv", "--out", str(out), "--limit", "400"]
    result = CliRunner().invoke(
        main,
        [*args, "--batch-size", "32", "--workers", "2", "--cpus-per-worker", "0.5", "--max-failures", "0"],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training failed" in errors[0] and "rerun the same command" in errors[0]
    assert not (out / "model").exists()


def _mean_image_psnr(mnist_digits, limit: int, val_fraction: float = 0.1) -> float:
    """PSNR on the validation images of predicting the mean training image for each."""
    images = mnist_digits[0][:limit].astype(np.float64) / 255.0  # (N, 28, 28)
    is_val = np.array([is_validation(f"mnist/{i}", val_fraction) for i in range(limit)])
    mean = images[~is_val].mean(axis=0)
    val = images[is_val][:, None]  # (V, 1, 28, 28)
    return float(psnr(val, np.broadcast_to(mean, val.shape).copy()).mean())


def test_conv_beats_the_mean_image_and_denoiser_beats_its_input(ray_session, tmp_path: Path, mnist_digits):
    limit = 4000
    baseline = _mean_image_psnr(mnist_digits, limit)
    # The Keras-blog conv AE's loss: with MSE its sigmoid output sits on the background for 1000s of steps.
    common = {"limit": limit, "epochs": 2, "batch_size": 16, "lr": 3e-3, "model_args": {"recon_loss": "bce"}}
    plain = run_training(_config(tmp_path / "plain", **common)).last
    print(f"\nmean-image baseline {baseline:.2f} dB; conv {plain['val_psnr']:.2f} dB")
    assert plain["val_psnr"] > baseline + 1.5, (plain["val_psnr"], baseline)

    denoise = {"model": "conv_denoise", "denoise": "gaussian:0.4"}  # the 32-32-16 denoising variant
    noisy = run_training(_config(tmp_path / "denoise", **denoise, **common)).last
    print(f"denoiser {noisy['val_psnr']:.2f} dB from noisy input {noisy['val_noisy_psnr']:.2f} dB")
    assert noisy["val_psnr"] > noisy["val_noisy_psnr"] + 1.5, (noisy["val_psnr"], noisy["val_noisy_psnr"])
