"""Denoising quality of raeflow's shipped denoisers against BM3D and non-local means, on this machine.

    python bench/denoise_quality.py                       # everything, one run
    python bench/denoise_quality.py --bm3d-every 4        # BM3D on every 4th BSD68 image (it is slow)
    python bench/denoise_quality.py --grey-model runs/dn/model --methods ours
    python bench/denoise_quality.py --parts cbsd68 --methods ours,nlm      # colour CBSD68, minutes
    python bench/denoise_quality.py --parts cbsd68 --methods cbm3d --cbm3d-every 4  # CBM3D, an hour

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

Colour: `builtin:denoise-rgb` (or --rgb-model) against CBM3D (`bm3d.bm3d_rgb`, method `bm3d` on a
colour set) and colour NLM, on
- `cbsd68`: CBSD68, the 68 BSD68 photos in colour, with the grey protocol (sigma 15/25/50, noise
  not clipped, as the published numbers); CBM3D (about a minute per photo) on every Nth photo only
  (--cbm3d-every), and our model again on those same photos so the two compare on equal ground;
- `rgb`: 256x256 crops of scikit-image's astronaut and coffee photos, which the colour model never
  trained on (bench/make_bundles.py RGB_TEST_PHOTOS), at sigma 0/5/15/25/50, noise clipped to
  [0, 1] like a saved photo.

Every image's result is kept as it is measured, one JSON line per image, in
bench-out/denoise_quality/v1/<set>/<method tag>.jsonl; a rerun (after an interruption) takes an
image from there instead of measuring it again. The tag names exactly what ran: our model by the
sha256 of its weights, BM3D and NLM by their package's version, so a changed model is measured
afresh and never mixed with the old one's results. --fresh measures again (for the methods of
--methods) anyway, e.g. to time a model again on a quiet machine.

Results go to bench-out/denoise_quality.json and a markdown table in bench-out/denoise_quality.md
(docs/quality.md carries the latest), with the load average at the start and end of the run and
per row the highest load any of its images was measured at (above 2, the 2-core machine was
contended and seconds are inflated); with --methods a subset is (re)run and merged into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

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
CBSD68_SEED = 100_000
"""CBSD68's noise seed is this + 1000 sigma + the image's index (grey BSD68: 1000 sigma + index)."""
PUBLISHED = {
    ("BSD68", "BM3D"): (31.07, 28.57, 25.62),
    ("BSD68", "TNRD"): (31.42, 28.92, 25.97),
    ("BSD68", "DnCNN-S"): (31.73, 29.23, 26.23),
    ("BSD68", "DRUNet"): (31.91, 29.48, 26.59),
    ("Set12", "DnCNN-S"): (32.86, 30.44, 27.18),
    ("CBSD68", "CBM3D"): (33.52, 30.71, 27.38),
    ("CBSD68", "CDnCNN-B, blind"): (33.89, 31.23, 27.92),
    ("CBSD68", "FFDNet"): (33.87, 31.21, 27.96),
    ("CBSD68", "DRUNet"): (34.30, 31.69, 28.51),
}
"""Published PSNR at sigma 15/25/50, from the benchmark README."""
CACHE_VERSION = "v1"
"""Folder of the per-image cache: change it when the noise, the metrics or a method's settings
change, so that no result of the old protocol is taken."""
CONTENDED_LOAD = 2.0
"""A 1-minute load average above this on the 2-core machine: the timings were contended."""


def load_set(name: str, *, mode: str = "L", limit: int | None = None) -> tuple[list, int]:
    """(file name, float image in [0, 1]) of the first `limit` PNGs of a benchmark set (all if None),
    grey (`mode` "L": H x W) or colour ("RGB": H x W x 3), and how many PNGs the set has."""
    folder = BENCH / name
    if not folder.is_dir():
        sys.exit(f"error: benchmark data not found at {folder}; set RAEFLOW_DENOISE_BENCH")
    paths = sorted(folder.glob("*.png"))
    images = [
        (p.name, np.asarray(Image.open(p).convert(mode), dtype=np.float64) / 255.0) for p in paths[:limit]
    ]
    return images, len(paths)


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
        # One call before any timing: the first pass of a model pays one-off set-up costs. Uniform
        # noise in [0, 1] reads as heavy noise, so the noise guard lets the network run.
        channels = self.bundle.meta["input_contract"]["channels"]
        shape = (64, 64) if channels == 1 else (64, 64, channels)
        self(np.random.default_rng(0).random(shape), 0)

    def __call__(self, noisy: np.ndarray, sigma: float) -> np.ndarray:
        x = noisy[None, None] if noisy.ndim == 2 else noisy.transpose(2, 0, 1)[None]  # (1, C, H, W)
        with self.torch.no_grad():
            out = self.bundle.model(self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        y = out["recon"][0].numpy().astype(np.float64)  # (C, H, W)
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


@dataclass
class Method:
    """A denoiser under test."""

    name: str
    """`ours`, `bm3d` (BM3D on grey images, CBM3D on colour ones) or `nlm`."""
    run: Callable[[np.ndarray, float], np.ndarray]
    """(noisy image, true sigma on the 0-255 scale) -> denoised image."""
    tag: str
    """Exactly what ran (our model's weights checksum, a package's version): the cache's key."""
    threads: int | None = None
    """torch threads (our model only), recorded with each image it measures."""


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        sys.exit(f"error: package {name} is not installed; `pip install raeflow[bench]` installs it")


