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

from collections.abc import Iterator
from dataclasses import dataclass

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
        ("format", pa.string()),
    ]
)
"""Rows after decoding: `row` is the row's position in its shard, `shard_rows` the shard's row count
on its last row (null elsewhere); `reason` is null for a usable image, else why it was rejected
(then `pixels` is empty). `format` is the encoded format sniffed from the input bytes
(png, jpeg, webp, bmp, tiff, gif; raw for raw-pixel sources)."""

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


def decode_rows(batch: pa.Table, spec: DecodeSpec) -> pa.Table:
    """Decode a batch of source rows (with `shard`) into `DECODED_SCHEMA` rows, one per input row."""
    datas = batch.column("image").to_pylist()
    errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(datas)
    reasons: list[str | None] = []
    pixels: list[bytes] = []
    shapes: list[tuple[int, int, int]] = []
    formats: list[str | None] = []
    for data, error in zip(datas, errors, strict=True):
        formats.append(sniff_format(data) if data else None)
        if error:
            reasons.append(error if ":" in error else f"read_error: {error}")
            pixels.append(b"")
            shapes.append((0, 0, 0))
            continue
        try:
            array = decode_one(data, spec)
        except images.ImageRejected as rejected:
            reasons.append(str(rejected))
            pixels.append(b"")
            shapes.append((0, 0, 0))
            continue
        reasons.append(None)
        pixels.append(array.tobytes())
        shapes.append(array.shape)  # (H, W, C)
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
        format=pa.array(formats, pa.string()),
    )
    # `shard` is absent inside a read task (`BatchSource`): `read_dataset` adds it after.
    fields = [field for field in DECODED_SCHEMA if field.name in columns]
    return pa.table([columns[f.name].cast(f.type) for f in fields], schema=pa.schema(fields))


def decode_one(data: bytes, spec: DecodeSpec) -> np.ndarray:
    """One image as `uint8` `(H, W, C)`, converted and fitted as `spec` says; raises `ImageRejected`."""
    kwargs = {} if spec.max_pixels is None else {"max_pixels": spec.max_pixels}
    if spec.height is not None and spec.width is not None:
        array = images.decode_fitted(data, spec.channels, spec.height, spec.width, mode=spec.fit, **kwargs)
    else:
        array = images.decode_image(data, channels=spec.channels, **kwargs)  # (H, W, C)
    return np.ascontiguousarray(array, dtype=np.uint8)


def pixels_of(table: pa.Table) -> list[np.ndarray | None]:
    """The images of decoded rows as `uint8` `(H, W, C)` arrays (None for rejected rows)."""
    datas = table.column("pixels").to_pylist()
    heights = table.column("height").to_pylist()
    widths = table.column("width").to_pylist()
    channels = table.column("channels").to_pylist()
    reasons = table.column("reason").to_pylist()
    out: list[np.ndarray | None] = []
    for data, h, w, c, reason in zip(datas, heights, widths, channels, reasons, strict=True):
        out.append(None if reason is not None else np.frombuffer(data, dtype=np.uint8).reshape(h, w, c))
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
