"""Make the pretrained bundles shipped in `raeflow/bundles/` with `raeflow train` (Ray Train, local Ray).

    python bench/make_bundles.py                 # prepare data, train all three, measure, install
    python bench/make_bundles.py --only denoise-grey --stage train
    python bench/make_bundles.py --stage install # measure finished runs and copy them into the package
    make bundles                                 # the same as the first line

Stages:
- `prepare`: the colour training folder (`bench-out/bundles/rgb-train/`): Train400 (grey, read as
  RGB) plus 96x96 tiles of the scikit-image colour photos of `RGB_TRAIN_PHOTOS`. The photos of
  `RGB_TEST_PHOTOS` are never used for training: they are the colour model's held-out test.
- `train`: `raeflow train ...` per bundle exactly as `COMMANDS` lists, stage by stage (the grey
  model trains in two: from scratch, then longer at a lower rate from there), into
  `bench-out/bundles/<out>/`.
- `install`: measures each finished model (grey: BSD68 and Set12 at sigma 15/25/50 by the benchmark
  README's protocol; colour: crops of the held-out photos at sigma 5/15/25/50; MNIST: the held-out
  validation digits), records the numbers, the training command and the held-out sample the test
  uses in `bundle.json` (beside the weights' checksum, which it leaves alone), and copies the
  bundle to `raeflow/bundles/<name>/`.

Training data is only Train400 and scikit-image's photographs (and MNIST for `mnist-conv`); BSD68
and Set12 are test sets only. Run from the repository root; the benchmark data is found at
`../shared/benchmarks/denoise` (or `$RAEFLOW_DENOISE_BENCH`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "bundles"
PACKAGE = ROOT / "raeflow" / "bundles"
BENCH = Path(os.environ.get("RAEFLOW_DENOISE_BENCH", ROOT.parent / "shared" / "benchmarks" / "denoise"))

RGB_TRAIN_PHOTOS = ("chelsea", "rocket", "immunohistochemistry", "retina")
"""scikit-image colour photos whose tiles the colour model trains on."""
RGB_TEST_PHOTOS = ("astronaut", "coffee")
"""scikit-image colour photos the colour model never sees: its held-out test (and the test suite's)."""
TILE = 96
"""Side of the colour training tiles (so each photo gives many keys, hence many patches per epoch)."""

GREY_NOISE = "gaussian:0-0.2:unclipped"
"""sigma 0-51 on the 0-255 scale, unclipped like the benchmark protocol."""
RGB_NOISE = "gaussian:0-0.2"
"""sigma 0-51, clipped like the noise of a saved 8-bit photo."""


def _train(name: str, data: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "raeflow.cli", "train", "--data", data, "--out", str(OUT / name), *args]


COMMANDS: dict[str, list[list[str]]] = {
    "denoise-grey": [
        _train(  # one run from scratch, in bf16 on a quiet machine: 90 x 360 images x 64 patches = 2.07 M
            "denoise-grey", str(BENCH / "Train400"),
            "--model", "denoiser", "--preset", "denoise_grey",
            "--patch-size", "64", "--patches-per-image", "64", "--denoise", GREY_NOISE,
            "--epochs", "90", "--batch-size", "64", "--lr", "1e-3", "--precision", "auto",
        ),
    ],
    "denoise-rgb": [
        _train(
            "denoise-rgb", str(OUT / "rgb-train"),
            "--model", "denoiser", "--preset", "denoise_rgb_per_channel",
            "--init-from", str(OUT / "denoise-grey" / "model"),
            "--patch-size", "64", "--patches-per-image", "4",
            "--denoise", RGB_NOISE, "--epochs", "3", "--batch-size", "16", "--lr", "2e-4",
            "--cpus-per-worker", "2",
        ),
    ],
    "mnist-conv": [
        _train("mnist-conv", "builtin:mnist", "--model", "conv", "--epochs", "6", "--batch-size", "64"),
    ],
}  # fmt: skip
"""The recorded `raeflow train` commands of each shipped bundle, run in order (a later stage starts
from the earlier one's model); the last one's `--out` holds the bundle."""


def _out(command: list[str]) -> Path:
    return Path(command[command.index("--out") + 1])


def prepare_rgb_data() -> Path:
    """Write the colour training folder: Train400 PNGs and tiles of `RGB_TRAIN_PHOTOS`."""
    from PIL import Image
    from skimage import data as skdata

    folder = OUT / "rgb-train"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "train400").mkdir(parents=True)
    (folder / "photos").mkdir()
    for path in sorted((BENCH / "Train400").glob("*.png")):
        shutil.copyfile(path, folder / "train400" / path.name)
    for name in RGB_TRAIN_PHOTOS:
        pixels = getattr(skdata, name)()[..., :3]  # (H, W, 3) uint8
        if name == "retina":  # 1411x1411, mostly black border: half size, keep the fundus
            pixels = np.asarray(Image.fromarray(pixels).resize((705, 705), Image.Resampling.BICUBIC))
        h, w = pixels.shape[:2]
        for top in range(0, h - TILE + 1, TILE):
            for left in range(0, w - TILE + 1, TILE):
                tile = pixels[top : top + TILE, left : left + TILE]
                if tile.mean() < 8:  # black background only
                    continue
                Image.fromarray(tile).save(folder / "photos" / f"{name}-{top:04d}-{left:04d}.png")
    return folder


