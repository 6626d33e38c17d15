"""Run a batch job as one Ray Data stream, writing each input shard's output exactly once.

    pending shards -> read_dataset           one CPU read task per shard, decoding as it reads
                                             (decode_rows: bytes -> raw pixels, bad images get a reason)
                   -> Predictor              actor pool (GPU with --gpu): one pyarrow batch per call
                   -> driver                 iter_batches in shard order; per finished shard:
                                             writer outputs, _rejected/ part, then _manifest/ record

The stream runs with `preserve_order`, so rows reach the driver sorted by shard: shard k is
complete when a row of a later shard arrives or the stream ends (shards with no rows at all are
completed then too). Only the current shard is held on the driver, so its memory does not grow
with the number of images. A shard's manifest record is written after its outputs, so a rerun of
the same command skips recorded shards, redoes the rest (their outputs are overwritten whole) and
deletes temporary files of an interrupted write; a folder holding another model's run is refused.

How a job plugs in (embed, denoise and report all do exactly this):

    from raeflow.batch.runner import BatchJob, ShardWriter, run_batch_job

    class MyWriter(ShardWriter):                   # driver side, one instance per run
        def begin_shard(self, shard): ...          # a new input shard starts
        def add_rows(self, rows): ...              # the shard's usable predictor rows, in order
                                                   #   (may return rows it refuses: key, source, reason)
        def end_shard(self): ...                   # write its outputs via self.out.put(...) -> relpaths
        def end_job(self, summary): ...            # optional: files that need every shard -> URIs

    summary = run_batch_job(BatchJob(
        name="report", source=source, out=OutputDir(uri), fingerprint=bundle.fingerprint,
        settings={...output-shaping settings...}, decode=DecodeSpec(channels=1, height=28, width=28),
        predictor=ReconstructPredictor, predictor_kwargs={"bundle": uri}, writer=MyWriter(...),
        run=RunOptions(batch_size=256)))

The predictor is any Ray-free class: `__init__(**predictor_kwargs)` loads the model, `__call__`
maps a `pyarrow.Table` of `DECODED_SCHEMA` rows to a table with one row per input row holding
`key, source, label, shard, reason` plus its payload columns (see `raeflow.batch.predictors`).
Rows whose `reason` is set go to `_rejected/`; the writer only ever sees usable rows.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raeflow.batch.config import RunOptions
from raeflow.batch.decoding import DecodeSpec, DecodingSource, decode_rows
from raeflow.batch.manifest import Manifest, ShardRecord
from raeflow.batch.output import OutputDir
from raeflow.batch.summary import JobSummary, check_rejected, summarise
from raeflow.connection import connect_ray
from raeflow.data.sources.base import Shard, Source

CRASH_HOOK = "RAEFLOW_TEST_CRASH_AFTER_SHARDS"
"""Test hook: after this many shards are finished, the driver exits half-way through writing the next."""


class ShardWriter:
    """Writes one job's outputs on the driver, one input shard at a time (subclass it).

    `out` is set by the runner before the first shard. Every file goes through `out.put` or
    `out.open_atomic`, so it appears whole or not at all, and never outside the output folder.
    """

    out: OutputDir

    def begin_shard(self, shard: Shard) -> None:
        """A new input shard starts; forget the previous one."""
        raise NotImplementedError

    def add_rows(self, rows: pa.Table) -> pa.Table | None:
        """Usable predictor rows of the current shard, in input order (called zero or more times).

        May return rows it could not place (e.g. a key that would escape the output folder) as a
        table of `key, source, reason`; they are counted and listed as rejected.
        """
        raise NotImplementedError

    def end_shard(self) -> tuple[str, ...]:
        """Write the current shard's outputs; return their paths relative to `out`."""
        raise NotImplementedError

    def end_job(self, summary: JobSummary) -> list[str]:
        """After every shard is finished: write job-wide files (e.g. a report); return their URIs."""
        return []


@dataclass
class BatchJob:
    """Everything `run_batch_job` needs: where from, what to run, where to write."""

    name: str
    """The job's kind (embed, denoise, report); recorded in the manifest."""
    source: Source
    """The input images."""
    out: OutputDir
    """The output folder."""
    fingerprint: str
    """The model bundle's fingerprint; a rerun into `out` with another model is refused."""
    settings: dict[str, Any]
    """Settings that shape the output; a rerun into `out` with other values is refused."""
    decode: DecodeSpec
    """How the decode tasks turn bytes into pixels."""
    predictor: type
    """Ray-free callable class, run in an actor pool: `pa.Table` in, `pa.Table` out."""
    predictor_kwargs: dict[str, Any]
    """Constructor arguments of `predictor` (e.g. the bundle URI)."""
    writer: ShardWriter
    """Writes each finished shard's outputs on the driver."""
    run: RunOptions = field(default_factory=RunOptions)
    """Batch size, actor count, GPUs, Ray address, rejected threshold."""
    outputs_hint: str = ""
    """What to show as the outputs in the summary (e.g. `part-*.parquet`); default: the folder."""


def run_batch_job(job: BatchJob) -> JobSummary:
    """Run `job` over every unfinished shard of its source; returns the summary of the whole folder.

    Raises `JobError` when the folder holds another run, or when more than `run.max_rejected` of
    the images were rejected (the outputs of the good images are kept, `_SUCCESS` is not written).
    """
    job.run.validate()
    started = time.monotonic()
    shards = job.source.list_shards()
    manifest = Manifest(job.out)
    manifest.claim(job.name, job.fingerprint, job.settings, len(shards))
    job.out.remove_leftovers()
    done = manifest.finished()
    pending = [shard for shard in shards if shard.index not in done]
    job.writer.out = job.out
    progress = _Progress(job, len(shards), quiet=job.run.quiet)
    if pending:
        manifest.clear_success()
        progress.say(f"{len(pending)} of {len(shards)} shards to do ({job.source.describe()})")
        for record in _stream(job, pending, manifest):
            done[record.shard] = record
            progress.shard_done(record)
    summary = summarise(
        job.name, job.out, shards, done, pending, time.monotonic() - started, outputs_hint=job.outputs_hint
    )
    check_rejected(summary, job.run.max_rejected)
    summary.outputs += job.writer.end_job(summary)
    manifest.mark_success(summary.as_dict())
    return summary