def make_methods(wanted: list[str], model_uri: str, threads: int) -> dict[str, Method]:
    """The methods of `wanted`, cheapest first (a stopped run has the fast ones done)."""
    methods = {}
    if "ours" in wanted:
        ours = Ours(model_uri, threads)
        methods["ours"] = Method("ours", ours, f"ours-{ours.bundle.fingerprint[:16]}", threads)
    if "nlm" in wanted:
        methods["nlm"] = Method("nlm", nlm_method, f"nlm-skimage-{package_version('scikit-image')}")
    if "bm3d" in wanted:
        methods["bm3d"] = Method("bm3d", bm3d_method, f"bm3d-{package_version('bm3d')}")
    return methods


class Cache:
    """One method's per-image results on one set, a JSON line per (image, sigma, seed), appended
    as each is measured; the last line of a key wins."""

    def __init__(self, path: Path, *, fresh: bool):
        self.path = path
        self.rows: dict[tuple[str, int, int], dict] = {}
        if not path.exists():
            return
        text = path.read_text()
        if text and not text.endswith("\n"):
            with path.open("a") as f:
                f.write("\n")  # a run stopped mid-line: the next line must start on its own
        if fresh:
            return
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the line a stopped run was writing
            self.rows[(row["image"], row["sigma"], row["seed"])] = row

    def get(self, image: str, sigma: int, seed: int) -> dict | None:
        row = self.rows.get((image, sigma, seed))
        return None if row is None else row | {"cached": True}

    def put(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows[(row["image"], row["sigma"], row["seed"])] = row


class Caches:
    """The per-image caches under one folder: <root>/<set>/<method tag>.jsonl."""

    def __init__(self, root: Path, fresh: set[str]):
        self.root = root
        self.fresh = fresh
        """Methods whose cached results are ignored (and measured again) in this run."""
        self.opened: dict[tuple[str, str], Cache] = {}

    def open(self, set_name: str, method: Method) -> Cache:
        key = (set_name, method.tag)
        if key not in self.opened:
            path = self.root / set_name / f"{method.tag}.jsonl"
            self.opened[key] = Cache(path, fresh=method.name in self.fresh)
        return self.opened[key]


def score(
    method: Method, sigma: int, cases: list[tuple[str, int, np.ndarray]], cache: Cache, *, clip: bool
) -> list[dict]:
    """One row per (name, seed, clean) case: PSNR and SSIM of the method on the clean image plus
    noise of `sigma` drawn from `seed`, the noisy input's PSNR, the seconds the method took and the
    1-minute load average then; taken from `cache` where it has the case."""
    rows = []
    for name, seed, clean in cases:
        row = cache.get(name, sigma, seed)
        if row is None:
            noisy = add_noise(clean, sigma, seed, clip=clip)
            start = time.perf_counter()
            out = method.run(noisy, sigma)
            seconds = time.perf_counter() - start
            row = {
                "image": name,
                "sigma": sigma,
                "seed": seed,
                "psnr": psnr(clean, out),
                "ssim": ssim(clean, out),
                "noisy_psnr": psnr(clean, noisy) if sigma else float("inf"),
                "seconds": seconds,
                "load": os.getloadavg()[0],
            }
            if method.threads is not None:
                row["threads"] = method.threads
            cache.put(row)
        rows.append(row)
    return rows


@dataclass
class Plan:
    """What this run measures, beyond the methods."""

    caches: Caches
    sigmas: set[int] | None
    """Only these sigmas (None: every sigma of each part)."""
    limit: int | None
    """Only the first this many images of each set (None: all)."""


def run_grey(methods: dict[str, Method], bm3d_every: int, plan: Plan, results: dict) -> None:
    for set_name in ("BSD68", "Set12"):
        images, total = load_set(set_name, limit=plan.limit)
        for sigma in GREY_SIGMAS + EXTRA_SIGMAS:
            if plan.sigmas is not None and sigma not in plan.sigmas:
                continue
            for method in methods.values():
                if sigma in EXTRA_SIGMAS and (method.name != "ours" or set_name != "BSD68"):
                    continue  # sigma 0, 5 and 10: our model on BSD68 only (is it ever worse than its input?)
                every = bm3d_every if method.name == "bm3d" and set_name == "BSD68" else 1
                if sigma in EXTRA_SIGMAS:
                    every = EXTRA_EVERY
                cases = [
                    (name, 1000 * sigma + index, clean)
                    for index, (name, clean) in enumerate(images)
                    if index % every == 0
                ]
                rows = score(method, sigma, cases, plan.caches.open(set_name, method), clip=False)
                key = f"grey/{set_name}/{sigma}/{method.name}"
                results[key] = summarise(rows, every, total)
                print(f"{key}: {fmt(results[key])}", flush=True)
                save(results)


def run_rgb(methods: dict[str, Method], plan: Plan, results: dict) -> None:
    from skimage import data as skdata

    crops = []
    for photo, top, left in RGB_CROPS[: plan.limit]:
        pixels = np.asarray(getattr(skdata, photo)(), dtype=np.float64)[..., :3] / 255.0
        crops.append((f"{photo}@{top},{left}", pixels[top : top + 256, left : left + 256]))
    for sigma in RGB_SIGMAS:
        if plan.sigmas is not None and sigma not in plan.sigmas:
            continue
        for method in methods.values():
            if sigma == 0 and method.name != "ours":
                continue
            cases = [(name, 7000 + 1000 * sigma + index, clean) for index, (name, clean) in enumerate(crops)]
            rows = score(method, sigma, cases, plan.caches.open("crops", method), clip=True)
            key = f"rgb/crops/{sigma}/{method.name}"
            results[key] = summarise(rows, 1, len(RGB_CROPS))
            print(f"{key}: {fmt(results[key])}", flush=True)
            save(results)


def run_cbsd68(methods: dict[str, Method], cbm3d_every: int, plan: Plan, results: dict) -> None:
    """CBSD68 with the grey protocol; method by method, so a stopped CBM3D run leaves ours and NLM
    complete."""
    images, total = load_set("CBSD68", mode="RGB", limit=plan.limit)
    for method in methods.values():
        every = cbm3d_every if method.name == "bm3d" else 1
        for sigma in GREY_SIGMAS:
            if plan.sigmas is not None and sigma not in plan.sigmas:
                continue
            cases = [
                (name, CBSD68_SEED + 1000 * sigma + index, clean)
                for index, (name, clean) in enumerate(images)
                if index % every == 0
            ]
            rows = score(method, sigma, cases, plan.caches.open("CBSD68", method), clip=False)
            key = f"rgb/CBSD68/{sigma}/{method.name}"
            results[key] = summarise(rows, every, total)
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
        "max_load": max(r["load"] for r in rows),
        "cached": sum(r.get("cached", False) for r in rows),
        "per_image": rows,
    }