def train(name: str) -> None:
    """Run the recorded training commands of one bundle, logging to bench-out/bundles/<out>.log."""
    OUT.mkdir(parents=True, exist_ok=True)
    for command in COMMANDS[name]:
        log = OUT / f"{_out(command).name}.log"
        print(f"[{name}] {shlex.join(command)}\n  log: {log}", flush=True)
        start = time.time()
        with open(log, "a") as handle:  # a rerun continues the run (and its log)
            subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        print(f"[{name}] {_out(command).name} trained in {time.time() - start:.0f} s", flush=True)


def _portable(value):
    """Paths of this checkout written relative to the repository (bundle.json is shipped)."""
    if isinstance(value, str):
        return value.replace(str(BENCH), "../shared/benchmarks/denoise").replace(str(ROOT) + "/", "")
    if isinstance(value, dict):
        return {key: _portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_portable(item) for item in value]
    return value


def _training_facts(name: str) -> dict:
    """Commands, wall time and speed of every stage of the run, from their metrics.jsonl."""
    stages = [
        [json.loads(line) for line in (_out(command) / "metrics.jsonl").read_text().splitlines() if line]
        for command in COMMANDS[name]
    ]
    records = [record for stage in stages for record in stage]
    images = sum(r["train_images"] for r in records)
    commands = [_portable(shlex.join(["raeflow", *command[3:]])) for command in COMMANDS[name]]
    return {
        "command": commands[-1],
        "commands": commands,
        "made_by": "bench/make_bundles.py (make bundles)",
        "wall_seconds": round(sum(r["epoch_seconds"] for r in records), 1),
        "epochs": len(records),
        "train_images_seen": images,
        "images_per_s": round(images / max(1e-9, sum(r["train_seconds"] for r in records)), 1),
        "machine": f"{os.cpu_count()} CPU cores (shared), no GPU",
        "last_epoch": {k: records[-1][k] for k in ("epoch", "val_psnr", "val_ssim") if k in records[-1]}
        | ({"val_noisy_psnr": records[-1]["val_noisy_psnr"]} if "val_noisy_psnr" in records[-1] else {}),
    }


