"""What every image source is: a stable list of shards, each read as Arrow batches of encoded images.

A *shard* is the unit of parallelism, of output files (`part-NNNNN`) and of resume: one file of a
Parquet/WebDataset source, a run of a folder's sorted file list cut by bytes and count, a row range of an
MNIST/CIFAR/STL-10 file. The shard list of a source is deterministic: the same input gives the
same shards in the same order, so shard `i` of a rerun is shard `i` of the first run.

Reading a shard is Ray-free and yields `pyarrow.Table` batches with the columns of `ROW_SCHEMA`.
The `image` column holds the encoded bytes of one image: a file's own bytes (JPEG, PNG, ...) or,
for sources that store raw pixels (MNIST, CIFAR, ...), the `raeflow.data.images.encode_raw` form.
A row that cannot even be read (a corrupt tar member, ...) is still yielded, with empty `image`
bytes and an `error` message, so it is counted and rejected downstream instead of lost.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

ROW_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.int64(), nullable=True),
        pa.field("error", pa.string(), nullable=True),
    ]
)
"""Columns of every batch a source yields. `label` is null where the source has none;
`error` is null unless the row could not be read (then `image` is empty)."""


@dataclass(frozen=True)
class Shard:
    """One unit of input: enough to read it again, on any node."""

    index: int
    """Position in the source's shard list; names the outputs (`part-00003.parquet`)."""
    name: str
    """Human-readable, stable id (e.g. the file path relative to the source root)."""
    paths: tuple[str, ...]
    """Full URIs this shard reads."""
    start: int = 0
    """First row/member within `paths` (row-range shards)."""
    stop: int | None = None
    """One past the last row/member; None means to the end."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Kind-specific facts (e.g. the COCO label map), JSON-serialisable."""


class Source:
    """An image source of one kind. Subclasses implement `list_shards` and `read_shard`."""

    kind: str = "?"
    has_labels: bool = False

    def __init__(self, uri: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri
        self.storage_options = dict(storage_options or {})

    @classmethod
    def sniff(cls, fs: Any, path: str) -> bool:
        """Whether what is at `path` (an existing file or folder of fsspec filesystem `fs`, no
        protocol) looks like this kind. Cheap (a listing, a header at most); used by `detect_kind`."""
        return False

    def list_shards(self) -> list[Shard]:
        """The source's shards, deterministic in content and order."""
        raise NotImplementedError

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        """Yield the shard's rows as tables of `ROW_SCHEMA`, at most `batch_rows` rows each."""
        raise NotImplementedError

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """How many rows (images) each of `shards` holds, where that is known without reading the
        shard; None where it is not. Cheap: what the listing knew, a footer or an index file at most.
        What a progress display shows as the total; nothing depends on it being exact."""
        return [None] * len(shards)

    uncounted: str = "total unknown"
    """What a progress display says where `count_rows` cannot count this kind's shards."""

    def describe(self) -> str:
        """One line for logs and summaries."""
        return f"{self.kind} source {self.uri}"


def range_rows(shards: list[Shard]) -> list[int | None]:
    """Rows of row-range shards (`stop - start`; None where `stop` is open)."""
    return [None if shard.stop is None else max(0, shard.stop - shard.start) for shard in shards]
