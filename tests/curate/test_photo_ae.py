"""`builtin:photo-ae`, the shipped photo encoder, on photos it never trained on: their edited copies
(re-encoded, resized, brightened) land in their originals' groups at dedup's default threshold, and
different photos stay apart. The table is embedded by embed's own decode and map steps (no Ray)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner
from PIL import Image, ImageEnhance
from skimage import data as skdata

from raeflow.cli import main
from tests.curate.photos import embed_folder

HELD_OUT = ("astronaut", "coffee")
"""The scikit-image photos bench/make_bundles.py keeps out of the encoder's training."""
OTHERS = ("chelsea", "rocket", "camera", "coins", "immunohistochemistry")
"""Different photos: none of them is a copy of another."""


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    data = io.BytesIO()
    image.save(data, "JPEG", quality=quality)
    return Image.open(io.BytesIO(data.getvalue()))


def write_photos(folder: Path) -> dict[str, str]:
    """The photos as PNGs under `folder`, and edited copies of the held-out ones; returns copy -> original."""
    folder.mkdir(parents=True)
    copies = {}
    for name in (*HELD_OUT, *OTHERS):
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        photo.save(folder / f"{name}.png")
        if name not in HELD_OUT:
            continue
        edits = {
            "jpeg50": _jpeg(photo, 50),
            "half": photo.resize((photo.width // 2, photo.height // 2), Image.Resampling.LANCZOS),
            "brighter": ImageEnhance.Brightness(photo).enhance(1.08),
        }
        for edit, image in edits.items():
            image.save(folder / f"{name}-{edit}.png")
            copies[f"{name}-{edit}"] = name
    return copies


def test_photo_ae_groups_edited_copies_with_their_originals_and_nothing_else(tmp_path: Path) -> None:
    copies = write_photos(tmp_path / "photos")
    embed_folder(tmp_path / "photos", tmp_path / "emb", model="builtin:photo-ae")
    result = CliRunner().invoke(
        main, ["dedup", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "dd"), "-q"]
    )
    assert result.exit_code == 0, result.output
    groups = pq.read_table(tmp_path / "dd" / "groups.parquet").to_pylist()
    group_of = {row["key"]: row["group"] for row in groups}
    for copy, original in copies.items():
        assert group_of.get(copy) is not None and group_of.get(copy) == group_of.get(original), copy
    assert not set(group_of) & set(OTHERS)  # no other photo joined a group
    assert len(set(group_of.values())) == len(HELD_OUT)  # the two held-out photos stay apart
    keep = set(pq.read_table(tmp_path / "dd" / "keep.parquet").column("key").to_pylist())
    assert len(keep) == len(HELD_OUT) + len(OTHERS)
    assert set(OTHERS) <= keep
