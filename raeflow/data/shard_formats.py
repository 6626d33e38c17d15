"""The two shard files `raeflow shard` writes: a Parquet table or a WebDataset tar, byte-reproducible.

Both writers stream: rows go out as they come (Parquet in row groups of `ROW_GROUP_ROWS`), so a shard
is never held in memory whole. Nothing that changes between runs goes into a file (no clock, no
user names, no random ids), so the same rows give the same bytes; each writer reports its shard's
sha256 and size.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from raeflow import __version__

SHARD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.int64(), nullable=True),
        pa.field("format", pa.string(), nullable=False),
    ]
)
"""Columns of a Parquet shard: `format` is the image's file extension (`png`, `jpg`, `webp`)."""
ROW_GROUP_ROWS = 1_000
ROW_GROUP_BYTES = 64 << 20


class _HashingFile(io.RawIOBase):
    """A write-only file that forwards to `target` and keeps the sha256 and size of what passed."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target, self.sha256, self.size = target, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.target.write(view)
        self.sha256.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:  # the caller closes `target`
        super().close()


class ShardFile:
    """One output shard being written to `stream` (which it closes): `add` rows, then `close`."""

    extension = ""

    def __init__(self, stream: IO[bytes], *, source: str) -> None:
        self.file = _HashingFile(stream)
        self.source = source
        self.num_rows = 0

    def add(self, key: str, image: bytes, fmt: str, label: int | None) -> None:
        """Append one image (already encoded as `fmt`) under `key`."""
        raise NotImplementedError

    def close(self) -> tuple[int, int, str]:
        """Finish and close the file; returns (rows, bytes, sha256 hex)."""
        self.file.target.close()
        return self.num_rows, self.file.size, self.file.sha256.hexdigest()


class ParquetShardFile(ShardFile):
    """A Parquet shard with `SHARD_SCHEMA`; file metadata names the source and raeflow's version."""

    extension = "parquet"

    def __init__(self, stream: IO[bytes], *, source: str) -> None:
        super().__init__(stream, source=source)
        schema = SHARD_SCHEMA.with_metadata({"raeflow.source": source, "raeflow.version": __version__})
        self.writer = pq.ParquetWriter(
            self.file,
            schema,
            compression={"key": "zstd", "image": "none", "label": "zstd", "format": "zstd"},
            write_statistics=["key", "label"],  # min/max of image bytes would bloat the footer
        )
        self.pending: dict[str, list[Any]] = {name: [] for name in SHARD_SCHEMA.names}
        self.pending_bytes = 0

    def add(self, key: str, image: bytes, fmt: str, label: int | None) -> None:
        for name, value in zip(SHARD_SCHEMA.names, (key, image, label, fmt), strict=True):
            self.pending[name].append(value)
        self.num_rows += 1
        self.pending_bytes += len(image)
        if len(self.pending["key"]) >= ROW_GROUP_ROWS or self.pending_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self.pending["key"]:
            self.writer.write_table(pa.Table.from_pydict(self.pending, schema=self.writer.schema))
        self.pending = {name: [] for name in SHARD_SCHEMA.names}
        self.pending_bytes = 0

    def close(self) -> tuple[int, int, str]:
        self._flush()
        self.writer.close()
        return super().close()


class TarShardFile(ShardFile):
    """A WebDataset tar: `<key>.<fmt>` then `<key>.cls` (the label in decimal) per image."""

    extension = "tar"

    def __init__(self, stream: IO[bytes], *, source: str) -> None:
        super().__init__(stream, source=source)
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, image: bytes, fmt: str, label: int | None) -> None:
        self._member(f"{key}.{fmt}", image)
        if label is not None:
            self._member(f"{key}.cls", str(label).encode())
        self.num_rows += 1

    def close(self) -> tuple[int, int, str]:
        self.tar.close()
        return super().close()


SHARD_FILES: dict[str, type[ShardFile]] = {"parquet": ParquetShardFile, "webdataset": TarShardFile}
"""`--format` -> writer."""
