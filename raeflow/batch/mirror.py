"""Denoise's writers: put each denoised image where the input had it, in the input's layout.

- folder: one file per image, the same relative name (and extension, unless --format changes it),
  written by the predictor actor as soon as the image is denoised;
- WebDataset: one `.tar` per input `.tar`, same name, same member order and keys, every other
  member of a sample (`.cls`, `.json`, ...) copied over unchanged;
- Parquet: one `.parquet` per input file, same name, same rows, columns and keys, the image column
  holding the denoised bytes (as plain binary, also where the input had an image struct);
- any other source (MNIST, builtin:, ...): a folder of `<key>.png` (or the chosen format).

A tar or Parquet file needs all of its shard's images, which different actors denoise: each actor
writes its piece (`_pieces/SSSSS-RRRRRR.parquet`: row position, bytes, format) and, once the
shard is complete, a Ray task on a worker builds the output file from the input and the pieces
(`finish_shard`), then deletes them. Images are matched by their position in the shard, not by
key, so a repeated key never receives another image's result.

Mirrors keep every input row: in a tar or Parquet output, a sample or row whose image was
rejected (undecodable, a repeated key, a null image cell) is carried over unchanged, and listed
in `_rejected/`. A folder mirror writes no file for a rejected image (there is nothing else in
that row to keep); it too is listed in `_rejected/`.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow.batch.output import OutputDir, UnsafeKey, safe_relpath
from raeflow.batch.worker import PartWriter, parquet_bytes, piece_stem
from raeflow.data.sources.base import Shard, Source
from raeflow.data.sources.parquet import IMAGE_COLUMNS
from raeflow.data.sources.webdataset import MEMBER_NAME as WDS_MEMBER

EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp", "tiff": ".tif"}
"""File extension written for each output format when the input's own cannot be kept."""
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
"""Member extensions a WebDataset sample's image can have (the first present is the image)."""
PIECES_DIR = "_pieces"
"""Where the actors put the denoised images of a tar or Parquet shard until the shard is built."""


def _rejected(rows: pa.Table, keep: list[bool], reasons: list[str | None]) -> pa.Table | None:
    bad = [i for i, ok in enumerate(keep) if not ok]
    if not bad:
        return None
    picked = rows.take(bad).select(["key", "source"])
    return picked.append_column("reason", pa.array([reasons[i] for i in bad], pa.string()))


class FolderMirror(PartWriter):
    """One file per image, written by the actor that denoised it (the same name on a retry)."""

    def __init__(self, *, keep_names: bool) -> None:
        self.keep_names = keep_names
        """True: name files after the input file (folder source); False: `<key>.<ext>`."""

    def write_part(
        self, out: OutputDir, shard: int, first_row: int, rows: pa.Table
    ) -> tuple[list[str], int, pa.Table | None]:
        keys, sources = rows.column("key").to_pylist(), rows.column("source").to_pylist()
        formats, datas = rows.column("out_format").to_pylist(), rows.column("data").to_pylist()
        keep = [True] * rows.num_rows
        reasons: list[str | None] = [None] * rows.num_rows
        num_bytes = 0
        for i, (key, source, fmt, data) in enumerate(zip(keys, sources, formats, datas, strict=True)):
            try:
                out.put(self.relpath(key, source, fmt), data)
                num_bytes += len(data)
            except UnsafeKey as err:
                keep[i], reasons[i] = False, str(err)
        return [], num_bytes, _rejected(rows, keep, reasons)

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


