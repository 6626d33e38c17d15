"""STL-10 binaries: 96x96 colour images, keys `<split>/<index>`, labels 0..9 (STL's 1..10 minus one).

The source URI is the folder of the extracted `stl10_binary.tar.gz`, or its parent:

    stl10_binary/train_X.bin  train_y.bin      -> split `train` (5,000 images)
    stl10_binary/test_X.bin   test_y.bin       -> split `test` (8,000 images)
    stl10_binary/unlabeled_X.bin               -> split `unlabeled` (100,000 images, no labels)

An `_X.bin` file is headerless: image after image, each 3 planes (red, green, blue) of 96x96 bytes
stored column by column (Fortran order). The `_y.bin` files hold one byte per image, 1..10; raeflow
subtracts one so labels run 0..9 like every other kind (label `i` is line `i + 1` of
`class_names.txt`). Shards are row ranges read with range requests (2,000 images, 55 MB).

    raeflow shard s3://bucket/stl10/ --source-format stl10 --out s3://bucket/stl10-shards/
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from fsspec import AbstractFileSystem

from raeflow.data.images import encode_raw
from raeflow.data.sources.base import Shard
from raeflow.data.sources.location import filesystem, to_uri
from raeflow.data.sources.published import RowRangeSource, files_in, read_record_range, row_ranges, row_table
from raeflow.errors import SourceError

FOLDER = "stl10_binary"
SPLITS = ("train", "test", "unlabeled")
SIDE = 96
RECORD_BYTES = 3 * SIDE * SIDE


def _data_files(fs: AbstractFileSystem, root: str) -> dict[str, str] | None:
    """Name -> path of the files in `root` or `root/stl10_binary`, whichever holds `*_X.bin` files."""
    for folder in (root, f"{root}/{FOLDER}"):
        files = files_in(fs, folder)
        if any(f"{split}_X.bin" in files for split in SPLITS):
            return files
    return None


def decode_records(chunk: bytes) -> np.ndarray:
    """Whole STL-10 records in `chunk` as images (N, 96, 96, 3) uint8."""
    count = len(chunk) // RECORD_BYTES
    planes = np.frombuffer(chunk[: count * RECORD_BYTES], dtype=np.uint8).reshape(count, 3, SIDE, SIDE)
    # Each plane is column-major: planes[n, c, x, y]; -> (N, y, x, c).
    return planes.transpose(0, 3, 2, 1)


class Stl10Source(RowRangeSource):
    """Images (and labels where published) of the STL-10 binary files."""

    kind = "stl10"
    has_labels = True
    shard_rows = 2_000

    @classmethod
    def sniff(cls, fs: AbstractFileSystem, path: str) -> bool:
        """True when `path` (or its `stl10_binary/`) holds STL-10 `*_X.bin` files."""
        return _data_files(fs, path.rstrip("/")) is not None

    def list_shards(self) -> list[Shard]:
        fs, root = filesystem(self.uri, self.storage_options)
        files = _data_files(fs, root)
        if files is None:
            raise SourceError(
                f"no STL-10 binaries under {self.uri}: expected {FOLDER}/train_X.bin with train_y.bin, "
                "test_X.bin with test_y.bin and/or unlabeled_X.bin (stl10_binary.tar.gz, extracted); "
                "put them there (raeflow never downloads)"
            )
        shards: list[Shard] = []
        for split in SPLITS:
            images = files.get(f"{split}_X.bin")
            if images is None:
                continue
            size = fs.size(images)
            num_rows = -(-size // RECORD_BYTES)  # a partial last record is listed and reported truncated
            paths: tuple[str, ...] = (to_uri(fs, images),)
            labels = files.get(f"{split}_y.bin")
            if split != "unlabeled" and labels is not None:
                if fs.size(labels) != num_rows:
                    raise SourceError(
                        f"{to_uri(fs, labels)} has {fs.size(labels)} labels but {paths[0]} holds "
                        f"{size / RECORD_BYTES:g} images of 96x96x3; use the matching pair of files"
                    )
                paths += (to_uri(fs, labels),)
            for start, stop in row_ranges(num_rows, self.shard_rows):
                shards.append(
                    Shard(
                        index=len(shards),
                        name=f"{split}[{start}:{stop}]",
                        paths=paths,
                        start=start,
                        stop=stop,
                        extra={"split": split},
                    )
                )
        return shards

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        split = shard.extra["split"]
        stop = shard.stop if shard.stop is not None else shard.start
        uri = shard.paths[0]
        fs, path = filesystem(uri, self.storage_options)
        labels: np.ndarray | None = None
        if len(shard.paths) > 1:
            labels_fs, labels_path = filesystem(shard.paths[1], self.storage_options)
            raw = labels_fs.cat_file(labels_path, start=shard.start, end=stop)
            labels = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 1
        for first, chunk in read_record_range(
            fs,
            path,
            header_bytes=0,
            record_bytes=RECORD_BYTES,
            start=shard.start,
            stop=stop,
            batch_rows=batch_rows,
        ):
            rows = min(batch_rows, stop - first)
            pixels = decode_records(chunk)
            whole = len(pixels)
            images = [encode_raw(np.ascontiguousarray(image)) for image in pixels] + [b""] * (rows - whole)
            errors: list[str | None] = [None] * whole
            errors += [f"truncated: {uri} ends inside image {first + whole}"] * (rows - whole)
            row_labels: list[int | None] = [None] * rows
            if labels is not None:
                offset = first - shard.start
                row_labels = [int(label) for label in labels[offset : offset + rows]]
            yield row_table(
                [f"{split}/{i}" for i in range(first, first + rows)], uri, images, row_labels, errors
            )
