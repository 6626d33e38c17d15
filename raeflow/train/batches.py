"""Turning source rows into training batches: decode to the model's size, split train/validation.

`DecodeForTraining` is the one place where encoded images become pixels for training. Ray Data runs
it in its map tasks (`trainer.py`); the Ray-free loop calls it on the tables a source yields
(`iter_plain_batches`). Either way a batch is `{"image": uint8 (N, C, H, W), "label": int64 (N,)}`
(label -1 where the source has none); the worker turns images into floats in [0, 1].

With a patch size (denoiser training), each training image gives `patches` random P x P crops per
epoch, each flipped and rotated at random when `augment` is on; each validation image gives the
same `patches` crops every epoch (placed by a hash of its key), unaugmented. Images smaller than a
patch are mirrored out to its size.

The validation split is chosen per image by a hash of its key, so it is the same in every run, on
every worker, and under any sharding: an image is never trained on in one run and validated on in
the next.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from raeflow.data.images import ImageRejected, decode_fitted, decode_image
from raeflow.train.config import TrainConfig
from raeflow.train.rejected import write_rejected_piece

SPLITS = ("train", "val")
"""The two splits a run reads."""
SHUFFLE_ROWS_MAX = 4096
"""Cap on the rows (patches) a training shuffle buffer holds."""


def shuffle_rows(config: TrainConfig) -> int:
    """Rows of the training shuffle buffer: a few batches; more with patches (an image's patches
    arrive together and should land in different batches), up to SHUFFLE_ROWS_MAX."""
    rows = config.batch_size * 4
    if config.patch_size is not None:
        rows = max(rows, min(SHUFFLE_ROWS_MAX, config.batch_size * config.patches_per_image * 8))
    return rows


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def is_validation(key: str, val_fraction: float) -> bool:
    """Whether the image with this key belongs to the held-out validation split."""
    return _key_hash(key) / 2.0**64 < val_fraction


def random_patches(
    pixels: np.ndarray, size: int, count: int, rng: np.random.Generator, *, augment: bool
) -> list[np.ndarray]:
    """`count` random `size` x `size` crops of an `(H, W, C)` image, each `(C, size, size)`;
    with `augment`, each crop is also flipped and rotated by a multiple of 90 degrees at random
    (the 8 symmetries of the square, equally likely)."""
    h, w = pixels.shape[:2]
    if h < size or w < size:  # mirror a small image out to the patch size
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        pixels = np.pad(pixels, ((0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")
        h, w = pixels.shape[:2]
    crops = []
    for _ in range(count):
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = pixels[top : top + size, left : left + size]  # (size, size, C)
        if augment:
            crop = np.rot90(crop, k=int(rng.integers(0, 4)), axes=(0, 1))
            if rng.integers(0, 2):
                crop = crop[:, ::-1]
        crops.append(np.ascontiguousarray(crop.transpose(2, 0, 1)))  # (C, size, size)
    return crops


class DecodeForTraining:
    """Decode one table of source rows into a batch of fixed-size images for one split.

    Rows of the other split, rows a source could not read and images that cannot be decoded are
    dropped (training skips bad images instead of failing on them); with `rejected_out` (the run's
    `--out`) the bad images of this split are listed in its `_rejected/` (see `rejected.py`).
    """

    def __init__(
        self,
        *,
        split: str,
        channels: int,
        height: int,
        width: int,
        val_fraction: float,
        patch_size: int | None = None,
        patches: int = 1,
        augment: bool = False,
        seed: int | None = None,
        rejected_out: str | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.channels = channels
        self.height = height
        self.width = width
        self.val_fraction = val_fraction
        self.patch_size = patch_size
        """Cut `patches` random crops of this size per image instead of resizing it (None: resize)."""
        self.patches = patches
        self.augment = augment and split == "train"
        self.seed = seed
        """Seed of the training patches (None: fresh randomness, different in every epoch)."""
        self.rejected_out = rejected_out
        """Output URI whose `_rejected/` lists the images this split could not use (None: not listed)."""

    def _pixels(self, key: str, data: bytes) -> list[np.ndarray]:
        """The `(C, H, W)` arrays one image contributes: itself resized, or its patches."""
        if self.patch_size is None:
            pixels = decode_fitted(data, self.channels, self.height, self.width)  # (H, W, C) uint8
            return [np.ascontiguousarray(pixels.transpose(2, 0, 1))]
        pixels = decode_image(data, channels=self.channels)  # (H, W, C) at its own size
        if self.split == "val":
            rng = np.random.default_rng(_key_hash(key))  # the same patches every epoch and run
        elif self.seed is not None:
            rng = np.random.default_rng([self.seed, _key_hash(key)])
        else:
            rng = np.random.default_rng()
        return random_patches(pixels, self.patch_size, self.patches, rng, augment=self.augment)

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        """`table` has ROW_SCHEMA columns; returns {"image": (N, C, H, W) uint8, "label": (N,) int64}."""
        keys = table.column("key").to_pylist()
        datas = table.column("image").to_pylist()
        labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(keys)
        errors = table.column("error").to_pylist() if "error" in table.column_names else [None] * len(keys)
        want_val = self.split == "val"
        images: list[np.ndarray] = []
        kept_labels: list[int] = []
        rejected: list[tuple[int, str]] = []  # (row, reason): empty unless a bad image turns up
        for row, (key, data, label, error) in enumerate(zip(keys, datas, labels, errors, strict=True)):
            if is_validation(key, self.val_fraction) != want_val:
                continue
            if error is not None or not data:
                rejected.append((row, error or "empty: no bytes"))
                continue
            try:
                arrays = self._pixels(key, data)  # each (C, H, W) uint8
            except ImageRejected as exc:
                rejected.append((row, str(exc)))
                continue
            images.extend(arrays)
            kept_labels.extend([-1 if label is None else int(label)] * len(arrays))
        if rejected and self.rejected_out is not None:
            rows = [row for row, _ in rejected]
            has_source = "source" in table.column_names
            sources = table.column("source").take(rows).to_pylist() if has_source else [""] * len(rows)
            reasons = [reason for _, reason in rejected]
            write_rejected_piece(self.rejected_out, [keys[row] for row in rows], sources, reasons)
        if images:
            stacked = np.stack(images)  # (N, C, H, W)
        else:
            stacked = np.zeros((0, self.channels, self.height, self.width), dtype=np.uint8)
        return {"image": stacked, "label": np.asarray(kept_labels, dtype=np.int64)}


def iter_source_tables(source, limit: int | None = None) -> Iterator[pa.Table]:
    """A source's rows in shard order, as tables, stopping after `limit` rows (Ray-free)."""
    remaining = limit
    for shard in source.list_shards():
        for table in source.read_shard(shard):
            if remaining is not None:
                if remaining <= 0:
                    return
                table = table.slice(0, remaining)
                remaining -= table.num_rows
            yield table


