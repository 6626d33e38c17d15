"""Denoise's shard writers: put each denoised image where the input had it, in the input's layout.

- folder: one file per image, the same relative name (and extension, unless --format changes it);
- WebDataset: one `.tar` per input `.tar`, same name, same member order and keys, every other
  member of a sample (`.cls`, `.json`, ...) copied over unchanged;
- Parquet: one `.parquet` per input file, same name, same columns and keys, the image column
  holding the denoised bytes (as plain binary, also where the input had an image struct);
- any other source (MNIST, builtin:, ...): a folder of `<key>.png` (or the chosen format).

Rejected images are left out of the output (they are listed in `_rejected/`); a sample of a tar
or a row of a Parquet file whose image was rejected is left out whole.
"""

from __future__ import annotations

import io
import posixpath
import re
import tarfile

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow.batch.output import UnsafeKey, safe_relpath
from raeflow.batch.runner import ShardWriter
from raeflow.data.sources.base import Shard, Source
from raeflow.data.sources.parquet import IMAGE_COLUMNS

EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif"}
"""File extension written for each output format when the input's own cannot be kept."""
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Member extensions a WebDataset sample's image can have (the first present is the image)."""
_WDS_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
"""WebDataset's member-name rule: key = path up to the first dot of the file name, then extension."""


def _rejected(rows: pa.Table, keep: list[bool], reasons: list[str | None]) -> pa.Table | None:
    bad = [i for i, ok in enumerate(keep) if not ok]
    if not bad:
        return None
    picked = rows.take(bad).select(["key", "source"])
    return picked.append_column("reason", pa.array([reasons[i] for i in bad], pa.string()))


class FolderMirror(ShardWriter):
    """One file per image, written as soon as it arrives (nothing is held on the driver)."""

    def __init__(self, *, keep_names: bool) -> None:
        self.keep_names = keep_names
        """True: name files after the input file (folder source); False: `<key>.<ext>`."""

    def begin_shard(self, shard: Shard) -> None:
        pass

    def add_rows(self, rows: pa.Table) -> pa.Table | None:
        keys, sources = rows.column("key").to_pylist(), rows.column("source").to_pylist()
        formats, datas = rows.column("out_format").to_pylist(), rows.column("data").to_pylist()
        keep = [True] * rows.num_rows
        reasons: list[str | None] = [None] * rows.num_rows
        for i, (key, source, fmt, data) in enumerate(zip(keys, sources, formats, datas, strict=True)):
            try:
                self.out.put(self.relpath(key, source, fmt), data)
            except UnsafeKey as err:
                keep[i], reasons[i] = False, str(err)
        return _rejected(rows, keep, reasons)

    def relpath(self, key: str, source: str, fmt: str) -> str:
        """Where the image of `key` (read from `source`) goes, in format `fmt`."""
        safe_relpath(key)
        if not self.keep_names:
            return safe_relpath(key + EXTENSIONS[fmt])
        ext = posixpath.splitext(source)[1]
        stem = key[: -len(ext)] if ext and key.endswith(ext) else key  # an ambiguous key keeps its extension
        if _format_of_extension(ext) != fmt:
            ext = (ext if stem != key else "") + EXTENSIONS[
                fmt
            ]  # a.jpg -> a.png; ambiguous a.jpg -> a.jpg.png
        return safe_relpath(stem + ext)

    def end_shard(self) -> tuple[str, ...]:
        return ()


def _format_of_extension(ext: str) -> str | None:
    return {
        ".jpg": "jpeg",
        ".jpeg": "jpeg",
        ".png": "png",
        ".webp": "webp",
        ".bmp": "bmp",
        ".tif": "tiff",
        ".tiff": "tiff",
    }.get(ext.lower())


def shard_relpath(shard: Shard) -> str:
    """The output name of a file-per-shard input (Parquet, WebDataset): its path under the source root."""
    basename = posixpath.basename(shard.paths[0])
    name = shard.name if shard.name.endswith(basename) else basename
    try:
        return safe_relpath(name)
    except UnsafeKey:
        return safe_relpath(basename)


