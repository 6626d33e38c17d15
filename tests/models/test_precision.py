"""--precision: bf16 autocast where it pays, float32 results, channels_last; numbers stay honest.

The comparisons run every model family on real photographs (scikit-image's), the shipped denoisers on
noisy photos, and a short training run in both precisions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from skimage import data as skdata

from raeflow.batch.decoding import DecodeSpec, decode_rows
from raeflow.batch.predictors import DenoisePredictor, EncodePredictor, to_tensor
from raeflow.data import images
from raeflow.errors import ConfigError
from raeflow.hardware import check_precision
from raeflow.models import create_model, load_bundle, save_bundle
from raeflow.models import precision as prec
from raeflow.models.precision import Precision, checked_precision, prepare_model, resolve_precision
from raeflow.train.config import TrainConfig
from raeflow.train.plain import run_plain

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "page", "coins")

FAMILY_INPUTS = {
    "dense_mnist": (1, 28, 28),
    "conv_mnist": (1, 28, 28),
    "conv_dense_coco": (3, 64, 64),
    "strided_cifar10": (3, 32, 32),
    "vae_cifar10": (3, 32, 32),
    "cvae_mnist": (1, 28, 28),
    "unet_rgb": (3, 96, 128),
    "denoise_rgb": (3, 96, 128),
}
"""One preset of every family, at its input size."""


def _photo(name: str, channels: int) -> np.ndarray:
    """A scikit-image photograph as `uint8` `(H, W, channels)`."""
    array = getattr(skdata, name)()
    if array.ndim == 2:
        array = array[:, :, None]
    return images.to_channels(array[:, :, :3], channels)


def _photo_rows(channels: int) -> pa.Table:
    datas = [images.encode_image(_photo(name, channels), "png") for name in PHOTOS]
    return pa.table(
        {
            "key": list(PHOTOS),
            "source": ["skimage"] * len(PHOTOS),
            "image": datas,
            "label": pa.nulls(len(PHOTOS), pa.int64()),
            "error": pa.nulls(len(PHOTOS), pa.string()),
            "shard": pa.array([0] * len(PHOTOS), pa.int64()),
        }
    )


def _embeddings(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_unknown_precision_is_a_one_line_error_listing_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"--precision must be one of auto, bf16, fp32, got 'fp16'"):
        check_precision("fp16")


def test_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu).name == "fp32"
    forced = resolve_precision("bf16", cpu)
    assert forced.name == "bf16" and forced.note and "slower than float32" in forced.note
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu).name == "bf16" and resolve_precision("auto", cpu).note is None
    assert resolve_precision("fp32", cpu).name == "fp32"


def test_a_model_that_fails_in_bf16_falls_back_to_float32_with_a_note() -> None:
    class NoBf16(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x: torch.Tensor, y: object = None) -> dict[str, torch.Tensor]:
            out = self.conv(x)
            if out.dtype == torch.bfloat16:
                raise RuntimeError('"slow_conv2d" not implemented for BFloat16')
            return {"recon": out}

    used = checked_precision(NoBf16(), Precision("bf16", "auto", "cpu", True), torch.zeros(1, 1, 4, 4))
    assert used.name == "fp32" and used.note and "does not run in bf16" in used.note


def test_auto_keeps_a_dense_model_in_float32_on_a_cpu() -> None:
    """bf16 speeds convolutions up on this CPU, not dense_mnist's matrix products (bench/model_speed.py)."""
    probe = {
        name: torch.rand(2, *shape)
        for name, shape in (("dense_mnist", (1, 28, 28)), ("conv_mnist", (1, 28, 28)))
    }
    native_auto = Precision("bf16", "auto", "cpu", True)
    assert (
        checked_precision(create_model("dense_mnist").eval(), native_auto, probe["dense_mnist"]).name
        == "fp32"
    )
    assert (
        checked_precision(create_model("conv_mnist").eval(), native_auto, probe["conv_mnist"]).name == "bf16"
    )
    forced = Precision("bf16", "bf16", "cpu", True)  # asked for: the user gets it
    assert checked_precision(create_model("dense_mnist").eval(), forced, probe["dense_mnist"]).name == "bf16"
    on_gpu = Precision("bf16", "auto", "cuda", True)  # tensor cores speed dense layers up
    assert checked_precision(create_model("dense_mnist").eval(), on_gpu, probe["dense_mnist"]) is on_gpu


