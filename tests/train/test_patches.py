"""Patch sampling for denoiser training: random crops, the 8 symmetries, fixed validation patches."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from raeflow.train.batches import DecodeForTraining, is_validation, random_patches


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _table(keys: list[str], images: list[np.ndarray]) -> pa.Table:
    return pa.table(
        {
            "key": keys,
            "image": [_png(p) for p in images],
            "label": [None] * len(keys),
            "error": pa.array([None] * len(keys), pa.string()),
        }
    )


def test_patches_are_crops_of_the_image_of_the_asked_size() -> None:
    pixels = np.arange(40 * 50 * 3, dtype=np.uint32).reshape(40, 50, 3) % 251
    pixels = pixels.astype(np.uint8)
    crops = random_patches(pixels, 16, 20, np.random.default_rng(0), augment=False)
    assert len(crops) == 20 and all(c.shape == (3, 16, 16) for c in crops)
    tops_lefts = set()
    for crop in crops:
        hwc = crop.transpose(1, 2, 0)
        found = [
            (t, left)
            for t in range(40 - 15)
            for left in range(50 - 15)
            if np.array_equal(pixels[t : t + 16, left : left + 16], hwc)
        ]
        assert found, "a patch is not a crop of the image"
        tops_lefts.add(found[0])
    assert len(tops_lefts) > 10  # random places, not one


def test_augmentation_uses_all_eight_symmetries_and_keeps_the_pixels() -> None:
    pixels = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16, 1)  # all pixels distinct
    crops = random_patches(pixels, 16, 200, np.random.default_rng(0), augment=True)
    variants = {c.tobytes() for c in crops}
    assert len(variants) == 8  # 4 rotations x optional flip
    for crop in crops:
        assert sorted(crop.ravel().tolist()) == sorted(pixels.ravel().tolist())


def test_an_image_smaller_than_the_patch_is_mirrored_out() -> None:
    pixels = np.full((10, 12, 1), 77, dtype=np.uint8)
    crops = random_patches(pixels, 32, 3, np.random.default_rng(0), augment=False)
    assert all(c.shape == (1, 32, 32) and (c == 77).all() for c in crops)


def _split_keys(n: int, val_fraction: float) -> tuple[list[str], list[str]]:
    keys = [f"img{i:03d}" for i in range(n)]
    return [k for k in keys if not is_validation(k, val_fraction)], [
        k for k in keys if is_validation(k, val_fraction)
    ]


def test_decode_for_training_gives_k_patches_per_image_fresh_each_epoch_and_fixed_for_validation() -> None:
    rng = np.random.default_rng(0)
    keys = [f"img{i:03d}" for i in range(30)]
    images = [rng.integers(0, 256, (48 + i, 60, 3), dtype=np.uint8) for i in range(30)]
    table = _table(keys, images)
    train_keys, val_keys = _split_keys(30, 0.3)
    assert train_keys and val_keys

    def decode(split: str, seed: int | None) -> DecodeForTraining:
        return DecodeForTraining(
            split=split, channels=1, height=24, width=24, val_fraction=0.3,
            patch_size=24, patches=5, augment=True, seed=seed,
        )  # fmt: skip

    train = decode("train", None)(table)
    assert train["image"].shape == (5 * len(train_keys), 1, 24, 24)
    assert len(train["label"]) == 5 * len(train_keys)
    again = decode("train", None)(table)
    assert not np.array_equal(train["image"], again["image"])  # new patches every epoch
    seeded = [decode("train", 3)(table)["image"] for _ in range(2)]
    assert np.array_equal(seeded[0], seeded[1])  # the plain loop seeds them: reproducible

    val = [decode("val", None)(table)["image"] for _ in range(2)]
    assert val[0].shape == (5 * len(val_keys), 1, 24, 24)
    assert np.array_equal(val[0], val[1])  # the same validation patches every epoch


def test_without_patch_size_images_are_resized_whole_as_before() -> None:
    train_keys, _ = _split_keys(4, 0.1)
    images = [np.full((40, 30), 9, dtype=np.uint8) for _ in train_keys]
    out = DecodeForTraining(split="train", channels=1, height=20, width=20, val_fraction=0.1)(
        _table(train_keys, images)
    )
    assert out["image"].shape == (len(train_keys), 1, 20, 20) and (out["image"] == 9).all()


@pytest.mark.parametrize("patches", [1, 3])
def test_patches_per_image_is_honoured_for_grey_data_read_as_rgb(patches: int) -> None:
    train_keys, _ = _split_keys(6, 0.1)
    images = [np.full((30, 30), 100, dtype=np.uint8) for _ in train_keys]
    out = DecodeForTraining(
        split="train", channels=3, height=16, width=16, val_fraction=0.1, patch_size=16, patches=patches
    )(_table(train_keys, images))
    assert out["image"].shape == (patches * len(train_keys), 3, 16, 16)
    assert (out["image"] == 100).all()
