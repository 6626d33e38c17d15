"""Denoising quality of raeflow's shipped denoisers against BM3D and non-local means, on this machine.

    python bench/denoise_quality.py                       # everything, one run
    python bench/denoise_quality.py --bm3d-every 4        # BM3D on every 4th BSD68 image (it is slow)
    python bench/denoise_quality.py --grey-model runs/dn/model --methods ours

Grey (the protocol of ../shared/benchmarks/denoise/README.md): BSD68 and Set12, clean image in
[0, 1], Gaussian noise of sigma 15/25/50 (0-255 scale) added with a fixed seed per image and sigma,
NOT clipped; PSNR per image on the 0-255 scale after clipping the output to [0, 1], averaged over
the set; SSIM (scikit-image, data range 1); seconds per image on this machine. Methods:
- `ours`: `builtin:denoise-grey` (or --grey-model), blind: it is not told sigma;
- `bm3d`: BM3D (`bm3d` package from PyPI, told the true sigma). Its licence permits non-commercial
  use only: it is a bench-only dependency (`pip install raeflow[bench]`), never used by raeflow;
- `nlm`: scikit-image's fast non-local means (told the true sigma; h = 0.8 sigma, 5x5 patches,
  13x13 search window).
Also sigma 5 (a light noise: a denoiser must not make it worse) and sigma 0 (a clean photo in:
what the model does to it).

Colour: `builtin:denoise-rgb` (or --rgb-model) against CBM3D (`bm3d.bm3d_rgb`) and colour NLM on
256x256 crops of scikit-image's astronaut and coffee photos, which the colour model never trained
on (bench/make_bundles.py RGB_TEST_PHOTOS), at sigma 0/5/15/25/50, noise clipped to [0, 1] like a
saved photo.

Results go to bench-out/denoise_quality.json and a markdown table in bench-out/denoise_quality.md
(docs/quality.md carries the latest); with --methods a subset is (re)run and merged into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(os.environ.get("RAEFLOW_DENOISE_BENCH", ROOT.parent / "shared" / "benchmarks" / "denoise"))
OUT = ROOT / "bench-out"
GREY_SIGMAS = (15, 25, 50)
EXTRA_SIGMAS = (0, 5, 10)
EXTRA_EVERY = 4
"""sigma 0, 5 and 10 run on every 4th BSD68 image (17): enough to see whether the model ever harms."""
RGB_SIGMAS = (0, 5, 15, 25, 50)
RGB_CROPS = [("astronaut", 0, 0), ("astronaut", 256, 256), ("coffee", 100, 40), ("coffee", 144, 344)]
"""(photo, top, left) of the 256x256 colour test crops (photos the colour model never trained on)."""
PUBLISHED = {
    ("BSD68", "BM3D"): (31.07, 28.57, 25.62),
    ("BSD68", "TNRD"): (31.42, 28.92, 25.97),
    ("BSD68", "DnCNN-S"): (31.73, 29.23, 26.23),
    ("BSD68", "DRUNet"): (31.91, 29.48, 26.59),
    ("Set12", "DnCNN-S"): (32.86, 30.44, 27.18),
}
"""Published PSNR at sigma 15/25/50, from the benchmark README."""


def load_set(name: str) -> list[tuple[str, np.ndarray]]:
    """(file name, grey float image in [0, 1]) of every PNG of a benchmark set."""
    folder = BENCH / name
    if not folder.is_dir():
        sys.exit(f"error: benchmark data not found at {folder}; set RAEFLOW_DENOISE_BENCH")
    return [
        (p.name, np.asarray(Image.open(p).convert("L"), dtype=np.float64) / 255.0)
        for p in sorted(folder.glob("*.png"))
    ]


def add_noise(clean: np.ndarray, sigma: float, seed: int, *, clip: bool) -> np.ndarray:
    """Gaussian noise of `sigma` (0-255 scale) with a fixed seed; clipped to [0, 1] only if asked."""
    noisy = clean + np.random.default_rng(seed).standard_normal(clean.shape) * (sigma / 255.0)
    return np.clip(noisy, 0.0, 1.0) if clip else noisy


def psnr(clean: np.ndarray, out: np.ndarray) -> float:
    mse = float(np.mean((np.clip(out, 0, 1) - clean) ** 2))
    return 10 * np.log10(1.0 / max(mse, 1e-12))


def ssim(clean: np.ndarray, out: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    axis = 2 if clean.ndim == 3 else None
    return float(structural_similarity(clean, np.clip(out, 0, 1), data_range=1.0, channel_axis=axis))


class Ours:
    """A raeflow denoiser bundle run on one image at a time, at its own size."""

    def __init__(self, uri: str, threads: int):
        import torch

        from raeflow.models import load_bundle

        torch.set_num_threads(threads)
        self.torch = torch
        self.bundle = load_bundle(uri)

    def __call__(self, noisy: np.ndarray, sigma: float) -> np.ndarray:
        x = noisy[None, None] if noisy.ndim == 2 else noisy.transpose(2, 0, 1)[None]
        with self.torch.no_grad():
            out = self.bundle.model(self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        y = out["recon"][0].numpy().astype(np.float64)
        return y[0] if noisy.ndim == 2 else y.transpose(1, 2, 0)


def bm3d_method(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    if sigma == 0:
        return noisy
    if noisy.ndim == 3:
        return np.asarray(bm3d.bm3d_rgb(noisy, sigma / 255.0))
    return np.asarray(bm3d.bm3d(noisy, sigma_psd=sigma / 255.0))


def nlm_method(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    if sigma == 0:
        return noisy
    s = sigma / 255.0
    axis = 2 if noisy.ndim == 3 else None
    return denoise_nl_means(
        noisy, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6, channel_axis=axis
    )


def score(fn: Any, sigma: float, cases: list[tuple[str, np.ndarray, np.ndarray]]) -> list[dict]:
    """One row per (name, clean, noisy) case: PSNR and SSIM of `fn(noisy, sigma)`, the noisy input's
    PSNR, and the seconds `fn` took."""
    rows = []
    for name, clean, noisy in cases:
        start = time.perf_counter()
        out = fn(noisy, sigma)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "image": name,
                "psnr": psnr(clean, out),
                "ssim": ssim(clean, out),
                "noisy_psnr": psnr(clean, noisy) if sigma else float("inf"),
                "seconds": seconds,
            }
        )
    return rows


def run_grey(methods: dict[str, Any], bm3d_every: int, results: dict) -> None:
    for set_name in ("BSD68", "Set12"):
        images = load_set(set_name)
        for sigma in GREY_SIGMAS + EXTRA_SIGMAS:
            for method, fn in methods.items():
                if sigma in EXTRA_SIGMAS and (method != "ours" or set_name != "BSD68"):
                    continue  # sigma 0, 5 and 10: our model on BSD68 only (is it ever worse than its input?)
                every = bm3d_every if method == "bm3d" and set_name == "BSD68" else 1
                if sigma in EXTRA_SIGMAS:
                    every = EXTRA_EVERY
                cases = [
                    (name, clean, add_noise(clean, sigma, seed=1000 * sigma + index, clip=False))
                    for index, (name, clean) in enumerate(images)
                    if index % every == 0
                ]
                rows = score(fn, sigma, cases)
                key = f"grey/{set_name}/{sigma}/{method}"
                results[key] = summarise(rows, every, len(images))
                print(f"{key}: {fmt(results[key])}", flush=True)
                save(results)


def run_rgb(methods: dict[str, Any], results: dict) -> None:
    from skimage import data as skdata

    crops = []
    for photo, top, left in RGB_CROPS:
        pixels = np.asarray(getattr(skdata, photo)(), dtype=np.float64)[..., :3] / 255.0
        crops.append((f"{photo}@{top},{left}", pixels[top : top + 256, left : left + 256]))
    for sigma in RGB_SIGMAS:
        for method, fn in methods.items():
            if sigma == 0 and method != "ours":
                continue
            cases = [
                (name, clean, add_noise(clean, sigma, seed=7000 + 1000 * sigma + index, clip=True))
                for index, (name, clean) in enumerate(crops)
            ]
            rows = score(fn, sigma, cases)
            key = f"rgb/crops/{sigma}/{method}"
            results[key] = summarise(rows, 1, len(crops))
            print(f"{key}: {fmt(results[key])}", flush=True)
            save(results)


RESULTS = OUT / "denoise_quality.json"
"""Where results accumulate (--results changes it)."""


def save(results: dict) -> None:
    """Merge `results` into the results file now (a long run keeps what it measured if stopped)."""
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(merged | results, indent=1))


def summarise(rows: list[dict], every: int, total: int) -> dict:
    return {
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
        "noisy_psnr": float(np.mean([r["noisy_psnr"] for r in rows])),
        "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
        "images": len(rows),
        "of": total,
        "every": every,
        "worse_than_input": int(sum(r["psnr"] < r["noisy_psnr"] for r in rows)),
        "per_image": rows,
    }


def fmt(r: dict) -> str:
    return (
        f"PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}  {r['seconds_per_image']:.2f} s/image  "
        f"({r['images']}/{r['of']} images)"
    )


def clean_cell(r: dict) -> str:
    """A sigma-0 result: how many clean images came back unchanged (PSNR capped at 120 dB), and the
    mean PSNR of the others (a mean over both would say nothing)."""
    values = [row["psnr"] for row in r["per_image"]]
    changed = [v for v in values if v < 100]
    text = f"{len(values) - len(changed)}/{len(values)} unchanged"
    return text + (f", others {np.mean(changed):.2f}" if changed else "")


def table(results: dict) -> str:
    """Markdown tables: grey with the published numbers beside ours, colour, and the light-noise rows."""
    names = {
        "ours": "raeflow denoise-grey (blind)",
        "bm3d": "BM3D (this machine)",
        "nlm": "NLM (this machine)",
    }
    lines = ["### Grey: BSD68 and Set12, PSNR (dB) / SSIM, seconds per image", ""]
    lines += [
        "| set | method | σ=15 | σ=25 | σ=50 | s/image | images |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for set_name in ("BSD68", "Set12"):
        for method in ("ours", "bm3d", "nlm"):
            cells, secs, count = [], [], ""
            for sigma in GREY_SIGMAS:
                r = results.get(f"grey/{set_name}/{sigma}/{method}")
                cells.append(f"{r['psnr']:.2f} / {r['ssim']:.3f}" if r else "–")
                if r:
                    secs.append(r["seconds_per_image"])
                    count = f"{r['images']}/{r['of']}" + (
                        f" (every {r['every']}th)" if r["every"] > 1 else ""
                    )
            sec = f"{np.mean(secs):.2f}" if secs else "–"
            lines.append(f"| {set_name} | {names[method]} | {' | '.join(cells)} | {sec} | {count} |")
        bm3d25 = results.get(f"grey/{set_name}/25/bm3d")
        if bm3d25 and bm3d25["every"] > 1 and results.get(f"grey/{set_name}/25/ours", {}).get("per_image"):
            every = bm3d25["every"]
            cells = []
            for sigma in GREY_SIGMAS:
                rows = results.get(f"grey/{set_name}/{sigma}/ours", {}).get("per_image", [])
                subset = [r for i, r in enumerate(rows) if i % every == 0]
                cells.append(f"{np.mean([r['psnr'] for r in subset]):.2f}" if subset else "–")
            label = f"{names['ours']}, BM3D's {len(subset)} images"
            lines.append(f"| {set_name} | {label} | {' | '.join(cells)} | – | every {every}th |")
        for (published_set, method), values in PUBLISHED.items():
            if published_set == set_name:
                published = " | ".join(f"{v:.2f}" for v in values)
                lines.append(f"| {set_name} | {method} (published) | {published} | – | all |")
    lines += ["", "### Light noise and clean input (BSD68, raeflow denoise-grey)", ""]
    lines += ["| σ | noisy input PSNR | output PSNR | images made worse |", "| --- | --- | --- | --- |"]
    for sigma in EXTRA_SIGMAS:
        r = results.get(f"grey/BSD68/{sigma}/ours")
        if r:
            noisy = "∞ (clean)" if sigma == 0 else f"{r['noisy_psnr']:.2f}"
            worse = "–" if sigma == 0 else f"{r['worse_than_input']}/{r['images']}"
            out = clean_cell(r) if sigma == 0 else f"{r['psnr']:.2f}"
            lines.append(f"| {sigma} | {noisy} | {out} | {worse} |")
    rgb_names = {"ours": "raeflow denoise-rgb (blind)", "bm3d": "CBM3D", "nlm": "NLM (colour)"}
    lines += [
        "",
        "### Colour: 4 held-out 256x256 crops (astronaut, coffee), noise clipped, PSNR (dB) / SSIM",
        "",
    ]
    header = " | ".join(f"σ={s}" for s in RGB_SIGMAS)
    lines += [f"| method | {header} | s/image |", "| --- |" + " --- |" * (len(RGB_SIGMAS) + 1)]
    noisy_cells = []
    for sigma in RGB_SIGMAS:
        r = results.get(f"rgb/crops/{sigma}/ours")
        noisy_cells.append("∞" if sigma == 0 else (f"{r['noisy_psnr']:.2f}" if r else "–"))
    lines.append(f"| noisy input | {' | '.join(noisy_cells)} | – |")
    for method in ("ours", "bm3d", "nlm"):
        cells, secs = [], []
        for sigma in RGB_SIGMAS:
            r = results.get(f"rgb/crops/{sigma}/{method}")
            if r and sigma == 0:
                cells.append(clean_cell(r))
            else:
                cells.append(f"{r['psnr']:.2f} / {r['ssim']:.3f}" if r else "–")
            if r and sigma:
                secs.append(r["seconds_per_image"])
        sec = f"{np.mean(secs):.2f}" if secs else "–"
        lines.append(f"| {rgb_names[method]} | {' | '.join(cells)} | {sec} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grey-model", default="builtin:denoise-grey")
    parser.add_argument("--rgb-model", default="builtin:denoise-rgb")
    parser.add_argument("--methods", default="ours,bm3d,nlm", help="comma-separated subset to (re)run")
    parser.add_argument("--parts", default="grey,rgb", help="grey, rgb or both")
    parser.add_argument("--bm3d-every", type=int, default=1, help="BM3D on every Nth BSD68 image only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for our model")
    parser.add_argument(
        "--results", default=None, help="results JSON (default bench-out/denoise_quality.json)"
    )
    args = parser.parse_args()
    global RESULTS
    RESULTS = Path(args.results) if args.results else RESULTS
    wanted = args.methods.split(",")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    parts = args.parts.split(",")
    if "grey" in parts:
        methods: dict[str, Any] = {}
        if "ours" in wanted:
            methods["ours"] = Ours(args.grey_model, args.threads)
        if "bm3d" in wanted:
            methods["bm3d"] = bm3d_method
        if "nlm" in wanted:
            methods["nlm"] = nlm_method
        run_grey(methods, args.bm3d_every, results)
    if "rgb" in parts:
        methods = {}
        if "ours" in wanted:
            methods["ours"] = Ours(args.rgb_model, args.threads)
        if "bm3d" in wanted:
            methods["bm3d"] = bm3d_method
        if "nlm" in wanted:
            methods["nlm"] = nlm_method
        run_rgb(methods, results)
    save(results)
    text = table(json.loads(RESULTS.read_text()))
    (OUT / "denoise_quality.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
