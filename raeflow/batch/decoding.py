"""The decode step of a batch job: encoded image bytes -> raw pixels, inside Ray Data's read tasks.

`BatchSource` wraps a source so that each read task yields decoded rows (the columns of
`DECODED_SCHEMA`) numbered within their shard: `row` is the row's position in the shard and the
shard's last row carries `shard_rows`, the shard's row count. That is how the driver knows a shard
is complete without ordered delivery (see `raeflow.batch.ledger`). An image that cannot be used
keeps its row, with empty pixels and a `reason`, so it is counted and listed in `_rejected/`.

Pixels travel as raw `uint8` bytes in `(H, W, C)` order with their shape beside them: plain Arrow
that any image size fits into, and no Ray tensor extension type.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa

from raeflow.data import images
from raeflow.data.image_header import sniff_format
from raeflow.data.sources.base import Shard, Source

DECODED_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("label", pa.int64()),
        ("shard", pa.int64()),
        ("row", pa.int64()),
        ("shard_rows", pa.int64()),
        ("reason", pa.string()),
        ("pixels", pa.large_binary()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("channels", pa.int32()),
        ("bit_depth", pa.int32()),
        ("alpha", pa.large_binary()),
        ("format", pa.string()),
    ]
)
"""Rows after decoding: `row` is the row's position in its shard, `shard_rows` the shard's row count
on its last row (null elsewhere); `reason` is null for a usable image, else why it was rejected
(then `pixels` is empty). `bit_depth` is 8 (`uint8` pixels) or 16 (`uint16`, kept only with
`DecodeSpec.keep_mode`); `alpha` holds an image's alpha plane `(H, W)` of the same depth when it
had one and `keep_mode` is on (else it is empty and alpha was composited over white). `format` is
the encoded format sniffed from the input bytes (png, jpeg, webp, bmp, tiff, gif; raw for
raw-pixel sources)."""

WORKER_MEMORY_SHARE = 0.65
"""Share of a node's memory its workers' images and model passes may take together: Ray's memory
monitor kills a worker once the node uses 95 % of its memory (`RAY_memory_usage_threshold`), and
Ray sets aside up to 30 % for its object store."""

PASS_THROUGH = ("key", "source", "label", "shard", "row")
"""Columns every later step keeps as they are: each output row stays filed under its shard and position."""


@dataclass(frozen=True)
class DecodeSpec:
    """How the decode tasks turn bytes into pixels for one job's model."""

    channels: int | None = None
    """Convert to 1 (grey) or 3 (RGB) channels; None keeps each image's own."""
    height: int | None = None
    """Fit every image to this height (with `width`); None keeps each image's size."""
    width: int | None = None
    """Fit every image to this width (with `height`)."""
    fit: str = "resize"
    """How to fit to height x width: resize or center_crop."""
    max_pixels: int | None = None
    """Reject images with more pixels than this (decompression bombs); None: the decoder's default."""
    keep_mode: bool = False
    """Keep an alpha plane (carried beside the pixels) and 16-bit grey depth, for outputs that
    mirror their input (denoise); otherwise alpha is composited over white and 16 bits become 8."""
    worker_memory_gb: float | None = None
    """GiB a worker may use for one image's decoding (`worker_memory`); None: its node's share."""
    worker_cpus: float = 1.0
    """CPUs of one worker, which decide how many share a node's memory (`worker_memory`)."""

    def memory_budget(self) -> int:
        """Bytes one image's decoding may take here: rejected as `too_large_for_memory` above it."""
        return worker_memory(self.worker_memory_gb, self.worker_cpus)


def worker_memory(memory_gb: float | None, worker_cpus: float = 1.0) -> int:
    """Bytes one worker (predictor actor or read task) may use for its images and model passes.

    `memory_gb` when given; else `WORKER_MEMORY_SHARE` of this node's memory (its cgroup limit
    where lower) shared by as many workers as the node's CPUs hold at `worker_cpus` each, which is
    how many Ray runs there at once.
    """
    if memory_gb is not None:
        return int(memory_gb * 2**30)
    workers = max(1.0, node_cpus() / worker_cpus)
    return int(node_memory() * WORKER_MEMORY_SHARE / workers)


