"""The bounded sample of images a report shows: a fixed random-looking sample and the worst k.

A report over millions of images shows only a few of them, so neither the predictor actors nor
the driver keep more than a fixed number of rows with pixels or embeddings:

- the *gallery*: the `gallery_size` images whose key hashes lowest (a deterministic uniform
  sample: the same keys on every run, whatever the order images arrive in);
- the *worst*: the `worst_k` images with the lowest PSNR (ties broken by key);
- the *map*: the `map_size` images whose key hashes lowest, with their embeddings, for t-SNE;
- the *outliers* (`--neighbors`): the `outliers_size` images `raeflow dedup` ranked most outlying.

The same `SampleKeeper` runs in each predictor actor, to decide which rows carry thumbnails and
embeddings at all, and on the driver, over those rows, to pick the final sample. That is exact:
an image that belongs to the global gallery (or worst-k, map, outliers) also belongs to the running
selection of whichever actor saw it, at the moment it saw it, because that actor had seen a
subset of all images. So every image of the final sample reaches the driver with its pixels.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Any


def key_hash(key: str) -> int:
    """A stable 63-bit hash of an image key (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") >> 1


@dataclass
class Selection:
    """The `size` rows with the smallest rank seen so far; ranks are unique (they end in the key)."""

    size: int
    """Most rows kept."""
    ranks: list[tuple[Any, ...]] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)

    def wants(self, rank: tuple[Any, ...]) -> bool:
        """Whether a row of this rank would be kept now."""
        return self.size > 0 and (len(self.ranks) < self.size or rank < self.ranks[-1])

    def offer(self, rank: tuple[Any, ...], row: Any) -> bool:
        """Keep `row` if its rank is among the `size` smallest so far; returns whether it was kept."""
        if not self.wants(rank):
            return False
        at = bisect.bisect_left(self.ranks, rank)
        self.ranks.insert(at, rank)
        self.rows.insert(at, row)
        if len(self.ranks) > self.size:
            self.ranks.pop()
            self.rows.pop()
        return True


@dataclass
class SampleKeeper:
    """Running gallery / worst-k / map selections, each of bounded size."""

    gallery_size: int = 16
    """How many images the gallery grids show."""
    worst_k: int = 16
    """How many lowest-PSNR images to keep."""
    map_size: int = 0
    """How many embeddings to keep for the t-SNE map (0: none)."""
    outliers_size: int = 0
    """How many of the most outlying images to keep (with --neighbors; 0: none)."""

    def __post_init__(self) -> None:
        self.gallery = Selection(self.gallery_size)
        """Ranked by (key hash, key): a deterministic uniform sample."""
        self.worst = Selection(self.worst_k)
        """Ranked by (psnr, key): lowest PSNR first."""
        self.map = Selection(self.map_size)
        """Ranked by (key hash, key), rows carry embeddings."""
        self.outliers = Selection(self.outliers_size)
        """Ranked by (dedup's outlier rank, key): most outlying first."""


def gallery_rank(key: str, hash_value: int | None = None) -> tuple[int, str]:
    """Rank of an image in the gallery and map samples (smaller is kept)."""
    return (key_hash(key) if hash_value is None else hash_value, key)


def worst_rank(key: str, psnr: float) -> tuple[float, str]:
    """Rank of an image in the worst-k (smaller is kept: lower PSNR)."""
    return (psnr, key)


def outlier_rank(key: str, rank: int) -> tuple[int, str]:
    """Rank of an image in the outliers selection (smaller is kept: dedup's rank 1 is the farthest)."""
    return (rank, key)
