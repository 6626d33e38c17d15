"""GPU smoke test and speed check, with PyTorch alone (no Ray: a GPU box may have none).

    python bench/gpu_smoke.py                 # on a machine with a CUDA GPU
    python bench/gpu_smoke.py --device cpu    # the same checks on this CPU (to try the script)

1. The Ray-free training loop (`raeflow.train.plain`) trains the blind denoiser on patches of
   scikit-image's photos for a few hundred steps on the device, in fp32 and in bf16: patches/s.
2. The embed predictor (`conv_dense_coco`, batches of 256 x 3x64x64, and the shipped
   `builtin:mnist-conv`) and the denoise predictor (`builtin:denoise-grey`, `builtin:denoise-rgb` on
   512x512 noisy photos) on the device in fp32 and bf16: images/s, and the outputs compared with
   the CPU's float32 ones (embedding cosine; PSNR of the denoised photo against the clean one).

Exits 1 when an output is off (cosine below 0.999, or more than 0.05 dB PSNR lost), 0 otherwise;
without a GPU (and no --device cpu) it says so and exits 0. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from skimage import data as skdata

from raeflow.batch.decoding import DecodeSpec, decode_rows
from raeflow.batch.predictors import DenoisePredictor, EncodePredictor
from raeflow.data import images
from raeflow.hardware import cpu_description
from raeflow.models import create_model, save_bundle
from raeflow.train.config import TrainConfig
from raeflow.train.plain import run_plain

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "page")


def _photo(name: str, channels: int, side: int) -> np.ndarray:
    array = getattr(skdata, name)()
    array = array[:, :, None] if array.ndim == 2 else array[:, :, :3]
    array = images.to_channels(array, channels)
    reps = (-(-side // array.shape[0]), -(-side // array.shape[1]), 1)
    return np.ascontiguousarray(np.tile(array, reps)[:side, :side])


def _rows(arrays: list[np.ndarray]) -> pa.Table:
    n = len(arrays)
    return pa.table(
        {
            "key": [f"img{i}" for i in range(n)],
            "source": ["skimage"] * n,
            "image": [images.encode_raw(a) for a in arrays],
            "label": pa.nulls(n, pa.int64()),
            "error": pa.nulls(n, pa.string()),
            "shard": pa.array([0] * n, pa.int64()),
        }
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, rounds: int = 3) -> float:
    fn()  # warm-up: cuDNN / oneDNN pick kernels on the first call
    _sync(device)
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def embed_rows(device: str, work: Path) -> list[list[str]]:
    torch.manual_seed(0)
    coco = save_bundle(create_model("conv_dense_coco"), str(work / "coco"))
    cases = [
        (coco, 3, 64, 256),
        ("builtin:mnist-conv", 1, 28, 256),
    ]
    rows = []
    for bundle, channels, side, batch in cases:
        arrays = [_photo(PHOTOS[i % len(PHOTOS)], channels, 512) for i in range(batch)]
        decoded = decode_rows(
            _rows(arrays), DecodeSpec(channels=channels, height=side, width=side, fit="resize")
        )
        reference = _embeddings(EncodePredictor(bundle, precision="fp32", device="cpu")(decoded))
        for precision in ("fp32", "bf16"):
            predictor = EncodePredictor(bundle, precision=precision, device=device)
            out = _embeddings(predictor(decoded))
            seconds = _timed(lambda p=predictor, d=decoded: p(d), device)
            cosine = np.sum(out * reference, axis=1) / (
                np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1) + 1e-12
            )
            rows.append(
                [
                    f"embed {Path(bundle).name} {channels}x{side}x{side}",
                    predictor.precision.name,
                    f"{batch / seconds:,.0f} images/s",
                    f"cosine {cosine.mean():.5f}",
                    "ok" if cosine.mean() >= 0.999 else "OFF",
                ]
            )
    return rows


def _embeddings(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def denoise_rows(device: str) -> list[list[str]]:
    rng = np.random.default_rng(0)
    rows = []
    for bundle, channels in (("builtin:denoise-grey", 1), ("builtin:denoise-rgb", 3)):
        clean = [_photo(name, channels, 512) for name in PHOTOS[:4]]
        noisy = [np.clip(c + rng.normal(0, 25, c.shape), 0, 255).astype(np.uint8) for c in clean]
        cpu = DenoisePredictor(bundle, precision="fp32", device="cpu")
        reference = np.mean([_psnr(cpu.denoise(n), c) for n, c in zip(noisy, clean, strict=True)])
        for precision in ("fp32", "bf16"):
            predictor = DenoisePredictor(bundle, precision=precision, device=device)
            psnr = np.mean([_psnr(predictor.denoise(n), c) for n, c in zip(noisy, clean, strict=True)])
            seconds = _timed(lambda p=predictor, ns=noisy: [p.denoise(n) for n in ns], device)
            lost = reference - psnr
            rows.append(
                [
                    f"denoise {bundle} 512x512",
                    predictor.precision.name,
                    f"{len(noisy) / seconds:,.1f} images/s",
                    f"PSNR {psnr:.2f} dB (CPU fp32 {reference:.2f})",
                    "ok" if lost <= 0.05 else "OFF",
                ]
            )
    return rows


def train_rows(device: str, work: Path, steps: int) -> list[list[str]]:
    rows = []
    for precision in ("fp32", "bf16"):
        batch = 32
        # builtin:photos holds 18 photos, about 16 in the training split: patches_per_image sets the steps
        per_image = max(1, steps * batch // 16)
        config = TrainConfig(
            data="builtin:photos",
            model="denoiser",
            preset="denoise_grey",
            out=str(work / f"train-{precision}"),
            epochs=1,
            batch_size=batch,
            patch_size=64,
            patches_per_image=per_image,
            denoise="gaussian:0-0.2",
            gpu=device.startswith("cuda"),
            precision=precision,
        )
        record = run_plain(config, quiet=True)
        rows.append(
            [
                "train denoise_grey, 32 x 1x64x64 patches",
                precision,
                f"{record['images_per_s']:,.0f} patches/s",
                f"{record['step']} steps, val PSNR {record['val_psnr']:.2f} dB",
                "ok" if np.isfinite(record["val_loss"]) else "OFF",
            ]
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    parser.add_argument("--steps", type=int, default=300, help="training steps per precision")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check (run with --device cpu to try the script on this CPU)")
        return 0
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else cpu_description()
    print(
        f"device: {args.device} ({where}); torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="raeflow-gpu-smoke-") as tmp:
        work = Path(tmp)
        rows = (
            embed_rows(args.device, work)
            + denoise_rows(args.device)
            + train_rows(args.device, work, args.steps)
        )
    print("\n| work | precision | speed | outputs | check |")
    print("| --- | --- | ---: | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")
    return 1 if any(row[-1] != "ok" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
