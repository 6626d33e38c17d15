"""What the published-dataset kinds (mnist, cifar10, stl10, coco) share: file access and row tables.

These datasets ship as a few big files of fixed-size records (idx, STL-10 binaries) or as a folder
plus a json; their readers need the same things: finding the published file names, reading a range
of records without fetching the whole file, and building `ROW_SCHEMA` batches. (Filesystems and
URIs come from `location`, shared with the generic kinds.)
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import pyarrow as pa

from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source, range_rows


def files_in(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, str]:
    """File name -> path of the files directly in `folder` (one listing; empty if not a folder)."""
    if not fs.isdir(folder):
        return {}
    return {
        entry["name"].rstrip("/").rsplit("/", 1)[-1]: entry["name"]
        for entry in fs.ls(folder, detail=True)
        if entry.get("type") == "file"
    }


def find_file(files: dict[str, str], names: Sequence[str]) -> str | None:
    """The path of the first of `names` present in `files` (from `files_in`), else None."""
    return next((files[name] for name in names if name in files), None)


def row_table(
    keys: Sequence[str],
    source: str | Sequence[str],
    images: Sequence[bytes],
    labels: Sequence[int | None] | None = None,
    errors: Sequence[str | None] | None = None,
) -> pa.Table:
    """One `ROW_SCHEMA` batch; `source` is one URI for all rows or one per row; `labels`/`errors`
    default to all null."""
    n = len(keys)
    return pa.Table.from_pydict(
        {
            "key": list(keys),
            "source": [source] * n if isinstance(source, str) else list(source),
            "image": list(images),
            "label": list(labels) if labels is not None else [None] * n,
            "error": list(errors) if errors is not None else [None] * n,
        },
        schema=ROW_SCHEMA,
    )


def read_record_range(
    fs: fsspec.AbstractFileSystem,
    path: str,
    *,
    header_bytes: int,
    record_bytes: int,
    start: int,
    stop: int,
    batch_rows: int,
) -> Iterator[tuple[int, bytes]]:
    """Records `start..stop` of a file of fixed-size records, as `(first_index, bytes)` chunks.

    A plain file is read with one range request per chunk, so a shard never fetches more than its
    own rows. A `.gz` file cannot seek: the stream is decompressed from the start and the rows
    before `start` are discarded (cheap for the published gz files, a few MB each). A chunk shorter
    than `(rows * record_bytes)` means the file ends early (truncated); the caller reports it.
    """
    if path.endswith(".gz"):
        with fs.open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
            stream.seek(header_bytes + start * record_bytes)
            for first in range(start, stop, batch_rows):
                rows = min(batch_rows, stop - first)
                yield first, stream.read(rows * record_bytes)
        return
    for first in range(start, stop, batch_rows):
        rows = min(batch_rows, stop - first)
        offset = header_bytes + first * record_bytes
        yield first, fs.cat_file(path, start=offset, end=offset + rows * record_bytes)


def read_head(fs: fsspec.AbstractFileSystem, path: str, num_bytes: int) -> bytes:
    """The first `num_bytes` of a file (decompressed if it ends in `.gz`)."""
    if path.endswith(".gz"):
        with fs.open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as stream:
            return stream.read(num_bytes)
    return fs.cat_file(path, start=0, end=num_bytes)


def row_ranges(num_rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """`[start, stop)` ranges of at most `shard_rows` rows covering `num_rows` rows."""
    return [(start, min(start + shard_rows, num_rows)) for start in range(0, num_rows, shard_rows)]


class RowRangeSource(Source):
    """A source whose shards are row ranges of big files (MNIST idx, STL-10 binaries)."""

    shard_rows = 10_000
    """Images per shard; subclasses set their own default, tests and users may pass another."""

    def __init__(
        self, uri: str, *, storage_options: dict[str, Any] | None = None, shard_rows: int | None = None
    ) -> None:
        super().__init__(uri, storage_options=storage_options)
        if shard_rows is not None:
            self.shard_rows = shard_rows

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """Each shard's row range (the file headers gave the row counts when the shards were listed)."""
        return range_rows(shards)
