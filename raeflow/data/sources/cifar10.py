"""CIFAR-10 python batches: keys `<split>/<index>`, labels 0..9, one shard per batch file.

The source URI is the folder of the extracted `cifar-10-python.tar.gz`, or its parent:

    cifar-10-batches-py/data_batch_1 .. data_batch_5   -> split `train`, indices 0..49999 in order
    cifar-10-batches-py/test_batch                     -> split `test`, indices 0..9999
    cifar-10-batches-py/batches.meta                   (class names; not needed)

Each batch is a pickled dict: `b"data"` a (N, 3072) uint8 array, one row per image holding the red,
green and blue 32x32 planes in row-major order; `b"labels"` N ints. The pickles are loaded with a
restricted unpickler (`safe_pickle`) that refuses anything but that plain data.

Listing reads every batch once on the driver (one at a time, ~30 MB each) to check it and count its
rows, so that train indices run on across batches and a bad file is refused before any job starts.

    raeflow shard ./data/cifar-10-batches-py --source-format cifar10 --out ./cifar-shards
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem

from raeflow.data.images import encode_raw
from raeflow.data.sources.base import Shard, Source, range_rows
from raeflow.data.sources.location import filesystem, to_uri
from raeflow.data.sources.published import files_in, row_table
from raeflow.data.sources.safe_pickle import load_batch
from raeflow.errors import SourceError

FOLDER = "cifar-10-batches-py"
_TRAIN = re.compile(r"^data_batch_(\d+)$")
SIDE = 32


def _batch_files(fs: AbstractFileSystem, root: str) -> list[tuple[str, str]] | None:
    """(split, path) of every batch file, train batches in numeric order then the test batch, from
    `root` or `root/cifar-10-batches-py`; None when neither holds any."""
    for folder in (root, f"{root}/{FOLDER}"):
        names = files_in(fs, folder)
        train = sorted((int(m.group(1)), name) for name in names if (m := _TRAIN.match(name)))
        batches = [("train", names[name]) for _, name in train]
        if "test_batch" in names:
            batches.append(("test", names["test_batch"]))
        if batches:
            return batches
    return None


def batch_arrays(batch: dict[bytes, Any], *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The batch's pixels (N, 32, 32, 3) uint8 and labels (N,) int64; SourceError if malformed."""
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * SIDE * SIDE
    ):
        raise SourceError(f"{name}: b'data' is not a (N, 3072) uint8 array as in CIFAR-10")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise SourceError(f"{name}: b'labels' is missing or does not have one label per image")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise SourceError(f"{name}: b'labels' holds something other than integers") from err
    pixels = data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # (N, 3, H, W) planes -> (N, H, W, 3)
    return pixels, label_array


class Cifar10Source(Source):
    """Images and labels of the CIFAR-10 python batches."""

    kind = "cifar10"
    has_labels = True

    @classmethod
    def sniff(cls, fs: AbstractFileSystem, path: str) -> bool:
        """True when `path` (or its `cifar-10-batches-py/`) holds CIFAR python batch files."""
        return _batch_files(fs, path.rstrip("/")) is not None

    def list_shards(self) -> list[Shard]:
        fs, root = filesystem(self.uri, self.storage_options)
        batches = _batch_files(fs, root)
        if batches is None:
            raise SourceError(
                f"no CIFAR-10 batches under {self.uri}: expected {FOLDER}/data_batch_1..5 and "
                f"{FOLDER}/test_batch (the python version, cifar-10-python.tar.gz, extracted); put "
                "them there (raeflow never downloads)"
            )
        shards: list[Shard] = []
        offsets = {"train": 0, "test": 0}
        for split, path in batches:
            uri = to_uri(fs, path)
            pixels, _ = batch_arrays(load_batch(fs.cat_file(path), name=uri), name=uri)
            count = len(pixels)
            shards.append(
                Shard(
                    index=len(shards),
                    name=path.rsplit("/", 1)[-1],
                    paths=(uri,),
                    start=0,
                    stop=count,
                    extra={"split": split, "offset": offsets[split]},
                )
            )
            offsets[split] += count
        return shards

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """Each batch file's images (counted when the shards were listed)."""
        return range_rows(shards)

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        uri = shard.paths[0]
        fs, path = filesystem(uri, self.storage_options)
        pixels, labels = batch_arrays(load_batch(fs.cat_file(path), name=uri), name=uri)
        split, offset = shard.extra["split"], shard.extra["offset"]
        stop = min(shard.stop if shard.stop is not None else len(pixels), len(pixels))
        for first in range(shard.start, stop, batch_rows):
            last = min(first + batch_rows, stop)
            yield row_table(
                [f"{split}/{offset + i}" for i in range(first, last)],
                uri,
                [encode_raw(np.ascontiguousarray(pixels[i])) for i in range(first, last)],
                [int(label) for label in labels[first:last]],
            )