@cache
def node_memory() -> int:
    """Bytes of memory this process's node has: its physical memory, or its cgroup limit where lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as limit:
                text = limit.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


@cache
def node_cpus() -> float:
    """CPUs Ray gives this process's node (its own count outside Ray)."""
    ray = sys.modules.get("ray")  # never imported here: a Ray-free caller stays Ray-free
    try:
        if ray is not None and ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
            for info in ray.nodes():
                if info["NodeID"] == node:
                    return float(info["Resources"].get("CPU", 1.0))
    except Exception:  # no Ray, or no answer from it: count this machine's CPUs instead
        pass
    return float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def decode_rows(batch: pa.Table, spec: DecodeSpec) -> pa.Table:
    """Decode a batch of source rows (with `shard`) into `DECODED_SCHEMA` rows, one per input row."""
    datas = batch.column("image").to_pylist()
    errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(datas)
    reasons: list[str | None] = []
    pixels: list[bytes] = []
    alphas: list[bytes] = []
    depths: list[int] = []
    shapes: list[tuple[int, int, int]] = []
    formats: list[str | None] = []
    budget = spec.memory_budget()
    for data, error in zip(datas, errors, strict=True):
        formats.append(sniff_format(data) if data else None)
        array, alpha = None, None
        if error:
            reasons.append(error if ":" in error else f"read_error: {error}")
        else:
            try:
                array, alpha = (
                    decode_keeping_mode(data, spec, budget)
                    if spec.keep_mode
                    else (decode_one(data, spec, budget), None)
                )
                reasons.append(None)
            except images.ImageRejected as rejected:
                reasons.append(str(rejected))
        pixels.append(array.tobytes() if array is not None else b"")
        alphas.append(alpha.tobytes() if alpha is not None else b"")
        depths.append(16 if array is not None and array.dtype == np.uint16 else 8)
        shapes.append(array.shape if array is not None else (0, 0, 0))  # (H, W, C)
    height, width, channels = (np.asarray([s[i] for s in shapes], dtype=np.int32) for i in range(3))
    columns = {name: batch.column(name) for name in PASS_THROUGH if name in batch.column_names}
    if "shard_rows" in batch.column_names:
        columns["shard_rows"] = batch.column("shard_rows")
    columns.setdefault("label", pa.nulls(batch.num_rows, pa.int64()))
    columns.update(
        reason=pa.array(reasons, pa.string()),
        pixels=pa.array(pixels, pa.large_binary()),
        height=pa.array(height),
        width=pa.array(width),
        channels=pa.array(channels),
        bit_depth=pa.array(depths, pa.int32()),
        alpha=pa.array(alphas, pa.large_binary()),
        format=pa.array(formats, pa.string()),
    )
    # `shard` is absent inside a read task (`BatchSource`): `read_dataset` adds it after.
    fields = [field for field in DECODED_SCHEMA if field.name in columns]
    return pa.table([columns[f.name].cast(f.type) for f in fields], schema=pa.schema(fields))


def decode_one(data: bytes, spec: DecodeSpec, max_bytes: int | None = None) -> np.ndarray:
    """One image as `uint8` `(H, W, C)`, converted and fitted as `spec` says; raises `ImageRejected`
    (`too_large_for_memory` when decoding it takes more than `max_bytes`)."""
    kwargs: dict[str, int] = {} if spec.max_pixels is None else {"max_pixels": spec.max_pixels}
    if max_bytes is not None:
        kwargs["max_bytes"] = max_bytes
    if spec.height is not None and spec.width is not None:
        array = images.decode_fitted(data, spec.channels, spec.height, spec.width, mode=spec.fit, **kwargs)
    else:
        array = images.decode_image(data, channels=spec.channels, **kwargs)  # (H, W, C)
    return np.ascontiguousarray(array, dtype=np.uint8)