def _benchmark(name: str, model_dir: Path) -> tuple[dict, str]:
    """PSNR/SSIM on the benchmark sets (grey), the held-out colour crops (rgb) or MNIST validation."""
    sys.path.insert(0, str(ROOT))
    from bench import denoise_quality as dq

    results: dict = {}
    if name == "denoise-grey":
        dq.run_grey({"ours": dq.Ours(str(model_dir), threads=2)}, 1, results)
        table = {k.removeprefix("grey/").removesuffix("/ours"): _brief(v) for k, v in results.items()}
        bsd25 = results["grey/BSD68/25/ours"]["psnr"]
        summary = f"BSD68 sigma 25: {bsd25:.2f} dB PSNR (BM3D published 28.57)"
    elif name == "denoise-rgb":
        dq.run_rgb({"ours": dq.Ours(str(model_dir), threads=2)}, results)
        table = {k.removeprefix("rgb/").removesuffix("/ours"): _brief(v) for k, v in results.items()}
        c25 = results["rgb/crops/25/ours"]
        summary = f"held-out colour crops sigma 25: {c25['psnr']:.2f} dB (noisy {c25['noisy_psnr']:.2f})"
    else:
        meta = json.loads((model_dir / "bundle.json").read_text())
        table = {
            "builtin:mnist validation": {
                "psnr": meta["metrics"]["val_psnr"],
                "ssim": meta["metrics"]["val_ssim"],
            }
        }
        summary = f"MNIST validation: {meta['metrics']['val_psnr']:.2f} dB reconstruction PSNR"
    if results:  # bench/denoise_quality.py reuses these rows instead of measuring them again
        (OUT / f"{name}-benchmark.json").write_text(json.dumps(results, indent=1))
        dq.save(results)
    return table, summary


def _brief(result: dict) -> dict:
    keys = ("psnr", "ssim", "noisy_psnr", "seconds_per_image", "images")
    return {key: round(result[key], 4) if isinstance(result[key], float) else result[key] for key in keys}


def install(name: str) -> None:
    """Measure a finished run, record it in its bundle.json and copy the bundle into the package."""
    import torch

    from raeflow.bundles import HELDOUT_CROPS, HELDOUT_SEED, HELDOUT_SIGMA, heldout_psnr
    from raeflow.models import load_bundle

    torch.set_num_threads(2)
    source = _out(COMMANDS[name][-1]) / "model"
    bundle = load_bundle(str(source))
    benchmark, summary = _benchmark(name, source)
    heldout = {
        "psnr": round(heldout_psnr(name, bundle.model), 4),
        "sample": "first 64 builtin:mnist validation digits, clean"
        if name == "mnist-conv"
        else f"96x96 crops {HELDOUT_CROPS[name]} of scikit-image photos, sigma {HELDOUT_SIGMA:g} "
        f"unclipped, seed {HELDOUT_SEED}",
    }
    meta = json.loads((source / "bundle.json").read_text())
    meta["training"] = _portable(meta["training"]) | _training_facts(name)
    meta["settings"] = _portable(meta["settings"])
    meta["benchmark"] = benchmark
    meta["heldout"] = heldout
    meta["summary"] = summary
    if name == "denoise-rgb":
        meta["training"]["held_out_photos"] = list(RGB_TEST_PHOTOS)
        meta["training"]["photos"] = list(RGB_TRAIN_PHOTOS)
    target = PACKAGE / name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copyfile(source / "weights.safetensors", target / "weights.safetensors")
    (target / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    check = load_bundle(f"builtin:{name}")  # checksum and architecture verified again
    print(f"[{name}] installed {target} ({check.model.num_parameters} parameters): {summary}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=sorted(COMMANDS), help="bundle(s) to make")
    parser.add_argument("--stage", choices=("prepare", "train", "install", "all"), default="all")
    args = parser.parse_args()
    names = args.only or list(COMMANDS)
    if args.stage in ("prepare", "all") and "denoise-rgb" in names:
        print(f"colour training data: {prepare_rgb_data()}")
    if args.stage in ("train", "all"):
        for name in names:
            train(name)
    if args.stage in ("install", "all"):
        for name in names:
            install(name)


if __name__ == "__main__":
    main()
