"""MNIST-style idx files (MNIST, Fashion-MNIST, KMNIST): keys `<split>/<index>`, class labels.

The source URI is the folder that holds the files as published, gzipped or not:

    train-images-idx3-ubyte[.gz]   train-labels-idx1-ubyte[.gz]    -> split `train`
    t10k-images-idx3-ubyte[.gz]    t10k-labels-idx1-ubyte[.gz]     -> split `test`

(`train-images.idx3-ubyte`, with a dot, as some mirrors name them, is accepted too.) The headers
are read for real (magic 2051 images / 2049 labels, big-endian sizes); shards are row ranges of
`shard_rows` images read with range requests, so no worker or driver loads a whole file.

    raeflow shard s3://bucket/fashion-mnist/ --source-format mnist --out s3://bucket/fmnist-shards/
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem

from raeflow.data.images import encode_raw
from raeflow.data.sources.base import Shard
from raeflow.data.sources.location import filesystem, to_uri
from raeflow.data.sources.published import (
    RowRangeSource,
    files_in,
    find_file,
    read_head,
    read_record_range,
    row_ranges,
    row_table,
)
from raeflow.errors import SourceError

SPLITS = {"train": "train", "t10k": "test"}
"""File prefix -> split name used in keys."""
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def _names(prefix: str, what: str, dims: int) -> list[str]:
    stems = [f"{prefix}-{what}-idx{dims}-ubyte", f"{prefix}-{what}.idx{dims}-ubyte"]
    return [stem + suffix for stem in stems for suffix in ("", ".gz")]


def parse_idx_header(head: bytes, *, expect_magic: int, name: str) -> tuple[int, ...]:
    """The dimensions in an idx header; raises SourceError if it is not an unsigned-byte idx file."""
    if len(head) < 4:
        raise SourceError(f"{name} is too short to be an idx file")
    (magic,) = struct.unpack(">I", head[:4])
    if magic != expect_magic:
        raise SourceError(
            f"{name} is not an idx file of the expected kind (magic {magic}, expected {expect_magic}); "
            "is it the published MNIST file, not renamed or re-encoded?"
        )
    ndim = magic & 0xFF
    if len(head) < 4 + 4 * ndim:
        raise SourceError(f"{name} ends inside its idx header")
    return struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])


class MnistSource(RowRangeSource):
    """Images and labels of an MNIST-layout folder of idx files."""

    kind = "mnist"
    has_labels = True
    shard_rows = 10_000
    """Images per shard: 7.8 MB of pixels for 28x28."""

    @classmethod
    def sniff(cls, fs: AbstractFileSystem, path: str) -> bool:
        """True when `path` is a folder holding MNIST idx image files."""
        files = files_in(fs, path.rstrip("/"))
        return any(find_file(files, _names(prefix, "images", 3)) for prefix in SPLITS)

    def list_shards(self) -> list[Shard]:
        fs, root = filesystem(self.uri, self.storage_options)
        shards: list[Shard] = []
        files = files_in(fs, root)
        for prefix, split in SPLITS.items():
            images = find_file(files, _names(prefix, "images", 3))
            if images is None:
                continue
            labels = find_file(files, _names(prefix, "labels", 1))
            num_rows, height, width = self._image_dims(fs, images)
            if labels is not None:
                (num_labels,) = parse_idx_header(
                    read_head(fs, labels, 8), expect_magic=LABELS_MAGIC, name=to_uri(fs, labels)
                )
                if num_labels != num_rows:
                    raise SourceError(
                        f"{to_uri(fs, labels)} has {num_labels} labels but {to_uri(fs, images)} "
                        f"has {num_rows} images; use the matching pair of files"
                    )
            paths = (to_uri(fs, images),) + ((to_uri(fs, labels),) if labels else ())
            for start, stop in row_ranges(num_rows, self.shard_rows):
                shards.append(
                    Shard(
                        index=len(shards),
                        name=f"{split}[{start}:{stop}]",
                        paths=paths,
                        start=start,
                        stop=stop,
                        extra={"split": split, "height": height, "width": width},
                    )
                )
        if not shards:
            raise SourceError(
                f"no MNIST idx files under {self.uri}: expected train-images-idx3-ubyte[.gz] with "
                "train-labels-idx1-ubyte[.gz] and/or t10k-images-idx3-ubyte[.gz] with "
                "t10k-labels-idx1-ubyte[.gz] (as published for MNIST / Fashion-MNIST); put them "
                "there (raeflow never downloads)"
            )
        return shards

    @staticmethod
    def _image_dims(fs: AbstractFileSystem, path: str) -> tuple[int, int, int]:
        dims = parse_idx_header(read_head(fs, path, 16), expect_magic=IMAGES_MAGIC, name=to_uri(fs, path))
        num_rows, height, width = dims
        if height == 0 or width == 0:
            raise SourceError(f"{to_uri(fs, path)} declares empty {height}x{width} images")
        return num_rows, height, width

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        split, height, width = shard.extra["split"], shard.extra["height"], shard.extra["width"]
        stop = shard.stop if shard.stop is not None else shard.start
        images_uri = shard.paths[0]
        fs, images_path = filesystem(images_uri, self.storage_options)
        labels = self._read_labels(shard.paths[1], shard.start, stop) if len(shard.paths) > 1 else None
        record = height * width
        done = shard.start
        try:
            for first, chunk in read_record_range(
                fs,
                images_path,
                header_bytes=16,
                record_bytes=record,
                start=shard.start,
                stop=stop,
                batch_rows=batch_rows,
            ):
                rows = min(batch_rows, stop - first)
                pixels = np.frombuffer(chunk, dtype=np.uint8)
                whole = len(pixels) // record
                images = [
                    encode_raw(pixels[i * record : (i + 1) * record].reshape(height, width, 1))
                    for i in range(whole)
                ]
                errors: list[str | None] = [None] * whole
                images += [b""] * (rows - whole)
                errors += [f"truncated: {images_uri} ends before image {first + whole}"] * (rows - whole)
                yield self._table(split, first, rows, images_uri, images, labels, shard.start, errors)
                done = first + rows
        except (OSError, EOFError) as err:  # a corrupt gzip stream: the rest of the shard is unreadable
            for first in range(done, stop, batch_rows):
                rows = min(batch_rows, stop - first)
                reason = f"read_error: {images_uri}: {err}"
                yield self._table(
                    split, first, rows, images_uri, [b""] * rows, labels, shard.start, [reason] * rows
                )

    def _read_labels(self, uri: str, start: int, stop: int) -> np.ndarray | None:
        fs, path = filesystem(uri, self.storage_options)
        try:
            chunks = [
                c
                for _, c in read_record_range(
                    fs, path, header_bytes=8, record_bytes=1, start=start, stop=stop, batch_rows=stop - start
                )
            ]
        except (OSError, EOFError):
            return None
        return np.frombuffer(b"".join(chunks), dtype=np.uint8)

    @staticmethod
    def _table(
        split: str,
        first: int,
        rows: int,
        source: str,
        images: list[bytes],
        labels: np.ndarray | None,
        shard_start: int,
        errors: list[str | None],
    ) -> pa.Table:
        keys = [f"{split}/{i}" for i in range(first, first + rows)]
        row_labels: list[int | None] = [None] * rows
        if labels is not None:
            offset = first - shard_start
            row_labels = [int(labels[offset + i]) if offset + i < len(labels) else None for i in range(rows)]
        return row_table(keys, source, images, row_labels, errors)