def iter_plain_batches(
    source,
    decode: DecodeForTraining,
    batch_size: int,
    *,
    limit: int | None = None,
    shuffle_seed: int | None = None,
    shuffle_window: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of one split read straight from the source, no Ray; shuffled within a window if seeded."""
    pending_images: list[np.ndarray] = []
    pending_labels: list[np.ndarray] = []
    num_pending = 0
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    window = max(batch_size * 8, shuffle_window)  # like Ray's local shuffle buffer: mixes neighbouring rows

    def emit(final: bool) -> Iterator[dict[str, np.ndarray]]:
        nonlocal pending_images, pending_labels, num_pending
        images = np.concatenate(pending_images)
        labels = np.concatenate(pending_labels)
        if rng is not None:
            order = rng.permutation(len(images))
            images, labels = images[order], labels[order]
        stop = len(images) if final else len(images) - len(images) % batch_size
        for start in range(0, stop, batch_size):
            yield {"image": images[start : start + batch_size], "label": labels[start : start + batch_size]}
        pending_images, pending_labels = [images[stop:]], [labels[stop:]]
        num_pending = len(images) - stop

    for table in iter_source_tables(source, limit):
        batch = decode(table)
        if len(batch["image"]) == 0:
            continue
        pending_images.append(batch["image"])
        pending_labels.append(batch["label"])
        num_pending += len(batch["image"])
        if num_pending >= window:
            yield from emit(final=False)
    if num_pending:
        yield from emit(final=True)
