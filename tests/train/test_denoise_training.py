"""Training denoisers with `raeflow train`: patches, noise ranges, step grids, early refusals, and a
plain warning when the model ends worse than its noisy input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import raeflow.train.trainer as trainer
from raeflow.cli import main
from raeflow.hardware import PRECISION_NAMES, cpu_has_native_bf16
from raeflow.models import load_bundle
from raeflow.train.batches import is_validation
from raeflow.train.loop import worse_than_input
from raeflow.train.plain import main as plain_main
from raeflow.train.trainer import TrainSummary


@pytest.fixture()
def no_ray(monkeypatch) -> list[str]:
    """Record any attempt to start or join Ray (a refusal must come before it)."""
    calls: list[str] = []
    monkeypatch.setattr(trainer, "connect_ray", lambda *a, **k: calls.append("connect_ray"))
    return calls


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--denoise", "gauss:0.1"], "bad noise spec 'gauss:0.1'"),
        (["--denoise", "gaussian:0.3-0.1"], "bad noise spec"),
        (["--patch-size", "4"], "--patch-size must be at least 8"),
        (["--patch-size", "32", "--image-size", "28"], "--patch-size and --image-size exclude each other"),
        (["--patch-size", "32", "--patches-per-image", "0"], "--patches-per-image must be at least 1"),
        (["--grid-steps", "0,10"], "--grid-steps must be positive"),
        (["--grid-steps", "ten"], "--grid-steps must look like"),
    ],
)
def test_bad_training_settings_are_refused_before_ray_starts(
    no_ray: list[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", "builtin:mnist", "--model", "conv", "--out", str(out), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert no_ray == [] and not out.exists()


def test_worse_than_input_names_both_numbers_and_what_to_try() -> None:
    assert worse_than_input({"val_psnr": 21.6, "val_noisy_psnr": 20.6}) is None
    assert worse_than_input({"val_psnr": 30.0}) is None  # not a denoising run
    text = worse_than_input({"val_psnr": 6.4, "val_noisy_psnr": 20.6})
    assert text is not None and "6.40 dB" in text and "20.60 dB" in text
    assert "--epochs" in text and "--model denoiser" in text


def test_train_summary_says_plainly_when_the_model_is_worse_than_its_input(
    monkeypatch, tmp_path: Path
) -> None:
    last = {
        "val_loss": 0.2, "val_psnr": 6.4, "val_noisy_psnr": 20.6, "val_ssim": 0.1, "images_per_s": 50.0,
        "workers": 1,
    }  # fmt: skip
    summary = TrainSummary(
        out=str(tmp_path), bundle=f"{tmp_path}/model", epochs=1, resumed_from=0, seconds=1.0, last=last,
        warning=worse_than_input(last),
    )  # fmt: skip
    monkeypatch.setattr(trainer, "run_training", lambda config, echo: summary)
    args = ["train", "--data", "builtin:mnist", "--model", "unet", "--denoise", "gaussian:0.1", "--out", "x"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "WORSE than its input" in result.output and "6.40 dB against 20.60 dB" in result.output


def test_plain_loop_warns_when_its_denoiser_ends_worse_than_the_noisy_input(tmp_path: Path, capsys) -> None:
    # A plain conv autoencoder after one short epoch at a tiny learning rate: far below its input.
    plain_main(
        ["--data", "builtin:mnist", "--model", "conv", "--out", str(tmp_path / "run"), "--limit", "200",
         "--epochs", "1", "--lr", "1e-5", "--denoise", "gaussian:0.1"]
    )  # fmt: skip
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_psnr"] < record["val_noisy_psnr"]
    assert "WORSE than its input" in out and f"{record['val_psnr']:.2f} dB" in out


def _photo_folder(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(count):
        # smooth gradients plus a few edges: something a denoiser can learn quickly
        y, x = np.mgrid[0:70, 0:90]
        pixels = (96 + 60 * np.sin(x / (7 + i)) + 40 * np.cos(y / 9) + (x > 45) * 30).clip(0, 255)
        pixels = pixels + rng.normal(0, 2, pixels.shape)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"p{i:02d}.png")
    return root


@pytest.mark.slow
def test_train_with_patch_size_trains_on_k_patches_per_image_and_writes_step_grids(
    ray_session, tmp_path: Path
) -> None:
    data, out = _photo_folder(tmp_path / "photos", 12), tmp_path / "run"
    args = [
        "train", "--data", str(data), "--model", "denoiser", "--preset", "denoise_small", "--out", str(out),
        "--patch-size", "32", "--patches-per-image", "4", "--denoise", "gaussian:0-0.2", "--epochs", "2",
        "--batch-size", "8", "--grid-steps", "1,3", "--val-fraction", "0.25", "--cpus-per-worker", "0.5",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    train_count = sum(not is_validation(f"p{i:02d}", 0.25) for i in range(12))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_images"] for r in records] == [4 * train_count] * 2  # patches, not images
    assert records[-1]["val_images"] == 4 * (12 - train_count)
    assert "val_noisy_psnr" in records[-1]  # a denoising run reports its input's PSNR beside its own
    # The summary says what the model ran in, as recorded per epoch (bf16 where the CPU has it natively).
    last = records[-1]
    assert last["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")
    model, lines = PRECISION_NAMES[last["precision"]], result.output.splitlines()
    assert f"  model: {model}, {last['threads']} torch thread(s) per worker" in lines, result.output
    assert any(line.startswith("done: 2 epochs, ") for line in lines), result.output
    grids = sorted(p.name for p in (out / "grids").iterdir())
    assert grids == ["epoch-0001.png", "epoch-0002.png", "step-0000001.png", "step-0000003.png"]
    bundle = load_bundle(str(out / "model"))
    assert bundle.meta["training"]["patch_size"] == 32 and bundle.meta["training"]["augment"] is True
    assert bundle.meta["training"]["noise"] == "gaussian:0-0.2"
    assert bundle.model.input_contract["height"] == "any"


def test_init_from_a_bundle_that_does_not_fit_is_refused_before_ray_starts(
    no_ray: list[str], tmp_path
) -> None:
    args = ["train", "--data", "builtin:mnist", "--model", "denoiser", "--preset", "denoise_small",
            "--patch-size", "16", "--init-from", "builtin:mnist-conv",
            "--out", str(tmp_path / "run")]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "--init-from builtin:mnist-conv: its weights do not fit model 'denoiser'" in result.output
    assert no_ray == []
