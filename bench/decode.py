"""Images per second of raeflow's decode path against a plain Pillow loop, on the same files.

    .venv/bin/python bench/decode.py --num-images 300 --size 256

Builds real-photo crops from scikit-image's photographs (colour), writes them as JPEG and PNG
files, then times, over the same files in the same run, one core each:
- `pillow`: `np.asarray(Image.open(path).convert(mode))`, the usual loop;
- `raeflow`: read the bytes, `raeflow.data.images.decode_image(data, channels)` (header check,
  pixel limit, torchvision's libjpeg-turbo/libpng decoders, channel conversion).
Both produce `uint8` arrays of the model's channels (3 = RGB, 1 = grey). The two take turns;
the best of `--repeats` runs counts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from raeflow.data.images import decode_image  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


def make_files(folder: Path, num_images: int, size: int, seed: int = 0) -> dict[str, list[Path]]:
    """`num_images` random `size`x`size` crops of real photos, written as JPEG (q90) and PNG."""
    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    files: dict[str, list[Path]] = {"jpeg": [], "png": []}
    for i in range(num_images):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - size + 1)
        left = rng.integers(0, photo.shape[1] - size + 1)
        crop = Image.fromarray(photo[top : top + size, left : left + size])
        for fmt, suffix, options in (("jpeg", "jpg", {"quality": 90}), ("png", "png", {})):
            path = folder / f"{i:05d}.{suffix}"
            crop.save(path, fmt.upper(), **options)
            files[fmt].append(path)
    return files


def pillow_loop(paths: list[Path], channels: int) -> None:
    mode = "RGB" if channels == 3 else "L"
    for path in paths:
        pixels = np.asarray(Image.open(path).convert(mode))
        assert pixels.dtype == np.uint8


def raeflow_loop(paths: list[Path], channels: int) -> None:
    for path in paths:
        pixels = decode_image(path.read_bytes(), channels=channels)
        assert pixels.shape[2] == channels


def best_times(
    methods: list[Callable[[list[Path], int], None]], paths: list[Path], channels: int, repeats: int
) -> list[float]:
    """Best wall time of each method; the methods take turns, so load on the machine hits all alike."""
    for run in methods:
        run(paths[:20], channels)  # warm up caches and lazy imports
    best = [float("inf")] * len(methods)
    for _ in range(repeats):
        for i, run in enumerate(methods):
            start = time.perf_counter()
            run(paths, channels)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=300, help="crops per format")
    parser.add_argument("--size", type=int, default=256, help="side of each crop in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the best counts")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="raeflow-bench-decode-") as tmp:
        files = make_files(Path(tmp), args.num_images, args.size)
        rows = []
        for fmt, paths in files.items():
            for channels in (3, 1):
                baseline, ours = best_times([pillow_loop, raeflow_loop], paths, channels, args.repeats)
                n = len(paths)
                rows.append(("pillow", fmt, channels, n, baseline, n / baseline, 1.0))
                rows.append(("raeflow", fmt, channels, n, ours, n / ours, baseline / ours))

    size = f"{args.size}x{args.size}"
    print(f"decode {args.num_images} real-photo crops of {size}, one core, best of {args.repeats}")
    print(f"{'method':<8} {'format':<6} {'ch':>2} {'images':>7} {'seconds':>8} {'images/s':>9} {'ratio':>6}")
    for method, fmt, channels, n, seconds, rate, ratio in rows:
        print(f"{method:<8} {fmt:<6} {channels:>2} {n:>7} {seconds:>8.3f} {rate:>9.0f} {ratio:>5.2f}x")


if __name__ == "__main__":
    main()
