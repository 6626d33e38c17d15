"""The output folder of `raeflow index` and `raeflow dedup`, local or in a bucket (fsspec).

Files are written whole: small ones in one put, Parquet files streamed to a temporary name and
moved into place, so a reader never sees half a file under its final name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raeflow.data.sources.location import filesystem

REJECTED_FILE = "_rejected/rejected.parquet"
REJECTED_SCHEMA = pa.schema(
    [pa.field("key", pa.string()), pa.field("source", pa.string()), pa.field("reason", pa.string())]
)


class Folder:
    """One output folder: `put`/`get` bytes or JSON, stream Parquet, by name relative to it."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(uri)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def uri_of(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def put(self, name: str, data: bytes) -> None:
        target = self.path(name)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(target + ".tmp", "wb") as handle:
            handle.write(data)
        self.fs.mv(target + ".tmp", target)

    def get(self, name: str) -> bytes:
        with self.fs.open(self.path(name), "rb") as handle:
            return handle.read()

    def put_json(self, name: str, value: Any) -> None:
        self.put(name, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())

    def get_json(self, name: str) -> Any:
        return json.loads(self.get(name))

    def write_table(self, name: str, table: pa.Table) -> None:
        with self.parquet_writer(name, table.schema) as writer:
            writer.write_table(table)

    @contextmanager
    def parquet_writer(self, name: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """A Parquet writer to `name`, in place only once the block ends without an error."""
        target = self.path(name)
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with self.fs.open(target + ".tmp", "wb") as handle:
            writer = pq.ParquetWriter(handle, schema)
            try:
                yield writer
            finally:
                writer.close()
        self.fs.mv(target + ".tmp", target)

    def read_table(self, name: str) -> pa.Table:
        with self.fs.open(self.path(name), "rb") as handle:
            return pq.read_table(handle)


def write_rejected(folder: Folder, rejected: list[tuple[str, str, str]], *, keep_old: bool = False) -> None:
    """List the rows left out (key, source, reason) in `_rejected/rejected.parquet` (none: no file)."""
    rows = pa.table(
        {name: [row[i] for row in rejected] for i, name in enumerate(REJECTED_SCHEMA.names)},
        schema=REJECTED_SCHEMA,
    )
    if keep_old and folder.exists(REJECTED_FILE):  # --append: the rows listed before, each once
        old = folder.read_table(REJECTED_FILE).cast(REJECTED_SCHEMA)
        listed = set(zip(*(old.column(name).to_pylist() for name in REJECTED_SCHEMA.names), strict=True))
        rows = pa.concat_tables([old, rows.take([i for i, row in enumerate(rejected) if row not in listed])])
    if len(rows):
        folder.write_table(REJECTED_FILE, rows)
    elif folder.exists(REJECTED_FILE):  # an earlier run's list, not this one's
        folder.fs.rm(folder.path(REJECTED_FILE))


def rejected_line(rejected: list[tuple[str, str, str]], folder: Folder) -> str | None:
    """`rejected: 3 (nan_vector 2, zero_vector 1), listed in .../_rejected/rejected.parquet`, or None."""
    if not rejected:
        return None
    counts: dict[str, int] = {}
    for _key, _source, reason in rejected:
        counts[reason] = counts.get(reason, 0) + 1
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items()))
    return f"rejected: {len(rejected):,} ({reasons}), listed in {folder.uri_of(REJECTED_FILE)}"