def fmt(r: dict) -> str:
    return (
        f"PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.3f}  {r['seconds_per_image']:.2f} s/image  "
        f"({r['images']}/{r['of']} images, {r['cached']} from the cache, load up to {r['max_load']:.2f})"
    )


def clean_cell(r: dict) -> str:
    """A sigma-0 result: how many clean images came back unchanged (PSNR capped at 120 dB), and the
    mean PSNR of the others (a mean over both would say nothing)."""
    values = [row["psnr"] for row in r["per_image"]]
    changed = [v for v in values if v < 100]
    text = f"{len(values) - len(changed)}/{len(values)} unchanged"
    return text + (f", others {np.mean(changed):.2f}" if changed else "")


def ordinal(n: int) -> str:
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n if n < 20 else n % 10, 'th') }"


def by_image(results: dict, prefix: str, method: str, sigma: int) -> dict[str, dict]:
    """The per-image rows of one measured (set, sigma, method), by image name."""
    r = results.get(f"{prefix}/{sigma}/{method}")
    return {row["image"]: row for row in r["per_image"]} if r else {}


def seconds_cell(rows: list[dict]) -> str:
    """Mean seconds per image, with the highest 1-minute load average of its images where that
    was above CONTENDED_LOAD (results from before loads were recorded carry none)."""
    if not rows:
        return "–"
    load = max(row.get("load", 0.0) for row in rows)
    text = f"{np.mean([row['seconds'] for row in rows]):.2f}"
    return text + (f" (load {load:.1f})" if load > CONTENDED_LOAD else "")


