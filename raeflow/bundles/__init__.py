"""Pretrained model bundles shipped inside the package, addressed as `builtin:NAME` by every `--model`.

    bundle = load_bundle("builtin:denoise-rgb")       # raeflow.models.load_bundle resolves the name
    for info in list_builtin(): print(info.name, info.description)

Each is a normal bundle folder (`raeflow/bundles/<name>/`: `weights.safetensors` + `bundle.json`)
made by `bench/make_bundles.py` (`make bundles`) with `raeflow train`; its `bundle.json` records the
training command, the benchmark PSNRs measured after training (`benchmark`) and a small held-out
check (`heldout`) that `heldout_psnr` recomputes, so a test can tell that the shipped weights still
perform as recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raeflow.errors import BundleError

PREFIX = "builtin:"
"""URI prefix of the shipped bundles."""
ROOT = Path(__file__).resolve().parent
"""Folder holding one sub-folder per shipped bundle."""

DESCRIPTIONS = {
    "denoise-grey": "blind grey denoiser (Gaussian noise, sigma 0-50 on 0-255), any image size",
    "denoise-rgb": "blind colour denoiser (Gaussian noise, sigma 0-50 on 0-255), any image size",
    "mnist-conv": "convolutional autoencoder for 28x28 grey digits (MNIST), 8x4x4 codes (128 values)",
    "photo-ae": "photo encoder: any photo resized to 64x64 RGB, 16x4x4 codes (256 values) for embed/dedup",
}
"""The shipped bundles and what each is for."""


@dataclass(frozen=True)
class BuiltinBundle:
    """One shipped bundle: its name, folder and recorded facts."""

    name: str
    """Name after `builtin:` (`denoise-grey`)."""
    path: Path
    """Its folder inside the installed package."""
    description: str
    """One line: what it is for."""
    meta: dict[str, Any]
    """Its parsed `bundle.json`."""


def is_builtin(uri: str) -> bool:
    """Whether `uri` names a shipped bundle (`builtin:NAME`)."""
    return str(uri).startswith(PREFIX)


def builtin_path(uri: str) -> Path:
    """The package folder of `builtin:NAME`; `BundleError` naming the shipped ones for an unknown name."""
    name = str(uri).removeprefix(PREFIX)
    path = ROOT / name
    if name not in DESCRIPTIONS or not (path / "bundle.json").is_file():
        known = ", ".join(PREFIX + n for n in DESCRIPTIONS if (ROOT / n / "bundle.json").is_file())
        raise BundleError(
            f"no shipped model {uri!r}; shipped models: {known or 'none in this install'} "
            "(`raeflow models` lists them)"
        )
    return path


def list_builtin() -> list[BuiltinBundle]:
    """Every bundle shipped in this install, in `DESCRIPTIONS` order."""
    found = []
    for name, description in DESCRIPTIONS.items():
        meta_path = ROOT / name / "bundle.json"
        if meta_path.is_file():
            found.append(BuiltinBundle(name, ROOT / name, description, json.loads(meta_path.read_text())))
    return found


# -- the held-out check ------------------------------------------------------------------------------
HELDOUT_CROPS = {
    # (scikit-image photo, top, left) of 96x96 crops none of the models trained on
    "denoise-grey": [("camera", 100, 200), ("astronaut", 40, 180), ("coffee", 150, 300), ("moon", 200, 200)],
    "denoise-rgb": [
        ("astronaut", 40, 180),
        ("astronaut", 300, 60),
        ("coffee", 150, 300),
        ("coffee", 250, 40),
    ],
}
"""Crops of the held-out check of each denoiser (scikit-image photos in its wheel, never trained on)."""
HELDOUT_PHOTOS = ("astronaut", "coffee")
"""The held-out check of `photo-ae`: these scikit-image photos whole, resized to 64x64 as `raeflow
embed` resizes them, reconstructed clean (bench/make_bundles.py never trains on them)."""
HELDOUT_SIZE = 96
HELDOUT_SIGMA = 25.0
"""Noise of the held-out check, on the 0-255 scale (unclipped, fixed seed)."""
HELDOUT_SEED = 2024


def heldout_sample(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(clean, input) float32 `(N, C, H, W)` arrays of the held-out check of bundle `name`.

    Denoisers: 96x96 crops of held-out photos with Gaussian noise (sigma 25, fixed seed, unclipped).
    `mnist-conv`: the first 64 digits of `builtin:mnist`'s validation split, clean in and out.
    `photo-ae`: `HELDOUT_PHOTOS` resized to 64x64, clean in and out.
    """
    if name == "mnist-conv":
        from raeflow.data.sources import open_source
        from raeflow.train.batches import DecodeForTraining, iter_plain_batches

        decode = DecodeForTraining(split="val", channels=1, height=28, width=28, val_fraction=0.1)
        batch = next(iter_plain_batches(open_source("builtin:mnist"), decode, 64))
        clean = batch["image"].astype(np.float32) / 255.0  # (64, 1, 28, 28)
        return clean, clean
    from skimage import data as skdata

    if name == "photo-ae":
        from raeflow.data.images import fit_to_contract

        photos = [fit_to_contract(getattr(skdata, photo)()[..., :3], 64, 64) for photo in HELDOUT_PHOTOS]
        clean = np.stack(photos).transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # (N, 3, 64, 64)
        return clean, clean
    channels = 3 if name == "denoise-rgb" else 1
    crops = []
    for photo, top, left in HELDOUT_CROPS[name]:
        pixels = np.asarray(getattr(skdata, photo)(), dtype=np.float32) / 255.0
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        pixels = pixels[..., :3]
        if channels == 1:  # ITU-R 601 luma, as PIL's "L"
            pixels = pixels @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
        crop = pixels[top : top + HELDOUT_SIZE, left : left + HELDOUT_SIZE]  # (S, S, C)
        crops.append(crop.transpose(2, 0, 1))
    clean = np.stack(crops).astype(np.float32)  # (N, C, S, S)
    rng = np.random.default_rng(HELDOUT_SEED)
    noisy = clean + rng.standard_normal(clean.shape).astype(np.float32) * (HELDOUT_SIGMA / 255.0)
    return clean, noisy


def psnr(clean: np.ndarray, output: np.ndarray) -> float:
    """PSNR in dB of one image in [0, 1] (output clipped to [0, 1] first), as the benchmarks compute it."""
    mse = float(np.mean((np.clip(output, 0.0, 1.0) - clean) ** 2, dtype=np.float64))
    return 10.0 * float(np.log10(1.0 / max(mse, 1e-12)))


def heldout_psnr(name: str, model: Any) -> float:
    """Mean PSNR of `model` (an `Autoencoder`) on the held-out check of bundle `name`."""
    import torch

    clean, inputs = heldout_sample(name)
    with torch.no_grad():
        out = model(torch.from_numpy(inputs))["recon"].float().numpy()
    return float(np.mean([psnr(c, o) for c, o in zip(clean, out, strict=True)]))
