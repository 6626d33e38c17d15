"""The worker side of a batch job: predict a block of rows, write its outputs to --out, say what was written.

    read task (BatchSource)      decoded rows of one shard, numbered: shard, row, shard_rows on the last
      -> PredictAndWrite         one actor of the elastic pool: predictor on the block, then
                                 `PartWriter.write_part` puts the outputs straight to --out
      -> driver                  receives one small record per piece (COMMIT_SCHEMA), never output bytes

A *piece* is a run of consecutive rows of one shard (a block normally holds exactly one). Its files
are named after the shard and the piece's first row (`part-00003-000512.parquet`), so a retried
block rewrites the same names instead of adding files, and sorted names give the input order.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raeflow.batch.manifest import REJECTED_DIR, REJECTED_SCHEMA
from raeflow.batch.output import OutputDir
from raeflow.data.sources.base import Shard
from raeflow.data.sources.retries import StoreRetries, store_retries

COMMIT_SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("first_row", pa.int64()),
        ("rows_in", pa.int64()),
        ("rows_out", pa.int64()),
        ("rows_rejected", pa.int64()),
        ("shard_rows", pa.int64()),
        ("files", pa.list_(pa.string())),
        ("bytes", pa.int64()),
        ("node", pa.string()),
        ("key_hashes", pa.binary()),
        ("seconds", pa.float64()),
        ("precision", pa.string()),
        ("native_bf16", pa.bool_()),
        ("threads", pa.int64()),
        ("retries_botocore", pa.int64()),
        ("retries_s3fs", pa.int64()),
    ]
)
"""What a worker reports per piece written: `shard_rows` is the shard's row count when the piece
holds the shard's last row (else null); `key_hashes` are 8 bytes per input row (collision check);
`precision` is what the actor's model ran in (bf16 or fp32: actors on different nodes may differ),
`native_bf16` whether its device runs bf16 natively (bf16 without it is slower than fp32),
`threads` how many CPU threads torch used there; `retries_botocore` and `retries_s3fs` the store
requests the worker's process retried since its previous record (`raeflow.data.sources.retries`:
loading the model, reading when fused, writing)."""


RETRY_COLUMNS = ("retries_botocore", "retries_s3fs")
"""The commit-record columns that count the store requests a worker retried."""


def piece_stem(shard: int, first_row: int) -> str:
    """The name stem of a piece's files: `00003-000512` (shard 3, from row 512)."""
    return f"{shard:05d}-{first_row:06d}"


def retries_in(records: pa.Table) -> StoreRetries:
    """The store requests retried, as a table of commit records says (`COMMIT_SCHEMA`)."""
    botocore, s3fs = (int(pc.sum(records.column(name)).as_py() or 0) for name in RETRY_COLUMNS)
    return StoreRetries(botocore=botocore, s3fs=s3fs)


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of one Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def key_hashes(keys: list[str]) -> bytes:
    """8 bytes per key (blake2b), little-endian uint64s: what the driver checks for key collisions."""
    return b"".join(hashlib.blake2b(key.encode(), digest_size=8).digest() for key in keys)


class PartWriter:
    """Writes one job's outputs from inside the predictor actors (subclass it; it is pickled there).

    `write_part` puts the usable rows of one piece straight to `out` and returns the relative
    paths it wrote (and any rows it had to refuse). `part_prefixes` name where a shard's partial
    outputs live, so a rerun can delete those of unfinished shards. A writer whose output needs
    every piece of a shard at once (a mirrored tar or Parquet file) sets `finishes_shards` and
    builds it in `finish_shard`, which the driver runs as a Ray task once the shard is complete.
    """

    finishes_shards: bool = False
    """Whether `finish_shard` must run (on a worker) before a shard is committed."""

    def part_prefixes(self) -> list[tuple[str, str]]:
        """(folder, name prefix) pairs: a file `folder/<prefix><shard:05d>-...` is a partial output."""
        return []

    def write_part(
        self, out: OutputDir, shard: int, first_row: int, rows: pa.Table
    ) -> tuple[list[str], int, pa.Table | None]:
        """Write the usable predictor rows of one piece; returns (relative paths, bytes, refused rows).

        Refused rows are a table of `key, source, reason` (e.g. a key that would escape `out`).
        """
        raise NotImplementedError

    def finish_shard(self, out: OutputDir, shard: Shard, parts: list[str]) -> list[str]:
        """Build the shard's final outputs from its parts (runs in a Ray task); returns every path kept."""
        return parts

    def end_job(self, out: OutputDir, summary: Any) -> list[str]:
        """After every shard is committed (on the driver): job-wide files; returns their URIs."""
        return []