def speed_cell(results: dict, prefix: str, method: str, sigmas: tuple[int, ...]) -> str:
    """How many times faster than BM3D (CBM3D on colour) `method` is per image: BM3D's seconds
    over the method's, summed over the (image, sigma) cases both ran."""
    if method == "bm3d":
        return "1x" if any(by_image(results, prefix, "bm3d", s) for s in sigmas) else "–"
    reference = mine = 0.0
    for sigma in sigmas:
        theirs, ours = by_image(results, prefix, "bm3d", sigma), by_image(results, prefix, method, sigma)
        for name in theirs.keys() & ours.keys():
            reference += theirs[name]["seconds"]
            mine += ours[name]["seconds"]
    if not mine or not reference:
        return "–"
    ratio = reference / mine
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:.0f}x"


def measured_cells(rows_by_sigma: list[list[dict]]) -> str:
    """PSNR / SSIM cells at each sigma (the mean over its images) and the seconds-per-image cell."""
    cells = [
        f"{np.mean([r['psnr'] for r in rows]):.2f} / {np.mean([r['ssim'] for r in rows]):.3f}"
        if rows
        else "–"
        for rows in rows_by_sigma
    ]
    return " | ".join(cells) + f" | {seconds_cell([r for rows in rows_by_sigma for r in rows])}"


def count_cell(r: dict) -> str:
    """How many of the set's images a result covers: `17/68 (every 4th)`."""
    return f"{r['images']}/{r['of']}" + (f" (every {ordinal(r['every'])})" if r["every"] > 1 else "")


def set_rows(results: dict, prefix: str, set_name: str, names: dict[str, str]) -> list[str]:
    """Rows of one test set at sigma 15/25/50: each method measured here; our model again on the
    images of any method that ran on fewer (the fair comparison); the published numbers."""
    lines = []
    ours = [by_image(results, prefix, "ours", sigma) for sigma in GREY_SIGMAS]
    for method, label in names.items():
        theirs = [by_image(results, prefix, method, sigma) for sigma in GREY_SIGMAS]
        summaries = [r for sigma in GREY_SIGMAS if (r := results.get(f"{prefix}/{sigma}/{method}"))]
        count = count_cell(summaries[-1]) if summaries else ""
        speed = speed_cell(results, prefix, method, GREY_SIGMAS)
        cells = measured_cells([list(rows.values()) for rows in theirs])
        lines.append(f"| {set_name} | {label} | {cells} | {speed} | {count} |")
        if method == "ours" or not any(t and t.keys() < o.keys() for t, o in zip(theirs, ours, strict=True)):
            continue
        # Our model on exactly the images this method ran on: the comparison on equal ground.
        subset = [[o[name] for name in t if name in o] for t, o in zip(theirs, ours, strict=True)]
        short = label.removesuffix(" (this machine)")
        lines.append(
            f"| {set_name} | {names['ours']}, on {short}'s images | {measured_cells(subset)} | "
            f"{speed_cell(results, prefix, 'ours', GREY_SIGMAS)} | {count} |"
        )
    for (published_set, method), values in PUBLISHED.items():
        if published_set == set_name:
            published = " | ".join(f"{v:.2f}" for v in values)
            lines.append(f"| {set_name} | {method} (published) | {published} | – | – | all |")
    return lines


