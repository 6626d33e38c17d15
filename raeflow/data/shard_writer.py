"""`raeflow shard`: pack any image source into numbered Parquet or WebDataset shards.

    raeflow shard ./photos --out s3://bucket/photos-wds --format webdataset --shard-size 5000

Output, under `--out` and nowhere else:
- `shard-00000.parquet` (columns key, image, label, format) or `shard-00000.tar` (`<key>.<ext>` and
  `<key>.cls`), `shard_size` images each, numbered in source order;
- `_rejected/part-00000.parquet`: key, source, reason of every image left out;
- `_index.json`, written last: shard names, rows, bytes and sha256, the source, the totals.

Images already in JPEG, PNG or WebP are checked (decoded once) and copied byte for byte; raw pixels
(MNIST, CIFAR, STL-10, builtin) and other formats (BMP, TIFF, GIF) are written as PNG, so any tool
reads the shards. The same source and options give byte-identical shards.

With `image_size` (`--image-size 64x64`) the shards are a training cache: every image is decoded
once here, fitted to that size exactly as training fits it (`decode_fitted`, resize, upright, its
own channels) and stored as PNG (lossless), so an epoch over the cache decodes a 64x64 PNG instead
of a full-size JPEG and sees the same pixels.

Why no Ray here: the output is a single ordered stream (shard `i` holds rows `i*N .. i*N+N-1` of the
source), which one writer produces trivially and deterministically, and the work is I/O plus a light
check per image. A few threads read the next input shards ahead (`read_ahead`) so reading overlaps
writing; memory stays bounded by a few batches per thread. Cluster-scale repacking can run this
command on the head node: it reads and writes through fsspec straight from and to the bucket.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from raeflow import __version__
from raeflow.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageRejected,
    decode_fitted,
    decode_image,
    encode_image,
    probe_image,
)
from raeflow.data.shard_formats import SHARD_FILES, ShardFile
from raeflow.data.shard_reading import ordered_batches
from raeflow.data.sources import Source, open_source
from raeflow.data.sources.location import filesystem, to_uri
from raeflow.data.sources.retries import StoreRetries, store_retries
from raeflow.errors import ConfigError

COPIED_FORMATS = {"jpeg": "jpg", "png": "png", "webp": "webp"}
"""Formats written as they are (format -> file extension); everything else becomes PNG."""
REJECTED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)
INDEX_NAME = "_index.json"
REJECTED_NAME = "_rejected/part-00000.parquet"
_SHARD_NAME = re.compile(r"^shard-\d{5}\.(parquet|tar)$")


@dataclass(frozen=True)
class ShardSettings:
    """What `raeflow shard` packs, where, and how."""

    source: str
    """Input URI: a folder, Parquet, WebDataset, mnist/cifar10/stl10/coco layout or builtin:NAME."""
    out: str
    """Output folder URI (local or bucket); shards, `_index.json` and `_rejected/` go there."""
    format: str = "parquet"
    """Shard format: `parquet` (key, image, label, format columns) or `webdataset` (.tar)."""
    shard_size: int = 10_000
    """Images per output shard (the last one holds the rest)."""
    source_format: str | None = None
    """Force the input kind instead of detecting it (folder, parquet, webdataset, mnist, ...)."""
    image_column: str | None = None
    """Image-bytes column of a Parquet input (default: image, jpg or png)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Images larger than this (height x width) are rejected."""
    read_ahead: int = 4
    """Input shards read concurrently ahead of the writer (threads)."""
    image_size: tuple[int, int] | None = None
    """Store every image resized to H x W as PNG: a training cache decoded once, not every epoch."""

    def __post_init__(self) -> None:
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 2):
            raise ConfigError(f"--image-size must be at least 2x2, not {self.image_size!r}")
        if self.format not in SHARD_FILES:
            raise ConfigError(f"--format must be one of {', '.join(SHARD_FILES)}, not {self.format!r}")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be at least 1, not {self.shard_size}")
        if self.read_ahead < 1:
            raise ConfigError(f"read_ahead must be at least 1, not {self.read_ahead}")


@dataclass
class ShardReport:
    """What a `raeflow shard` run wrote."""

    out: str
    format: str
    source_kind: str
    num_rows: int = 0
    """Images written."""
    num_rejected: int = 0
    shards: list[dict] = field(default_factory=list)
    """name, rows, bytes, sha256 of each shard, in order."""
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    """Rejected images per reason slug."""
    seconds: float = 0.0
    store_retries: StoreRetries = field(default_factory=StoreRetries)
    """Store requests retried while packing (botocore's and s3fs's; the reads ahead included)."""


@dataclass(frozen=True)
class _Row:
    key: str
    source: str
    image: bytes
    fmt: str
    label: int | None
    reason: str | None


def key_problem(key: str, *, webdataset: bool) -> str | None:
    """Why `key` cannot name a member under the output folder, or None when it is fine."""
    if not key:
        return "unsafe_key: empty key"
    if key.startswith("/") or "\\" in key or "\x00" in key or re.match(r"^[A-Za-z]:", key):
        return f"unsafe_key: {key!r} is absolute or has a backslash/NUL"
    if any(part in ("", ".", "..") for part in key.split("/")):
        return f"unsafe_key: {key!r} has an empty, '.' or '..' path component"
    if webdataset and "." in key.rsplit("/", 1)[-1]:
        return f"key_has_dot: WebDataset splits {key!r} at its first dot; use --format parquet"
    return None


def prepare_image(
    data: bytes, *, max_pixels: int, image_size: tuple[int, int] | None = None
) -> tuple[bytes, str]:
    """The bytes and extension to store for one encoded image (fitted to `image_size` when given);
    raises `ImageRejected`."""
    if image_size is not None:
        fitted = decode_fitted(
            data, None, *image_size, max_pixels=max_pixels
        )  # (H, W, C) as training sees it
        return encode_image(fitted, "png"), "png"
    header = probe_image(data)
    pixels = decode_image(data, max_pixels=max_pixels)  # every stored image is known to decode
    if header.format in COPIED_FORMATS:
        return data, COPIED_FORMATS[header.format]
    return encode_image(pixels, "png"), "png"


def _prepare(batch: pa.Table, settings: ShardSettings) -> list[_Row]:
    """Check and convert one source batch; a bad row becomes a row with a `reason`."""
    rows = []
    webdataset = settings.format == "webdataset"
    for key, source, image, label, error in zip(
        *(batch.column(name).to_pylist() for name in ("key", "source", "image", "label", "error")),
        strict=True,
    ):
        reason = error or key_problem(key, webdataset=webdataset)
        data, fmt = b"", ""
        if reason is None:
            try:
                data, fmt = prepare_image(
                    image, max_pixels=settings.max_pixels, image_size=settings.image_size
                )
            except ImageRejected as err:
                reason = str(err)
        rows.append(_Row(key, source, data, fmt, label, reason))
    return rows


def _slug(reason: str) -> str:
    return reason.split(":", 1)[0].strip() or "error"


def pack_source(settings: ShardSettings, *, progress: Callable[[str], None] | None = None) -> ShardReport:
    """Pack the source into shards under `settings.out`; returns what was written."""
    started = time.perf_counter()
    retries_before = store_retries()
    source = open_source(settings.source, settings.source_format, image_column=settings.image_column)
    fs, out = filesystem(settings.out)
    _refuse_out_inside_source(source, settings.out)
    report = ShardReport(out=to_uri(fs, out), format=settings.format, source_kind=source.kind)
    writer_cls = SHARD_FILES[settings.format]
    shards = source.list_shards()
    fs.makedirs(out, exist_ok=True)

    seen: set[str] = set()
    rejected: dict[str, list[str]] = {name: [] for name in REJECTED_SCHEMA.names}
    reasons: Counter[str] = Counter()
    writer: ShardFile | None = None
    shard_name = ""
    for rows in ordered_batches(source, shards, lambda b: _prepare(b, settings), settings.read_ahead):
        for row in rows:
            reason = row.reason
            if reason is None and row.key in seen:
                reason = f"duplicate_key: {row.key!r} appeared earlier in the source"
            if reason is not None:
                rejected["key"].append(row.key)
                rejected["source"].append(row.source)
                rejected["reason"].append(reason)
                reasons[_slug(reason)] += 1
                continue
            seen.add(row.key)
            if writer is None:
                shard_name = f"shard-{len(report.shards):05d}.{writer_cls.extension}"
                writer = writer_cls(fs.open(f"{out}/{shard_name}", "wb"), source=settings.source)
            writer.add(row.key, row.image, row.fmt, row.label)
            if writer.num_rows == settings.shard_size:
                _finish(report, writer, shard_name, progress)
                writer = None
    if writer is not None:
        _finish(report, writer, shard_name, progress)

    fs.makedirs(f"{out}/{REJECTED_NAME.rsplit('/', 1)[0]}", exist_ok=True)
    with fs.open(f"{out}/{REJECTED_NAME}", "wb") as f:
        pq.write_table(pa.Table.from_pydict(rejected, schema=REJECTED_SCHEMA), f)
    _remove_stale_shards(fs, out, {s["name"] for s in report.shards})
    report.num_rejected = sum(reasons.values())
    report.rejected_reasons = dict(sorted(reasons.items()))
    _write_index(fs, out, settings, report)
    report.seconds = time.perf_counter() - started
    report.store_retries = store_retries() - retries_before
    return report


def _finish(
    report: ShardReport, writer: ShardFile, name: str, progress: Callable[[str], None] | None
) -> None:
    rows, size, sha256 = writer.close()
    report.shards.append({"name": name, "rows": rows, "bytes": size, "sha256": sha256})
    report.num_rows += rows
    if progress is not None:
        progress(f"{name}: {rows} images, {size / 1e6:.1f} MB")


def _write_index(fs, out: str, settings: ShardSettings, report: ShardReport) -> None:
    """`_index.json`: no timestamps or timings, so a rerun writes the same bytes."""
    index = {
        "format": settings.format,
        "source": settings.source,
        "source_kind": report.source_kind,
        "shard_size": settings.shard_size,
        "num_rows": report.num_rows,
        "num_rejected": report.num_rejected,
        "rejected_reasons": report.rejected_reasons,
        "rejected": REJECTED_NAME,
        "shards": report.shards,
        # Only what shapes the output: `read_ahead` changes speed, not bytes.
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("source", "out", "read_ahead")},
        "raeflow_version": __version__,
    }
    with fs.open(f"{out}/{INDEX_NAME}", "wb") as f:
        f.write((json.dumps(index, indent=2) + "\n").encode())


def _remove_stale_shards(fs, out: str, written: set[str]) -> None:
    """Delete shard files a previous run with other options left behind (only our own names)."""
    for path in fs.ls(out, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if _SHARD_NAME.match(name) and name not in written:
            fs.rm(path)


def _refuse_out_inside_source(source: Source, out_uri: str) -> None:
    if source.uri.startswith("builtin:"):
        return
    src_fs, src_path = filesystem(source.uri)
    out_fs, out_path = filesystem(out_uri)
    if type(src_fs) is type(out_fs) and (
        out_path == src_path or out_path.startswith(src_path.rstrip("/") + "/")
    ):
        raise ConfigError(f"--out {out_uri} is inside the source {source.uri}; write the shards elsewhere")


def iter_report_lines(report: ShardReport) -> Iterator[str]:
    """The one-screen summary the CLI prints."""
    rate = report.num_rows / report.seconds if report.seconds > 0 else 0.0
    yield (
        f"packed {report.num_rows:,} images from a {report.source_kind} source into {len(report.shards)} "
        f"{report.format} shard{'' if len(report.shards) == 1 else 's'} in {report.seconds:.1f}s "
        f"({rate:,.0f} images/s)"
    )
    yield f"output: {report.out}  (index: {report.out.rstrip('/')}/{INDEX_NAME})"
    if report.num_rejected:
        by_reason = ", ".join(f"{slug} {count}" for slug, count in report.rejected_reasons.items())
        yield f"rejected: {report.num_rejected:,} ({by_reason}); listed in {REJECTED_NAME}"
    else:
        yield "rejected: none"
    retried = report.store_retries.line()
    if retried:  # a flaky store the packing got through: how flaky
        yield f"store: {retried}"
