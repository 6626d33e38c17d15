"""Images per second of raeflow's decode paths against plain Pillow loops, on the same files.

    .venv/bin/python bench/decode.py --num-images 300 --size 256 --photos 300 --megapixel 12

Full-size decode: real-photo crops from scikit-image's photographs (colour), written as JPEG and
PNG files, timed over the same files in the same run, one core each:
- `pillow`: `np.asarray(Image.open(path).convert(mode))`, the usual loop;
- `raeflow`: read the bytes, `raeflow.data.images.decode_image(data, channels)` (header check,
  pixel limit, torchvision's libjpeg-turbo/libpng decoders, channel conversion).
Both produce `uint8` arrays of the model's channels (3 = RGB, 1 = grey).

Decode to a 64x64 model (`decode_fitted`'s job) on full-size photos: the JPEG corpus of
`bench/corpus.py` (320-640 px) and 1-4 megapixel JPEG photos, one core each:
- `pillow full+resize`: `Image.open(path).convert(mode).resize((64, 64))`, what a user writes;
- `pillow draft+resize`: the same after `Image.draft(mode, (64, 64))` (libjpeg DCT scaling);
- `raeflow full+resize`: `decode_image` then `fit_to_contract` (the path before reduced decoding);
- `raeflow decode_fitted`: `decode_fitted(data, channels, 64, 64)` (simplejpeg's scaled decode).
Also the mean absolute difference (grey levels) of each to `raeflow full+resize`.
The methods take turns; the best of `--repeats` runs counts. Times are this process's CPU time
(`time.process_time`, one thread), so a machine busy with other work slows the wall clock but
hardly the comparison.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, whatever the cwd

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from raeflow.data.images import decode_fitted, decode_image, fit_to_contract  # noqa: E402

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


def fitted_methods() -> dict[str, Callable[[bytes, int], np.ndarray]]:
    """Ways to get a 64x64 image of `channels` from JPEG bytes."""

    def pillow_full(data: bytes, channels: int) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB" if channels == 3 else "L").resize((64, 64), Image.BILINEAR))

    def pillow_draft(data: bytes, channels: int) -> np.ndarray:
        mode = "RGB" if channels == 3 else "L"
        with Image.open(io.BytesIO(data)) as image:
            image.draft(mode, (64, 64))
            return np.asarray(image.convert(mode).resize((64, 64), Image.BILINEAR))

    return {
        "pillow full+resize": pillow_full,
        "pillow draft+resize": pillow_draft,
        "raeflow full+resize": lambda data, c: fit_to_contract(decode_image(data, channels=c), 64, 64),
        "raeflow decode_fitted": lambda data, c: decode_fitted(data, c, 64, 64),
    }


def fitted_rows(name: str, datas: list[bytes], repeats: int) -> list[tuple]:
    """(set, method, channels, images/s, mean |difference| to raeflow full+resize) per method."""
    methods = fitted_methods()
    rows = []
    for channels in (3, 1):
        for run in methods.values():
            run(datas[0], channels)  # warm up lazy imports
        best = dict.fromkeys(methods, float("inf"))
        outputs: dict[str, list[np.ndarray]] = {}
        for _ in range(repeats):
            for method, run in methods.items():
                start = time.process_time()
                outputs[method] = [run(data, channels) for data in datas]
                best[method] = min(best[method], time.process_time() - start)
        reference = np.stack([o.reshape(64, 64, -1) for o in outputs["raeflow full+resize"]]).astype(np.int16)
        for method in methods:
            got = np.stack([o.reshape(64, 64, -1) for o in outputs[method]]).astype(np.int16)
            rows.append(
                (name, method, channels, len(datas) / best[method], float(np.abs(got - reference).mean()))
            )
    return rows


def best_times(
    methods: list[Callable[[list[Path], int], None]], paths: list[Path], channels: int, repeats: int
) -> list[float]:
    """Best wall time of each method; the methods take turns, so load on the machine hits all alike."""
    for run in methods:
        run(paths[:20], channels)  # warm up caches and lazy imports
    best = [float("inf")] * len(methods)
    for _ in range(repeats):
        for i, run in enumerate(methods):
            start = time.process_time()
            run(paths, channels)
            best[i] = min(best[i], time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=300, help="crops per format")
    parser.add_argument("--size", type=int, default=256, help="side of each crop in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method; the best counts")
    parser.add_argument("--photos", type=int, default=300, help="320-640 px corpus photos to fit to 64x64")
    parser.add_argument("--megapixel", type=int, default=12, help="1-4 megapixel photos to fit to 64x64")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    from corpus import make_corpus, megapixel_photos

    corpus = sorted((make_corpus(max(args.photos, 200), quiet=True) / "folder").glob("*.jpg"))[: args.photos]
    big = sorted(megapixel_photos(args.megapixel).glob("*.jpg"))
    fitted = fitted_rows("320-640 px", [p.read_bytes() for p in corpus], args.repeats)
    fitted += fitted_rows("1-4 MP", [p.read_bytes() for p in big], args.repeats)
    print(f"decode to 64x64, one core, best of {args.repeats}")
    print(f"{'photos':<11} {'method':<22} {'ch':>2} {'images/s':>9} {'vs pillow':>9} {'mean |diff|':>11}")
    baseline = {(r[0], r[2]): r[3] for r in fitted if r[1] == "pillow full+resize"}
    for photos, method, channels, rate, diff in fitted:
        ratio = rate / baseline[(photos, channels)]
        print(f"{photos:<11} {method:<22} {channels:>2} {rate:>9.0f} {ratio:>8.2f}x {diff:>11.2f}")
    print()

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