def pieces(batch: pa.Table) -> Iterator[tuple[int, int, pa.Table]]:
    """Split a batch into runs of consecutive rows of one shard: (shard, first row, rows)."""
    shards = batch.column("shard").to_numpy()
    rows = batch.column("row").to_numpy()
    breaks = np.flatnonzero((np.diff(shards) != 0) | (np.diff(rows) != 1)) + 1
    starts = [0, *breaks.tolist()]
    ends = [*breaks.tolist(), batch.num_rows]
    for start, end in zip(starts, ends, strict=True):
        if end > start:
            yield int(shards[start]), int(rows[start]), batch.slice(start, end - start)


class PredictAndWrite:
    """One actor of the predictor pool: the predictor, then the writer, on each block it is given.

    Returns one `COMMIT_SCHEMA` row per piece. Ray-free apart from asking which node it runs on.
    `precision` (auto, bf16, fp32) is resolved by the predictor on this actor's own device; `threads`
    is how many CPU threads torch uses here (the CPUs Ray reserved for the actor).
    """

    def __init__(
        self,
        predictor: type,
        predictor_kwargs: dict[str, Any],
        writer: PartWriter,
        out: str,
        batch_size: int,
        precision: str = "auto",
        threads: int | None = None,
    ) -> None:
        self.retries_seen = store_retries()  # what the process retried before (a reused Ray worker)
        self.predict = predictor(**predictor_kwargs, precision=precision, threads=threads)
        self.writer = writer
        self.out = OutputDir(out)
        self.batch_size = batch_size
        self.node = _node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        records = [self._piece(shard, first, rows) for shard, first, rows in pieces(batch)]
        return pa.Table.from_pylist(records, schema=COMMIT_SCHEMA)

    def _piece(self, shard: int, first_row: int, rows: pa.Table) -> dict[str, Any]:
        started = time.monotonic()
        # The model sees at most batch_size images at a time, whatever size the block is.
        outputs = [
            self.predict(rows.slice(s, self.batch_size)) for s in range(0, rows.num_rows, self.batch_size)
        ]
        result = pa.concat_tables(outputs) if outputs else None
        files: list[str] = []
        num_bytes = 0
        rejected: list[pa.Table] = []
        rows_out = 0
        if result is not None:
            bad = pc.is_valid(result.column("reason"))
            if pc.any(bad).as_py():
                rejected.append(result.filter(bad).select(REJECTED_SCHEMA.names))
            usable = result.filter(pc.invert(bad))
            if usable.num_rows:
                written, num_bytes, refused = self.writer.write_part(self.out, shard, first_row, usable)
                files += written
                rows_out = usable.num_rows
                if refused is not None and refused.num_rows:
                    rejected.append(refused.select(REJECTED_SCHEMA.names))
                    rows_out -= refused.num_rows
        num_rejected = sum(t.num_rows for t in rejected)
        if num_rejected:
            table = pa.concat_tables([t.cast(REJECTED_SCHEMA) for t in rejected])
            name = f"{REJECTED_DIR}/part-{piece_stem(shard, first_row)}.parquet"
            data = parquet_bytes(table)
            self.out.put(name, data)
            files.append(name)
            num_bytes += len(data)
        totals = rows.column("shard_rows").drop_null()
        retried = self._retried()
        return {
            "shard": shard,
            "first_row": first_row,
            "rows_in": rows.num_rows,
            "rows_out": rows_out,
            "rows_rejected": num_rejected,
            "shard_rows": totals[0].as_py() if len(totals) else None,
            "files": files,
            "bytes": num_bytes,
            "node": self.node,
            "key_hashes": key_hashes(rows.column("key").to_pylist()),
            "seconds": round(time.monotonic() - started, 4),
            "precision": self.predict.precision.name,
            "native_bf16": self.predict.precision.native,
            "threads": torch.get_num_threads(),
            "retries_botocore": retried.botocore,
            "retries_s3fs": retried.s3fs,
        }

    def _retried(self) -> StoreRetries:
        """The store requests this process retried since the previous record."""
        now = store_retries()
        retried, self.retries_seen = now - self.retries_seen, now
        return retried


def _node_id() -> str:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else "local"
    except Exception:  # outside Ray (tests calling the actor class directly)
        return "local"