def decode_keeping_mode(
    data: bytes, spec: DecodeSpec, max_bytes: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image as `(H, W, C)` pixels plus its alpha plane `(H, W)` (or None), keeping 16-bit grey.

    PNG and TIFF images with alpha or 16-bit grey samples are decoded here (Pillow); every other
    image goes through `decode_one`. Pillow reads 16-bit colour PNGs at 8 bits, so only grey keeps
    16 bits.
    """
    header = images.probe_image(data)
    with_alpha = header.channels in (2, 4) or header.palette
    if header.format not in ("png", "tiff") or not (with_alpha or header.bit_depth == 16):
        return decode_one(data, spec, max_bytes), None
    # size, bombs, memory
    images.decode_image(data, max_pixels=spec.max_pixels or images.DEFAULT_MAX_PIXELS, max_bytes=max_bytes)
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as opened:
        if opened.mode.startswith("I;16") or opened.mode == "I":
            grey = np.asarray(opened).astype(np.uint16)  # (H, W)
            return np.ascontiguousarray(grey[:, :, None]), None
        image = opened.convert("LA" if opened.mode in ("L", "LA", "La") else "RGBA")
        array = np.asarray(image)  # (H, W, 2 or 4)
    alpha: np.ndarray | None = np.ascontiguousarray(array[:, :, -1])
    if header.channels not in (2, 4) and array[:, :, -1].min() == 255:
        alpha = None  # a palette image without transparency stays without alpha
    return np.ascontiguousarray(array[:, :, :-1]), alpha


def pixels_of(table: pa.Table) -> list[np.ndarray | None]:
    """The images of decoded rows as `uint8` (16-bit: `uint16`) `(H, W, C)` arrays (None: rejected)."""
    datas = table.column("pixels").to_pylist()
    heights = table.column("height").to_pylist()
    widths = table.column("width").to_pylist()
    channels = table.column("channels").to_pylist()
    reasons = table.column("reason").to_pylist()
    depths = table.column("bit_depth").to_pylist() if "bit_depth" in table.column_names else [8] * len(datas)
    out: list[np.ndarray | None] = []
    for data, h, w, c, reason, depth in zip(datas, heights, widths, channels, reasons, depths, strict=True):
        dtype = np.uint16 if depth == 16 else np.uint8
        out.append(None if reason is not None else np.frombuffer(data, dtype=dtype).reshape(h, w, c))
    return out


def alphas_of(table: pa.Table) -> list[np.ndarray | None]:
    """The alpha planes `(H, W)` of decoded rows (None where the image had none or was rejected)."""
    if "alpha" not in table.column_names:
        return [None] * table.num_rows
    out: list[np.ndarray | None] = []
    for data, h, w in zip(
        table.column("alpha").to_pylist(),
        table.column("height").to_pylist(),
        table.column("width").to_pylist(),
        strict=True,
    ):
        out.append(np.frombuffer(data, dtype=np.uint8).reshape(h, w) if data else None)
    return out


class BatchSource(Source):
    """A source whose shards read as decoded, numbered rows, so decoding runs inside Ray Data's read tasks.

    Rows come out in `DECODED_SCHEMA` (without `shard`, which `read_dataset` adds): encoded bytes
    never enter the object store, and there is no separate decode step for Ray to fuse elsewhere.
    The last table of a shard is held back one step so its last row can carry `shard_rows`.
    """

    def __init__(self, source: Source, spec: DecodeSpec) -> None:
        super().__init__(source.uri, storage_options=source.storage_options)
        self.source = source
        self.spec = spec
        self.kind = source.kind
        self.has_labels = source.has_labels

    def list_shards(self) -> list[Shard]:
        return self.source.list_shards()

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        held: pa.Table | None = None
        first = 0
        for table in self.source.read_shard(shard, batch_rows=batch_rows):
            if held is not None:
                yield decode_rows(_numbered(held, first, None), self.spec)
                first += held.num_rows
            held = table
        if held is not None:
            yield decode_rows(_numbered(held, first, first + held.num_rows), self.spec)

    def describe(self) -> str:
        return self.source.describe()


def _numbered(table: pa.Table, first: int, total: int | None) -> pa.Table:
    """`table` with `row` (positions from `first`) and `shard_rows` (`total` on the last row) columns."""
    n = table.num_rows
    totals: list[int | None] = [None] * n
    if total is not None and n:
        totals[-1] = total
    table = table.append_column("row", pa.array(np.arange(first, first + n, dtype=np.int64)))
    return table.append_column("shard_rows", pa.array(totals, pa.int64()))