def _stream(job: BatchJob, pending: list[Shard], manifest: Manifest) -> Iterator[ShardRecord]:
    """Run the Ray Data pipeline over `pending` shards; yield each shard's record once it is written."""
    import ray.data

    from raeflow.data.dataset import read_dataset

    connect_ray(job.run.address)
    options = job.run
    if options.decode_in_read:  # decoding runs inside the read tasks
        ds = read_dataset(DecodingSource(job.source, job.decode), pending)
    else:
        ds = read_dataset(job.source, pending).map_batches(
            decode_rows,  # type: ignore[arg-type]  # a pyarrow batch function with keyword settings
            fn_kwargs={"spec": job.decode},
            batch_format="pyarrow",
            batch_size=options.decode_batch_size,
        )
    ds = ds.map_batches(
        job.predictor,
        fn_constructor_kwargs=job.predictor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=options.workers or _default_workers(options.gpu)),
        batch_size=options.batch_size,
        batch_format="pyarrow",
        num_cpus=options.worker_cpus,
        num_gpus=1 if options.gpu else None,
    )
    ds.context.execution_options.preserve_order = True  # rows arrive sorted by shard
    crash_after = int(os.environ.get(CRASH_HOOK, "-1"))
    queue = iter(pending)
    current = _OpenShard(next(queue), job.writer)
    num_finished = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1):
        for index, rows in _runs_by_shard(batch):
            while current.shard.index != index:
                if current.shard.index > index:
                    raise RuntimeError(f"rows of shard {index} arrived after shard {current.shard.index}")
                yield current.finish(manifest, crash=num_finished == crash_after)
                num_finished += 1
                current = _OpenShard(next(queue), job.writer)
            current.add(rows)
    while True:  # the last shard with rows, then any trailing shards that had none
        yield current.finish(manifest, crash=num_finished == crash_after)
        num_finished += 1
        following = next(queue, None)
        if following is None:
            return
        current = _OpenShard(following, job.writer)


class _OpenShard:
    """The one shard the driver is collecting: counts and rejected rows; usable rows go to the writer."""

    def __init__(self, shard: Shard, writer: ShardWriter) -> None:
        self.shard = shard
        self.writer = writer
        self.rows_in = 0
        self.rows_out = 0
        self.rejected: list[pa.Table] = []
        self.started = time.monotonic()
        writer.begin_shard(shard)

    def add(self, rows: pa.Table) -> None:
        self.rows_in += rows.num_rows
        bad = pc.is_valid(rows.column("reason"))
        if pc.any(bad).as_py():
            self.rejected.append(rows.filter(bad).select(["key", "source", "reason"]))
            rows = rows.filter(pc.invert(bad))
        if rows.num_rows:
            refused = self.writer.add_rows(rows)
            self.rows_out += rows.num_rows - (refused.num_rows if refused is not None else 0)
            if refused is not None and refused.num_rows:
                self.rejected.append(refused.select(["key", "source", "reason"]))

    def finish(self, manifest: Manifest, *, crash: bool = False) -> ShardRecord:
        """Write outputs, then the rejected part, then the record (the order resume relies on)."""
        if crash:  # test hook: die part-way through writing this shard, leaving a temporary file
            with manifest.out.open_atomic(f"part-{self.shard.index:05d}.crash"):
                os._exit(3)
        outputs = self.writer.end_shard()
        rejected = (
            pa.concat_tables(self.rejected)
            if self.rejected
            else pa.table(
                {
                    "key": pa.array([], pa.string()),
                    "source": pa.array([], pa.string()),
                    "reason": pa.array([], pa.string()),
                }
            )
        )
        manifest.write_rejected(self.shard.index, rejected)
        record = ShardRecord(
            shard=self.shard.index,
            name=self.shard.name,
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            rows_rejected=rejected.num_rows,
            seconds=round(time.monotonic() - self.started, 3),
            outputs=tuple(outputs),
        )
        manifest.write_record(record)
        return record


def _runs_by_shard(batch: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """Split a batch into consecutive runs of rows with the same `shard`."""
    shard_ids = batch.column("shard").to_numpy()
    start = 0
    for end in range(1, len(shard_ids) + 1):
        if end == len(shard_ids) or shard_ids[end] != shard_ids[start]:
            yield int(shard_ids[start]), batch.slice(start, end - start)
            start = end


def _default_workers(gpu: bool) -> int:
    if gpu:
        import ray

        return max(1, int(ray.cluster_resources().get("GPU", 1)))
    return 1


class _Progress:
    """One console line per finished shard, on stderr."""

    def __init__(self, job: BatchJob, num_shards: int, *, quiet: bool) -> None:
        self.name = job.name
        self.num_shards = num_shards
        self.quiet = quiet
        self.started = time.monotonic()
        self.images = 0

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{self.name}] {text}", file=sys.stderr, flush=True)

    def shard_done(self, record: ShardRecord) -> None:
        self.images += record.rows_in
        rate = self.images / max(time.monotonic() - self.started, 1e-9)
        self.say(
            f"shard {record.shard + 1}/{self.num_shards} {record.name}: {record.rows_in} in, "
            f"{record.rows_out} out, {record.rows_rejected} rejected ({rate:,.0f} images/s so far)"
        )