class _ContainerMirror(PartWriter):
    """A mirror whose output is one file per input shard, built from the actors' pieces."""

    finishes_shards = True

    def __init__(self, source: Source) -> None:
        self.storage_options = source.storage_options

    def part_prefixes(self) -> list[tuple[str, str]]:
        return [(PIECES_DIR, "")]

    def write_part(
        self, out: OutputDir, shard: int, first_row: int, rows: pa.Table
    ) -> tuple[list[str], int, pa.Table | None]:
        rows, refused = self.refuse(rows)
        piece = pa.table(
            {
                "row": rows.column("row"),
                "data": rows.column("data").cast(pa.large_binary()),
                "out_format": rows.column("out_format"),
            }
        )
        data = parquet_bytes(piece)
        name = f"{PIECES_DIR}/{piece_stem(shard, first_row)}.parquet"
        out.put(name, data)
        return [name], len(data), refused

    def refuse(self, rows: pa.Table) -> tuple[pa.Table, pa.Table | None]:
        """Rows this mirror cannot place (kept in the output unchanged, listed as rejected)."""
        keys = rows.column("key").to_pylist()
        keep = [True] * rows.num_rows
        reasons: list[str | None] = [None] * rows.num_rows
        for i, key in enumerate(keys):
            try:
                safe_relpath(key)
            except UnsafeKey as err:
                keep[i], reasons[i] = False, str(err)
        refused = _rejected(rows, keep, reasons)
        return (rows.filter(pa.array(keep)) if refused is not None else rows), refused

    def finish_shard(self, out: OutputDir, shard: Shard, parts: list[str]) -> list[str]:
        images: dict[int, tuple[bytes, str]] = {}
        for name in parts:
            if name.startswith(PIECES_DIR + "/"):
                piece = pq.read_table(io.BytesIO(out.read(name)))
                rows = piece.column("row").to_pylist()
                datas, formats = piece.column("data").to_pylist(), piece.column("out_format").to_pylist()
                images.update(zip(rows, zip(datas, formats, strict=True), strict=True))
        name = shard_relpath(shard)
        self.build(out, shard, name, images)
        for part in parts:
            if part.startswith(PIECES_DIR + "/"):
                out.remove(part)
        return [name] + [part for part in parts if not part.startswith(PIECES_DIR + "/")]

    def build(self, out: OutputDir, shard: Shard, name: str, images: dict[int, tuple[bytes, str]]) -> None:
        """Write the shard's output file `name`: the input with the images at those row positions replaced."""
        raise NotImplementedError

    def end_job(self, out: OutputDir, summary: object) -> list[str]:
        if not out.list(PIECES_DIR):
            out.remove_tree(PIECES_DIR)
        return []


class WebDatasetMirror(_ContainerMirror):
    """Rewrites each input `.tar` with the denoised images in place of the originals."""

    def build(self, out: OutputDir, shard: Shard, name: str, images: dict[int, tuple[bytes, str]]) -> None:
        with fsspec.open(shard.paths[0], "rb", **self.storage_options) as raw:
            with tarfile.open(fileobj=raw, mode="r|*") as reader, out.open_atomic(name) as handle:
                with tarfile.open(fileobj=handle, mode="w|") as writer:
                    sample, key = -1, None
                    for member, data in _readable_members(reader):
                        match = WDS_MEMBER.match(member.name)
                        if match is None:
                            continue  # the source skips it too: not part of any sample
                        if match.group(1) != key:  # the source's rule: a new key starts a sample
                            sample, key = sample + 1, match.group(1)
                        self._copy_member(writer, member, data, match.group(2), images.get(sample))

    @staticmethod
    def _copy_member(
        writer: tarfile.TarFile,
        member: tarfile.TarInfo,
        data: bytes,
        ext: str,
        denoised: tuple[bytes, str] | None,
    ) -> None:
        """Copy one member; the image member of a denoised sample gets the denoised bytes (and format)."""
        stem = member.name[: len(member.name) - len(ext) - 1]
        if denoised is not None and ext.lower() in WDS_IMAGE_EXTENSIONS:
            data, fmt = denoised
            if _format_of_extension("." + ext) != fmt:
                ext = EXTENSIONS[fmt].lstrip(".")
        info = tarfile.TarInfo(f"{stem}.{ext}")
        info.size, info.mtime, info.mode = len(data), member.mtime, member.mode
        writer.addfile(info, io.BytesIO(data))


def _readable_members(reader: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    """The input tar's file members and their bytes, up to where it breaks: a truncated input's
    broken end was rejected when it was read. Only reading errors end it early; an error writing
    the output (a full disk) is raised where the output is written, so no tar is left short."""
    try:
        for member in reader:
            if member.isfile():
                yield member, reader.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError):
        return


class ParquetMirror(_ContainerMirror):
    """Rewrites each input Parquet file with the denoised bytes in its image column."""

    def __init__(self, source: Source, image_column: str | None = None) -> None:
        super().__init__(source)
        self.image_column = image_column
        """The image column (default: the first of the source's usual names in each file)."""

    def build(self, out: OutputDir, shard: Shard, name: str, images: dict[int, tuple[bytes, str]]) -> None:
        with fsspec.open(shard.paths[0], "rb", **self.storage_options) as raw:
            table = pq.read_table(raw)
        names = table.schema.names
        column = self.image_column or next(c for c in IMAGE_COLUMNS if c in names)
        original = table.column(column)
        if pa.types.is_struct(original.type):  # img2dataset-style {bytes, path}
            original = pc.struct_field(original, "bytes")
        kept = pc.cast(original, pa.binary()).to_pylist()
        merged = [images[i][0] if i in images else kept[i] for i in range(table.num_rows)]
        table = table.set_column(
            names.index(column), pa.field(column, pa.binary()), pa.array(merged, pa.binary())
        )
        out.put(name, parquet_bytes(table))
