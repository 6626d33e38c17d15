"""Does torch.compile (inductor) pay for itself on a batch job's model work? Compile time included.

    .venv/bin/python bench/compile_speed.py                 # conv_dense_coco shard + denoise photos
    .venv/bin/python bench/compile_speed.py --embed-images 2000 --photos 8

The question issue 17 asks: would `--compile` make a whole job at least 1.3x faster? A job's model
work is bounded by the model alone, so this times the model alone, in the precision a job runs
(bf16 autocast + channels_last where the CPU has native bf16, else float32), on the work of one
realistic job, eager against `torch.compile(model)` with the compile counted (an actor compiles
once, when it first sees a shape). No Ray, no decoding: if the model alone does not win 1.3x, the
job cannot.

- embed: `conv_dense_coco` encoders over `--embed-images` 3x64x64 images in batches of 256 (one
  1,000-file shard is 4 batches);
- denoise: the shipped grey denoiser over `--photos` photographs of different sizes (scikit-image's,
  cut to 0.3-4 megapixels), one image per call as `raeflow denoise` runs it. Different sizes mean
  one recompilation per new shape unless the compiled model is marked dynamic; both are timed.

The load average is printed with the table: on this 2-core machine a figure taken at load above 2
is contended.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from raeflow.hardware import cpu_description
from raeflow.models import create_model
from raeflow.models.bundle import load_bundle
from raeflow.models.precision import as_model_input, prepare_model, resolve_precision


def _photos(count: int) -> list[torch.Tensor]:
    """`count` grey photos of 0.3-4 megapixels, tiled from scikit-image's and cut to sizes that differ."""
    from skimage import data

    sources = [
        data.camera(),
        data.astronaut().mean(axis=2),
        data.coffee().mean(axis=2),
        data.chelsea().mean(axis=2),
    ]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        megapixels = 0.3 + 3.7 * i / max(1, count - 1)
        height = int((megapixels * 1e6 * 3 / 4) ** 0.5) // 8 * 8
        width = int(height * 4 / 3) // 8 * 8
        base = sources[i % len(sources)].astype(np.float32) / 255
        reps = (height // base.shape[0] + 1, width // base.shape[1] + 1)
        tile = np.tile(base, reps)[:height, :width]
        noisy = np.clip(tile + rng.normal(0, 25 / 255, tile.shape), 0, 1).astype(np.float32)
        out.append(torch.from_numpy(noisy)[None, None])
    return out


def _time(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def embed_rows(images: int, precision) -> list[tuple[str, float]]:
    torch.manual_seed(0)
    batches = [torch.rand(256, 3, 64, 64) for _ in range(max(1, images // 256))]
    batches = [as_model_input(b) for b in batches]
    rows = []
    for name, compiled in (("eager", False), ("compiled (first call compiles)", True)):
        model = prepare_model(create_model("conv_dense_coco").eval(), precision)
        encode = torch.compile(model.encode) if compiled else model.encode

        @torch.inference_mode()
        def job(encode=encode) -> None:
            for x in batches:
                with precision.autocast():
                    encode(x).float()

        rows.append((name, _time(job)))
        if compiled:
            rows.append(("compiled, second pass (warm)", _time(job)))
    return rows


def denoise_rows(photos: list[torch.Tensor], precision) -> list[tuple[str, float]]:
    rows = []
    setups = (("eager", None), ("compiled, static shapes", False), ("compiled, dynamic=True", True))
    for name, dynamic in setups:
        model = prepare_model(load_bundle("builtin:denoise-grey").model.eval(), precision)
        run_model = model if dynamic is None else torch.compile(model, dynamic=dynamic)

        @torch.inference_mode()
        def job(run_model=run_model) -> None:
            for x in photos:
                with precision.autocast():
                    run_model(as_model_input(x))["recon"].float()

        rows.append((name, _time(job)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embed-images", type=int, default=4096)
    parser.add_argument("--photos", type=int, default=12, help="denoise photos, 0.3-4 megapixels")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    precision = resolve_precision("auto", torch.device("cpu"))
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} threads, {precision.name}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    photos = _photos(args.photos)
    pixels = sum(p.numel() for p in photos) / 1e6
    tables = [
        (
            f"embed: conv_dense_coco encode, {args.embed_images:,} x 3x64x64",
            embed_rows(args.embed_images, precision),
        ),
        (
            f"denoise: builtin:denoise-grey, {len(photos)} photos, {pixels:.1f} MP",
            denoise_rows(photos, precision),
        ),
    ]
    for title, rows in tables:
        eager = rows[0][1]
        print(f"\n{title}\n| run | seconds | vs eager |\n| --- | ---: | ---: |")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.1f} | {eager / seconds:.2f}x |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
