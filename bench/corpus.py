"""A realistic photo corpus for the benchmarks, made from photographs already on the machine.

    .venv/bin/python bench/corpus.py --num-images 5000        # writes bench-out/corpus-5000/

No downloads: the sources are the colour and grey photographs scikit-image ships in its wheel,
plus the 68 BSD68 test photographs of `../shared/benchmarks/denoise` (found from the repository
root) when that folder is there. Each corpus image is a random crop of one source, scaled to a
random size between 320x240 and 640x480 (either orientation), maybe flipped, and saved as a
baseline JPEG of quality 85-95 (4:2:0, as cameras and the web store them); one in ten is grey,
as in COCO-like collections. The same arguments give the same bytes.

Layout under `bench-out/corpus-N/` (cached: a second call with the same N reuses it):
- `folder/NNNNNN.jpg`: one file per image;
- `wds/shard-NNNNN.tar`: the same images as WebDataset tars of `SHARD_IMAGES` samples;
- `photos-mp/NNN.jpg` (made by `megapixel_photos`): 1-4 megapixel photos for the denoise bench.
"""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BENCH_OUT = REPO / "bench-out"
SHARED_DENOISE = REPO.parent / "shared" / "benchmarks" / "denoise"
"""The lead's shared benchmark data, beside the repository (`../shared` from the repo root)."""
SHARD_IMAGES = 500
COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")
GREY = ("camera", "brick", "grass", "gravel", "moon", "page", "coins", "clock")


def shared_photos(*, quiet: bool = False) -> list[np.ndarray]:
    """BSD68's grey photographs from `../shared/benchmarks/denoise/BSD68`, or none (with a note
    saying where they were looked for) when that folder is absent."""
    folder = SHARED_DENOISE / "BSD68"
    if not folder.is_dir():
        if not quiet:
            print(
                f"note: {folder} not found (the shared benchmark data lives in ../shared beside the "
                "repository); the corpus uses scikit-image's photographs only"
            )
        return []
    return [np.asarray(Image.open(path).convert("L")) for path in sorted(folder.glob("*.png"))]


def source_photos(*, quiet: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(colour, grey) source photographs as `uint8` arrays."""
    import skimage.data

    colour = [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)[:, :, :3] for name in COLOUR]
    grey = [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8) for name in GREY]
    grey = [g for g in grey if g.ndim == 2] + shared_photos(quiet=quiet)
    return colour, grey


def random_photo(rng: np.random.Generator, colour: list[np.ndarray], grey: list[np.ndarray]) -> Image.Image:
    """One corpus image: a crop of a source photo, scaled to 320x240..640x480, maybe flipped."""
    is_grey = rng.random() < 0.1
    pool = grey if is_grey else colour
    source = pool[int(rng.integers(len(pool)))]
    h, w = source.shape[:2]
    crop = rng.uniform(0.5, 1.0)  # fraction of each side kept
    ch, cw = max(32, int(h * crop)), max(32, int(w * crop))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    image = Image.fromarray(np.ascontiguousarray(source[top : top + ch, left : left + cw]))
    long_side = int(rng.integers(320, 641))
    short_side = int(long_side * rng.uniform(0.70, 0.80))
    size = (long_side, short_side) if rng.random() < 0.7 else (short_side, long_side)
    image = image.resize(size, Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def make_corpus(num_images: int, *, seed: int = 0, quiet: bool = False) -> Path:
    """`bench-out/corpus-<num_images>/` with `folder/` and `wds/` (cached); returns its path."""
    root = BENCH_OUT / f"corpus-{num_images}"
    done = root / "_done"
    if done.exists():
        return root
    colour, grey = source_photos(quiet=quiet)
    rng = np.random.default_rng(seed)
    (root / "folder").mkdir(parents=True, exist_ok=True)
    (root / "wds").mkdir(parents=True, exist_ok=True)
    tar: tarfile.TarFile | None = None
    for i in range(num_images):
        data = jpeg_bytes(random_photo(rng, colour, grey), int(rng.integers(85, 96)))
        (root / "folder" / f"{i:06d}.jpg").write_bytes(data)
        if i % SHARD_IMAGES == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(root / "wds" / f"shard-{i // SHARD_IMAGES:05d}.tar", "w")
        assert tar is not None
        info = tarfile.TarInfo(f"{i:06d}.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        tar.close()
    done.write_text(f"{num_images}\n")
    if not quiet:
        size = sum(p.stat().st_size for p in (root / "folder").iterdir())
        print(f"corpus: {num_images:,} JPEG photos, {size / 1e6:.0f} MB, in {root}")
    return root


def repeated_tars(corpus: Path, copies: int) -> Path:
    """`copies` renamed copies of the corpus tars (keys `cNNN/...`), for a large run: a folder of
    `copies x num_images` images made in seconds (cached)."""
    out = corpus / f"wds-x{copies}"
    if (out / "_done").exists():
        return out
    out.mkdir(exist_ok=True)
    tars = sorted((corpus / "wds").glob("*.tar"))
    for copy in range(copies):
        for tar_path in tars:
            with (
                tarfile.open(tar_path) as source,
                tarfile.open(out / f"c{copy:03d}-{tar_path.name}", "w") as tar,
            ):
                for member in source.getmembers():
                    data = source.extractfile(member)
                    member.name = f"c{copy:03d}/{member.name}"
                    tar.addfile(member, data)
    (out / "_done").write_text(f"{copies}\n")
    return out


def megapixel_photos(num_photos: int, *, seed: int = 1, smallest: float = 1.0, largest: float = 4.0) -> Path:
    """`bench-out/photos-mp-<n>[-<smallest>-<largest>]/`: JPEG photos of `smallest` to `largest`
    megapixels (scaled crops, cached)."""
    suffix = "" if (smallest, largest) == (1.0, 4.0) else f"-{smallest:g}-{largest:g}"
    root = BENCH_OUT / f"photos-mp-{num_photos}{suffix}"
    if (root / "_done").exists():
        return root
    colour, _ = source_photos(quiet=True)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(num_photos):
        source = colour[i % len(colour)]
        megapixels = rng.uniform(smallest, largest)
        aspect = rng.choice([4 / 3, 3 / 2, 3 / 4])
        width = int((megapixels * 1e6 * aspect) ** 0.5)
        height = int(megapixels * 1e6 / width)
        image = Image.fromarray(source).resize((width, height), Image.Resampling.BICUBIC)
        (root / f"{i:03d}.jpg").write_bytes(jpeg_bytes(image, 92))
    (root / "_done").write_text(f"{num_photos}\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=5000)
    args = parser.parse_args()
    make_corpus(args.num_images)


if __name__ == "__main__":
    main()