def table(results: dict) -> str:
    """Markdown for docs/quality.md as it is: the last run's load averages, then tables of grey
    BSD68/Set12 and colour CBSD68 with the published numbers beside ours, the light-noise rows and
    the colour crops."""
    run = results.get("run", {})
    lines = []
    if run:
        start, end = ("/".join(f"{v:.2f}" for v in run.get(k, ())) for k in ("load_start", "load_end"))
        lines.append(
            f"Last run: `{run['command']}`, load average (1/5/15 min) {start} at its start, "
            f"{end or '–'} at its end."
        )
    threads = sorted(
        {row.get("threads") for key, r in results.items() if key.endswith("/ours") for row in r["per_image"]}
        - {None}
    )
    if threads:
        lines.append(f"Our models ran with {' and '.join(map(str, threads))} torch thread(s).")
    lines += [
        f"Seconds per image say `(load L)` where an image of the row was measured at a 1-minute load "
        f"above {CONTENDED_LOAD:g} (the 2-core machine was contended). Speed: how many times faster "
        "than BM3D (CBM3D on colour) per image, over the images and σ both ran.",
        "",
    ]
    columns = "| set | method | σ=15 | σ=25 | σ=50 | s/image | {} | images |"
    rule = "| --- | --- | --- | --- | --- | --- | --- | --- |"
    grey_names = {
        "ours": "raeflow denoise-grey (blind)",
        "bm3d": "BM3D (this machine)",
        "nlm": "NLM (this machine)",
    }
    lines += ["#### Grey: BSD68 and Set12, PSNR (dB) / SSIM, seconds per image", ""]
    lines += [columns.format("speed vs BM3D"), rule]
    for set_name in ("BSD68", "Set12"):
        lines += set_rows(results, f"grey/{set_name}", set_name, grey_names)
    colour_names = {
        "ours": "raeflow denoise-rgb (blind)",
        "bm3d": "CBM3D (this machine)",
        "nlm": "NLM colour (this machine)",
    }
    lines += ["", "#### Colour: CBSD68, noise not clipped, PSNR (dB) / SSIM, seconds per image", ""]
    lines += [columns.format("speed vs CBM3D"), rule]
    noisy = [results.get(f"rgb/CBSD68/{sigma}/ours") for sigma in GREY_SIGMAS]
    noisy_row = " | ".join(f"{r['noisy_psnr']:.2f}" if r else "–" for r in noisy)
    lines.append(f"| CBSD68 | noisy input | {noisy_row} | – | – | – |")
    lines += set_rows(results, "rgb/CBSD68", "CBSD68", colour_names)
    lines += ["", "#### Light noise and clean input (BSD68, raeflow denoise-grey)", ""]
    lines += ["| σ | noisy input PSNR | output PSNR | images made worse |", "| --- | --- | --- | --- |"]
    for sigma in EXTRA_SIGMAS:
        r = results.get(f"grey/BSD68/{sigma}/ours")
        if r:
            noisy_psnr = "∞ (clean)" if sigma == 0 else f"{r['noisy_psnr']:.2f}"
            worse = "–" if sigma == 0 else f"{r['worse_than_input']}/{r['images']}"
            out = clean_cell(r) if sigma == 0 else f"{r['psnr']:.2f}"
            lines.append(f"| {sigma} | {noisy_psnr} | {out} | {worse} |")
    rgb_names = {"ours": "raeflow denoise-rgb (blind)", "bm3d": "CBM3D", "nlm": "NLM (colour)"}
    lines += [
        "",
        "#### Colour: 4 held-out 256x256 crops (astronaut, coffee), noise clipped, PSNR (dB) / SSIM",
        "",
    ]
    header = " | ".join(f"σ={s}" for s in RGB_SIGMAS)
    lines += [
        f"| method | {header} | s/image | speed vs CBM3D |",
        "| --- |" + " --- |" * (len(RGB_SIGMAS) + 2),
    ]
    noisy_cells = []
    for sigma in RGB_SIGMAS:
        r = results.get(f"rgb/crops/{sigma}/ours")
        noisy_cells.append("∞" if sigma == 0 else (f"{r['noisy_psnr']:.2f}" if r else "–"))
    lines.append(f"| noisy input | {' | '.join(noisy_cells)} | – | – |")
    noisy_sigmas = tuple(s for s in RGB_SIGMAS if s)
    for method in ("ours", "bm3d", "nlm"):
        cells, rows = [], []
        for sigma in RGB_SIGMAS:
            r = results.get(f"rgb/crops/{sigma}/{method}")
            if r and sigma == 0:
                cells.append(clean_cell(r))
            else:
                cells.append(f"{r['psnr']:.2f} / {r['ssim']:.3f}" if r else "–")
            if r and sigma:
                rows += r["per_image"]
        speed = speed_cell(results, "rgb/crops", method, noisy_sigmas)
        lines.append(f"| {rgb_names[method]} | {' | '.join(cells)} | {seconds_cell(rows)} | {speed} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grey-model", default="builtin:denoise-grey")
    parser.add_argument("--rgb-model", default="builtin:denoise-rgb")
    parser.add_argument(
        "--methods", default="ours,bm3d,nlm", help="comma-separated subset to (re)run (cbm3d = bm3d)"
    )
    parser.add_argument(
        "--parts", default="grey,rgb,cbsd68", help="comma-separated: grey, rgb (the crops), cbsd68"
    )
    parser.add_argument("--bm3d-every", type=int, default=1, help="BM3D on every Nth BSD68 image only")
    parser.add_argument("--cbm3d-every", type=int, default=4, help="CBM3D on every Nth CBSD68 image only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for our model")
    parser.add_argument("--sigmas", default=None, help="comma-separated: only these sigmas (default all)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each set")
    parser.add_argument(
        "--fresh", action="store_true", help="measure the --methods again, ignoring cached images"
    )
    parser.add_argument(
        "--results", default=None, help="results JSON (default bench-out/denoise_quality.json)"
    )
    parser.add_argument(
        "--cache",
        default=None,
        help=f"per-image cache folder (default: the results path without .json, then {CACHE_VERSION})",
    )
    args = parser.parse_args()
    global RESULTS
    RESULTS = Path(args.results) if args.results else RESULTS
    wanted = ["bm3d" if m == "cbm3d" else m for m in args.methods.split(",")]
    parts = args.parts.split(",")
    for name, given, known in (
        ("method", wanted, {"ours", "bm3d", "nlm"}),
        ("part", parts, {"grey", "rgb", "cbsd68"}),
    ):
        if unknown := set(given) - known:
            sys.exit(f"error: unknown {name} {', '.join(sorted(unknown))}; one of {', '.join(sorted(known))}")
    plan = Plan(
        caches=Caches(
            Path(args.cache) if args.cache else RESULTS.with_suffix("") / CACHE_VERSION,
            set(wanted) if args.fresh else set(),
        ),
        sigmas={int(s) for s in args.sigmas.split(",")} if args.sigmas else None,
        limit=args.limit,
    )
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["run"] = {
        "command": " ".join(["python bench/denoise_quality.py", *sys.argv[1:]]),
        "load_start": list(os.getloadavg()),
    }
    print(f"load average at start: {results['run']['load_start']}", flush=True)
    if "grey" in parts:
        run_grey(make_methods(wanted, args.grey_model, args.threads), args.bm3d_every, plan, results)
    if "rgb" in parts or "cbsd68" in parts:
        methods = make_methods(wanted, args.rgb_model, args.threads)
        if "cbsd68" in parts:
            run_cbsd68(methods, args.cbm3d_every, plan, results)
        if "rgb" in parts:
            run_rgb(methods, plan, results)
    results["run"]["load_end"] = list(os.getloadavg())
    print(f"load average at end: {results['run']['load_end']}", flush=True)
    save(results)
    text = table(json.loads(RESULTS.read_text()))
    RESULTS.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
