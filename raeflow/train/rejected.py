"""The images a training run could not use, listed as the batch jobs list theirs: `<out>/_rejected/`.

    _rejected/rejected.parquet   key, source, reason (`truncated: ...`, `empty: no bytes`), one row per image

The decode step (`batches.DecodeForTraining`, in Ray Data's map tasks) writes a small piece for
each batch that held a bad image of its split; it pays nothing for batches without one. Ray Data
decodes again every epoch, so a piece is named by a hash of its keys: the same batch rewrites the
same file. When the run ends, the driver merges the pieces into one table, each image once
(`collect_rejected`), and the train summary counts them.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow.batch.manifest import REJECTED_DIR, REJECTED_SCHEMA
from raeflow.batch.output import TEMP_MARK, OutputDir

REJECTED_FILE = "rejected.parquet"
"""The merged table of a finished run, in `_rejected/`."""
PIECE_PREFIX = "piece-"
"""Names of the decode tasks' pieces, merged into `REJECTED_FILE` at the end of the run."""


def write_rejected_piece(out: str, keys: list[str], sources: list[str], reasons: list[str]) -> str:
    """Write one batch's rejected images to `<out>/_rejected/piece-<hash of the keys>.parquet`."""
    table = pa.table({"key": keys, "source": sources, "reason": reasons}, schema=REJECTED_SCHEMA)
    digest = hashlib.blake2b("\n".join(sorted(keys)).encode("utf-8"), digest_size=8).hexdigest()
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return OutputDir(out).put(f"{REJECTED_DIR}/{PIECE_PREFIX}{digest}.parquet", buffer.getvalue())


@dataclass
class RejectedImages:
    """The images a run could not use: how many, why, and where they are listed."""

    count: int = 0
    """Distinct images rejected (each counted once, however many epochs met it)."""
    by_reason: dict[str, int] = field(default_factory=dict)
    """Count per reason slug (`truncated`, `empty`, ...), most frequent first."""
    uri: str | None = None
    """The `_rejected/` folder, when any image was rejected."""

    def line(self) -> str | None:
        """The summary's line, or None when every image was used."""
        if not self.count:
            return None
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.by_reason.items())
        noun = "image" if self.count == 1 else "images"
        return f"  rejected: {self.count:,} {noun} could not be used ({reasons}), listed in {self.uri}"


def collect_rejected(out: str) -> RejectedImages:
    """Merge the pieces under `<out>/_rejected/` into `rejected.parquet` (each key once); count them."""
    folder = OutputDir(out)
    names = [
        name
        for name in folder.list(REJECTED_DIR)
        if name.endswith(".parquet") and TEMP_MARK not in name
        and (name == REJECTED_FILE or name.startswith(PIECE_PREFIX))
    ]  # fmt: skip
    if not names:
        return RejectedImages()
    tables = [pq.read_table(io.BytesIO(folder.read(f"{REJECTED_DIR}/{name}"))) for name in names]
    merged = pa.concat_tables([t.select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA) for t in tables])
    keys = merged.column("key").to_pylist()
    first = sorted({key: i for i, key in reversed(list(enumerate(keys)))}.items())  # (key, first row)
    merged = merged.take(pa.array([i for _, i in first], pa.int64()))
    pieces = [name for name in names if name != REJECTED_FILE]
    if pieces:
        buffer = io.BytesIO()
        pq.write_table(merged, buffer)
        folder.put(f"{REJECTED_DIR}/{REJECTED_FILE}", buffer.getvalue())
        for name in pieces:
            folder.remove(f"{REJECTED_DIR}/{name}")
    slugs = pc.split_pattern(merged.column("reason"), ":", max_splits=1)
    counts = Counter(parts[0].strip() for parts in slugs.to_pylist())
    return RejectedImages(
        count=merged.num_rows,
        by_reason=dict(counts.most_common()),
        uri=folder.url(REJECTED_DIR + "/"),
    )