class _BufferedMirror(ShardWriter):
    """Holds one shard's denoised images (key -> bytes, format) until the shard is complete."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.shard: Shard | None = None
        self.images: dict[str, tuple[bytes, str]] = {}

    def begin_shard(self, shard: Shard) -> None:
        self.shard, self.images = shard, {}

    def add_rows(self, rows: pa.Table) -> pa.Table | None:
        keys = rows.column("key").to_pylist()
        datas, formats = rows.column("data").to_pylist(), rows.column("out_format").to_pylist()
        keep = [True] * rows.num_rows
        reasons: list[str | None] = [None] * rows.num_rows
        for i, (key, data, fmt) in enumerate(zip(keys, datas, formats, strict=True)):
            try:
                safe_relpath(key)
            except UnsafeKey as err:
                keep[i], reasons[i] = False, str(err)
                continue
            self.images[key] = (data, fmt)
        return _rejected(rows, keep, reasons)


class WebDatasetMirror(_BufferedMirror):
    """Rewrites each input `.tar` with the denoised images in place of the originals."""

    def end_shard(self) -> tuple[str, ...]:
        assert self.shard is not None
        name = shard_relpath(self.shard)
        with fsspec.open(self.shard.paths[0], "rb", **self.source.storage_options) as raw:
            with tarfile.open(fileobj=raw, mode="r|*") as reader, self.out.open_atomic(name) as handle:
                with tarfile.open(fileobj=handle, mode="w|") as writer:
                    for member in reader:
                        self._copy_member(reader, writer, member)
        self.images = {}
        return (name,)

    def _copy_member(self, reader: tarfile.TarFile, writer: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if not member.isfile():
            return
        match = _WDS_NAME.match(member.name)
        if not match or match.group(1) not in self.images:
            return  # not part of a sample that was denoised (rejected image, stray file)
        key, ext = match.group(1), match.group(2)
        data = reader.extractfile(member).read()  # type: ignore[union-attr]
        if ext.lower() in WDS_IMAGE_EXTENSIONS:
            data, fmt = self.images[key]
            if _format_of_extension("." + ext) != fmt:
                ext = EXTENSIONS[fmt].lstrip(".")
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), member.mtime, member.mode
        writer.addfile(info, io.BytesIO(data))


class ParquetMirror(_BufferedMirror):
    """Rewrites each input Parquet file with the denoised bytes in its image column."""

    def __init__(self, source: Source, image_column: str | None = None) -> None:
        super().__init__(source)
        self.image_column = image_column
        """The image column (default: the first of the source's usual names in each file)."""

    def end_shard(self) -> tuple[str, ...]:
        assert self.shard is not None
        path = self.shard.paths[0]
        with fsspec.open(path, "rb", **self.source.storage_options) as raw:
            table = pq.read_table(raw)
        names = table.schema.names
        column = self.image_column or next(c for c in IMAGE_COLUMNS if c in names)
        # Keys exactly as the Parquet source makes them: the `key` column, else `<file stem>/<row>`.
        stem = posixpath.splitext(posixpath.basename(path))[0]
        given = (
            pc.cast(table.column("key"), pa.string()).to_pylist() if "key" in names else [None] * len(table)
        )
        keys = [k if k is not None else f"{stem}/{row}" for row, k in enumerate(given)]
        keep = [k in self.images for k in keys]
        table = table.filter(pa.array(keep, pa.bool_()))
        index = names.index(column)
        denoised = pa.array([self.images[k][0] for k, ok in zip(keys, keep, strict=True) if ok], pa.binary())
        table = table.set_column(index, pa.field(column, pa.binary()), denoised)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        name = shard_relpath(self.shard)
        self.out.put(name, buffer.getvalue())
        self.images = {}
        return (name,)