def test_batches_are_channels_last_without_a_copy() -> None:
    arrays = [_photo("astronaut", 3)[:64, :80] for _ in range(2)]
    x = to_tensor(arrays)
    assert x.shape == (2, 3, 64, 80) and x.is_contiguous(memory_format=torch.channels_last)
    model = prepare_model(create_model("conv_dense_coco"), resolve_precision("fp32", torch.device("cpu")))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("preset", sorted(FAMILY_INPUTS))
def test_bf16_embeddings_match_float32_on_photos(preset: str, tmp_path: Path) -> None:
    channels, height, width = FAMILY_INPUTS[preset]
    torch.manual_seed(0)
    model = create_model(preset)
    bundle = save_bundle(model, str(tmp_path / preset))
    decoded = decode_rows(_photo_rows(channels), DecodeSpec(channels=channels, height=height, width=width))
    exact = EncodePredictor(bundle, precision="fp32")(decoded)
    fast = EncodePredictor(bundle, precision="bf16")(decoded)
    assert fast.schema.metadata[b"raeflow.precision"] == b"bf16"
    assert fast.schema.field("embedding").type == pa.list_(
        pa.float32(), exact.schema.field("embedding").type.list_size
    )
    a, b = _embeddings(exact), _embeddings(fast)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    assert cosine.mean() >= 0.999, f"{preset}: mean cosine {cosine.mean():.5f}"


@pytest.mark.parametrize(("bundle", "channels"), [("builtin:denoise-grey", 1), ("builtin:denoise-rgb", 3)])
def test_shipped_denoisers_lose_under_0_05_db_in_bf16(bundle: str, channels: int) -> None:
    rng = np.random.default_rng(0)
    exact_model, fast_model = (DenoisePredictor(bundle, precision=p) for p in ("fp32", "bf16"))
    assert fast_model.precision.name == "bf16"
    losses = []
    for name in ("astronaut", "camera", "coffee"):
        clean = _photo(name, channels)[:256, :256]
        noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
        exact, fast = exact_model.denoise(noisy), fast_model.denoise(noisy)
        assert exact.dtype == fast.dtype == np.uint8 and fast.shape == clean.shape
        losses.append(_psnr(exact, clean) - _psnr(fast, clean))
    assert np.mean(losses) <= 0.05, f"bf16 loses {np.mean(losses):.3f} dB on average"
    assert max(losses) <= 0.1


def test_bf16_training_reaches_the_float32_loss_and_its_bundle_runs_in_float32(tmp_path: Path) -> None:
    """Two short runs of the same seed: bf16's validation loss within 5 % of float32's (a tolerance
    well above the run-to-run spread of bf16 rounding, far below what a broken loss would give)."""
    records = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(
            data="builtin:mnist",
            model="conv",
            out=str(tmp_path / precision),
            limit=600,
            epochs=2,
            batch_size=32,
            precision=precision,
        )
        records[precision] = run_plain(config, quiet=True)
    fp32, bf16 = records["fp32"]["val_loss"], records["bf16"]["val_loss"]
    assert bf16 <= fp32 * 1.05, f"bf16 val loss {bf16:.5f} against float32's {fp32:.5f}"
    meta = json.loads((tmp_path / "bf16" / "model" / "bundle.json").read_text())
    assert meta["training"]["precision"] == "bf16" and "cpu" in meta["training"]
    # A bundle trained in bf16 runs in float32, and one trained in float32 runs in bf16.
    digits = decode_rows(_photo_rows(1).slice(0, 4), DecodeSpec(channels=1, height=28, width=28))
    for trained, run_in in (("bf16", "fp32"), ("fp32", "bf16")):
        bundle = str(tmp_path / trained / "model")
        assert load_bundle(bundle).meta["training"]["precision"] == trained
        table = EncodePredictor(bundle, precision=run_in)(digits)
        assert table.schema.metadata[b"raeflow.precision"] == run_in.encode()
        assert np.isfinite(_embeddings(table)).all()
