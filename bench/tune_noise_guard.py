"""Choose the denoisers' noise guard on images the model never trained on, and never on a test set.

    .venv/bin/python bench/tune_noise_guard.py                                  # builtin:denoise-grey
    .venv/bin/python bench/tune_noise_guard.py --model bench-out/bundles/denoise-grey/model \
        --guards 4-10,3-8,2-6

The images are Train400's validation split: the 10 % of keys that `raeflow train` holds out by a
hash of the key (`raeflow.train.batches.is_validation`), so the shipped grey model never trained on
them, and BSD68/Set12 stay untouched for `bench/denoise_quality.py`. For each noise level (0-255
scale, unclipped Gaussian, fixed seeds) and each guard `low-high` (plus none), it prints the mean
PSNR and how many images came out worse than their noisy input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.denoise_quality import BENCH, add_noise, psnr  # noqa: E402
from raeflow.models import load_bundle  # noqa: E402
from raeflow.train.batches import is_validation  # noqa: E402

SIGMAS = (0, 3, 5, 8, 10, 15, 25)
VAL_FRACTION = 0.1
"""`raeflow train`'s default --val-fraction, with which the shipped models were trained."""


def validation_images() -> list[np.ndarray]:
    """Train400's held-out grey images, float in [0, 1]."""
    paths = sorted((BENCH / "Train400").glob("*.png"))
    held_out = [p for p in paths if is_validation(p.stem, VAL_FRACTION)]  # the folder source keys by stem
    return [np.asarray(Image.open(p).convert("L"), dtype=np.float64) / 255.0 for p in held_out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:denoise-grey")
    parser.add_argument("--guards", default="4-10,3-8,2-6", help="comma-separated low-high pairs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model: Any = load_bundle(args.model).model.eval()
    guards: list[tuple[float, float] | None] = [None]
    guards += [(float(g.split("-")[0]), float(g.split("-")[1])) for g in args.guards.split(",")]
    images = validation_images()
    print(f"{len(images)} held-out Train400 images; PSNR dB (images worse than their noisy input)\n")
    names = ["no guard" if g is None else f"guard {g[0]:g}-{g[1]:g}" for g in guards]
    print("| σ | noisy input | " + " | ".join(names) + " |")
    print("| --- | --- |" + " --- |" * len(guards))
    for sigma in SIGMAS:
        noisy_psnr: list[float] = []
        outputs: dict[str, list[float]] = {name: [] for name in names}
        for index, clean in enumerate(images):
            noisy = add_noise(clean, sigma, seed=99_000 + 100 * sigma + index, clip=False)
            noisy_psnr.append(psnr(clean, noisy) if sigma else float("inf"))
            x = torch.from_numpy(noisy[None, None].astype(np.float32))  # (1, 1, H, W)
            for name, guard in zip(names, guards, strict=True):
                model.noise_guard = guard
                with torch.no_grad():
                    outputs[name].append(psnr(clean, model(x)["recon"][0, 0].numpy().astype(np.float64)))
        cells = []
        for name in names:
            values = np.asarray(outputs[name])
            if sigma == 0:  # clean input: count the images returned unchanged (PSNR capped at 120)
                changed = values[values < 100]
                others = f", others {np.mean(changed):.2f}" if changed.size else ""
                cells.append(f"{values.size - changed.size}/{values.size} unchanged{others}")
            else:
                worse = int(np.sum(values < np.asarray(noisy_psnr)))
                cells.append(f"{np.mean(values):.2f} ({worse})")
        input_cell = "∞" if sigma == 0 else f"{np.mean(noisy_psnr):.2f}"
        print(f"| {sigma} | {input_cell} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
