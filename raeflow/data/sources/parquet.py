"""Parquet files with an image-bytes column; img2dataset's output reads as is.

The image column is `--image-column`, else the first of `IMAGE_COLUMNS` present. Binary columns
and Hugging Face's image struct (`{bytes, path}`) both work. Optional columns: `key` (any type,
read as a string; else the key is `<file stem>/<row index>`) and `label` (integers only; other
types are ignored). A null image is a rejected row; img2dataset's `status`/`error_message` say why.
One shard per file, read in row batches without loading the whole file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source
from raeflow.data.sources.location import (
    filesystem,
    list_files,
    one_shard_per_file,
    require_exists,
    to_uri,
)
from raeflow.errors import SourceError

IMAGE_COLUMNS = ("image", "jpg", "png", "jpeg", "webp")
"""Columns tried, in order, when no image column is named."""
SUFFIXES = (".parquet",)
FOOTER_READS = 16
"""Footers read at once by `count_rows` (each is one or two small reads; on a bucket, a round trip)."""


class ParquetSource(Source):
    """Parquet files under a folder, matching a glob, or one file."""

    kind = "parquet"

    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, Any] | None = None,
        image_column: str | None = None,
    ) -> None:
        super().__init__(uri, storage_options=storage_options)
        self.image_column = image_column

    @classmethod
    def sniff(cls, fs: Any, path: str) -> bool:
        """A `.parquet` file, or a folder with `.parquet` files at its top."""
        if path.lower().endswith(SUFFIXES):
            return True
        return fs.isdir(path) and any(p.lower().endswith(SUFFIXES) for p in fs.ls(path, detail=False))

    @cached_property
    def has_labels(self) -> bool:  # type: ignore[override]
        """Whether the first file has an integer `label` column."""
        fs, _ = filesystem(self.uri, self.storage_options)
        first = self.list_shards()[0].paths[0]
        with fs.open(fs._strip_protocol(first), "rb") as f:
            schema = pq.read_schema(f)
        return "label" in schema.names and pa.types.is_integer(schema.field("label").type)

    def list_shards(self) -> list[Shard]:
        """One shard per `.parquet` file, sorted by path; checks the first file has an image column."""
        fs, path = filesystem(self.uri, self.storage_options)
        require_exists(fs, path, self.uri, ".parquet files with an image column")
        files = list_files(fs, path, SUFFIXES)
        if not files:
            raise SourceError(f"no .parquet files under {self.uri}")
        with fs.open(files[0], "rb") as f:
            self._image_field(pq.read_schema(f), to_uri(fs, files[0]))
        return one_shard_per_file(fs, path, files)

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """Each file's row count from its footer (None for a file whose footer cannot be read)."""
        fs, _ = filesystem(self.uri, self.storage_options)

        def rows(shard: Shard) -> int | None:
            try:
                with fs.open(fs._strip_protocol(shard.paths[0]), "rb") as f:
                    return int(pq.read_metadata(f).num_rows)
            except (OSError, pa.ArrowException):
                return None

        with ThreadPoolExecutor(FOOTER_READS) as pool:
            return list(pool.map(rows, shards))

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        """The file's rows in batches of `batch_rows`."""
        fs, _ = filesystem(self.uri, self.storage_options)
        uri = shard.paths[0]
        stem = posixpath.basename(uri).rsplit(".", 1)[0]
        with fs.open(fs._strip_protocol(uri), "rb") as f:
            parquet = pq.ParquetFile(f)
            schema = parquet.schema_arrow
            image_column = self._image_field(schema, uri)
            has_key = "key" in schema.names
            has_label = "label" in schema.names and pa.types.is_integer(schema.field("label").type)
            extra = [c for c in ("status", "error_message") if c in schema.names]
            columns = [image_column] + ["key"] * has_key + ["label"] * has_label + extra
            row = 0
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                yield _rows(batch, image_column, has_key, has_label, uri, stem, row)
                row += batch.num_rows

    def _image_field(self, schema: pa.Schema, uri: str) -> str:
        """The name of the image column of a file, or `SourceError` naming the columns there are."""
        names = schema.names
        if self.image_column is not None:
            if self.image_column not in names:
                raise SourceError(
                    f"{uri} has no column {self.image_column!r} (--image-column); columns: {', '.join(names)}"
                )
            return self.image_column
        for name in IMAGE_COLUMNS:
            if name in names:
                return name
        raise SourceError(
            f"{uri} has none of the image columns {', '.join(IMAGE_COLUMNS)}; "
            f"name one with --image-column (columns: {', '.join(names)})"
        )


def _rows(
    batch: pa.RecordBatch, image_column: str, has_key: bool, has_label: bool, uri: str, stem: str, first: int
) -> pa.Table:
    """One batch of a file as `ROW_SCHEMA` rows; image bytes stay in Arrow (no per-row copies)."""
    count = batch.num_rows
    images = batch.column(image_column)
    if pa.types.is_struct(images.type):  # Hugging Face `Image` feature: {bytes, path}
        images = images.field("bytes")
    images = pc.cast(images, pa.binary())
    missing = pc.fill_null(pc.equal(pc.binary_length(images), 0), True).to_numpy(zero_copy_only=False)
    errors: list[str | None] = [None] * count
    if missing.any():
        names = batch.schema.names
        statuses = batch.column("status").to_pylist() if "status" in names else [None] * count
        messages = batch.column("error_message").to_pylist() if "error_message" in names else [None] * count
        for i in missing.nonzero()[0]:
            why = "; ".join(str(s) for s in (statuses[i], messages[i]) if s)
            errors[i] = f"empty: no bytes in column {image_column!r}" + (f" ({why})" if why else "")
        images = pc.fill_null(images, b"")
    if has_key and batch.column("key").null_count == 0:
        keys: pa.Array | list[str] = pc.cast(batch.column("key"), pa.string())
    else:
        given = pc.cast(batch.column("key"), pa.string()).to_pylist() if has_key else [None] * count
        keys = [k if k is not None else f"{stem}/{first + i}" for i, k in enumerate(given)]
    labels = pc.cast(batch.column("label"), pa.int64()) if has_label else pa.nulls(count, pa.int64())
    return pa.table(
        {
            "key": keys,
            "source": pa.repeat(pa.scalar(uri), count),
            "image": images,
            "label": labels,
            "error": errors,
        },
        schema=ROW_SCHEMA,
    )
