"""Run a batch job as one Ray Data stream whose workers write the outputs; the driver only keeps the books.

    pending shards -> reads (BatchSource)        one read per shard, decoding as it reads: fused into
                                                 the actors on CPUs when shards are plenty
                                                 (`fuses_read`), else CPU tasks preferring nodes
                                                 labelled raeflow.io/role=decode
                   -> PredictAndWrite actors     elastic pool (1 .. CPUs, or GPUs with --gpu; --workers
                                                 caps it): predict a block, write its files to --out
                   -> driver                     small commit records (shard, rows, files, bytes, node);
                                                 a shard whose rows are all written gets its
                                                 `_manifest/` record (after `finish_shard` for mirrors)

No output byte passes through the driver and there is no `preserve_order`: how a shard's
completion is known is described in `raeflow.batch.ledger`. A rerun of the same command skips
recorded shards, deletes the partial outputs of the others (`PartWriter.part_prefixes`, temporary
files) and redoes them, so every key ends up in the output exactly once. Which is why one job at a
time writes a folder: the driver holds its lease (`raeflow.batch.lease`) from connecting to the end.

How a job plugs in (embed, denoise and report all do exactly this):

    class MyWriter(PartWriter):                          # pickled into every predictor actor
        def part_prefixes(self): return [("", "part-")]  # where a shard's partial outputs live
        def write_part(self, out, shard, first_row, rows): ...   # -> (relpaths, bytes, refused)

    summary = run_batch_job(BatchJob(
        name="embed", source=source, out=OutputDir(uri), fingerprint=bundle.fingerprint,
        settings={...output-shaping settings...}, decode=DecodeSpec(channels=1, height=28, width=28),
        predictor=EncodePredictor, predictor_kwargs={"bundle": uri}, writer=MyWriter(...),
        run=RunOptions(batch_size=256)))
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from raeflow.batch.config import RunOptions
from raeflow.batch.decoding import DECODED_SCHEMA, BatchSource, DecodeSpec
from raeflow.batch.lease import Lease
from raeflow.batch.ledger import KeyIndex, OpenShard
from raeflow.batch.location import check_out_outside_data, resolved_uri
from raeflow.batch.manifest import REJECTED_DIR, Manifest, ShardRecord
from raeflow.batch.output import OutputDir, exception_chain, no_space
from raeflow.batch.summary import JobSummary, check_rejected, interrupted_message, summarise
from raeflow.batch.worker import PartWriter, PredictAndWrite, retries_in
from raeflow.connection import connect_ray, require_gpus
from raeflow.data.sources.base import Shard, Source
from raeflow.data.sources.retries import StoreRetries, store_retries
from raeflow.errors import JobError
from raeflow.interrupts import SigintWatch
from raeflow.progress import JobInterrupted, Progress

CRASH_HOOK = "RAEFLOW_TEST_CRASH_AFTER_SHARDS"
"""Test hook: after this many shards are committed, the driver dies half-way through committing the next."""

DECODE_LABEL = ("raeflow.io/role", "decode")
"""Node label of the CPU-only decode workers (cluster.yaml); read tasks prefer such nodes."""

PLACEMENT = {"label_selector": dict([DECODE_LABEL]), "fallback_strategy": [{"label_selector": {}}]}
"""Where read tasks (and shard-finishing tasks) go: decode-labelled nodes when the cluster has them."""

ACTOR_START_SECONDS = 1800
"""How long the job waits for its first predictor actors (an autoscaler may have to add their nodes)."""

FUSED_SHARDS_PER_ACTOR = 3
"""Reads are fused into the actors only with at least this many shards per actor: an actor reads a
whole shard, so with fewer the last shards leave actors idle (with 3, about a sixth of the time at
worst, against the third that separate decode tasks and actors waited on each other)."""

BLOCK_BYTES = 32 * 1024 * 1024
"""Target size of a block of decoded rows, which is also what one part file holds (see docs/batch.md)."""


_DRIVER_RETRIES_COUNTED = [StoreRetries()]
"""The driver's store retries that a summary in this process counted already: a job counts the
rest, so the command's own checks and listing before `run_batch_job` are in its summary too."""


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
    """How the read tasks turn bytes into pixels."""
    predictor: type
    """Ray-free callable class, run in an actor pool: `pa.Table` in, `pa.Table` out."""
    predictor_kwargs: dict[str, Any]
    """Constructor arguments of `predictor` (e.g. the bundle URI)."""
    writer: PartWriter
    """Writes each piece's outputs inside the predictor actors."""
    run: RunOptions = field(default_factory=RunOptions)
    """Batch size, actor count, GPUs, Ray address, rejected threshold."""
    outputs_hint: str = ""
    """What to show as the outputs in the summary (e.g. `part-*.parquet`); default: the folder."""
    block_bytes: int = BLOCK_BYTES
    """Target bytes of decoded pixels per block (one actor call, one part file)."""


def run_batch_job(job: BatchJob) -> JobSummary:
    """Run `job` over every unfinished shard of its source; returns the summary of the whole folder.

    Raises `ConfigError` when --out lies inside --data, `JobError` when the folder holds another
    run, when another job writes it now (`raeflow.batch.lease`), or when more than
    `run.max_rejected` of the images were rejected (the outputs of the good images are kept,
    `_SUCCESS` is not written), or when a disk filled up (`--out`'s, or a node's Ray spill folder:
    `stopped_by_full_disk`). Nothing is written before Ray is reachable. Ctrl-C raises
    `JobInterrupted`, saying what is committed and that the same command resumes.
    """
    job.run.validate()
    started = time.monotonic()
    retries_before = _DRIVER_RETRIES_COUNTED[0]
    settings = dict(job.settings)
    if settings.get("data"):
        check_out_outside_data(settings["data"], job.out.uri)
        settings["data"] = resolved_uri(settings["data"])
    shards = job.source.list_shards()
    lease = Lease(job.out, job.name)
    lease.check()  # another job writing --out now: refused before connecting to Ray
    manifest = Manifest(job.out, lease)
    manifest.check(job.name, job.fingerprint, settings, len(shards))
    done = manifest.finished()
    check_same_shards(job.out, shards, done)
    try:
        return _run(job, lease, manifest, settings, shards, done, started, retries_before)
    except Exception as err:
        stopped = stopped_by_full_disk(err, manifest, len(shards))
        if stopped is None:
            raise
        raise stopped from None
    finally:
        lease.release()


def stopped_by_full_disk(err: BaseException, manifest: Manifest, num_shards: int) -> JobError | None:
    """The one line of a job that a full disk stopped, or None when `err` is something else.

    Either a write ran out of space (`--out`, or any file a worker wrote: `output.no_space`), or
    Ray could not keep a block because a node's object store was full and the disk of its spill
    folder over Ray's threshold (`OutOfDiskError`). Either way nothing incomplete is committed: a
    shard's record is written after its files, each of which appears whole or not at all.
    """
    found = no_space(err)
    if found is None and not _ray_out_of_disk(err):
        return None
    try:
        finished = f"{len(manifest.finished())} of {num_shards} shards are finished"
    except Exception:  # the line matters more than the count
        finished = ""
    if found is not None:
        return manifest.out.no_space_error(found, finished)
    done = f"; {finished}" if finished else ""
    return JobError(
        "no space left for Ray's objects: a node's object store was full and the disk of its spill "
        f"folder too (over Ray's 95 % threshold; Ray's temporary folder, /tmp/ray by default, or "
        f"$RAY_object_spilling_directory){done}; free space there and rerun: finished shards are kept"
    )


def _ray_out_of_disk(err: BaseException) -> bool:
    """Whether Ray gave up storing an object for want of disk (its `OutOfDiskError`, maybe wrapped)."""
    for exc in exception_chain(err):
        if any(cls.__name__ == "OutOfDiskError" for cls in type(exc).__mro__):
            return True
        if type(exc).__name__.startswith("RayTaskError") and "OutOfDiskError" in str(exc):
            return True
    return False


def _run(
    job: BatchJob,
    lease: Lease,
    manifest: Manifest,
    settings: dict[str, Any],
    shards: list[Shard],
    done: dict[int, ShardRecord],
    started: float,
    retries_before: StoreRetries,
) -> JobSummary:
    """`run_batch_job` once the folder is known to fit the job: take its lease, run, summarise.

    `retries_before`: the driver's store retries that an earlier job's summary counted."""
    pending = [shard for shard in shards if shard.index not in done]
    received = [0]
    retried = [StoreRetries()]  # by the workers and the shard-finishing tasks
    with Progress(job.name, quiet=job.run.quiet) as progress, SigintWatch() as sigint:
        if pending:
            num_before = len(done)
            try:
                _count_in_background(job.source, pending, progress)
                _connect(job.run)  # before anything is written: an unreachable cluster writes nothing
                _take_lease(lease, progress)
                # A job that ran between the first look and the lease may have finished shards.
                done = manifest.finished(known=done)
                check_same_shards(job.out, shards, done)
                pending = [shard for shard in pending if shard.index not in done]
                manifest.claim(job.name, job.fingerprint, settings, len(shards))
                if pending:
                    manifest.clear_success()
                    job.out.remove_leftovers()
                    prefixes = [*job.writer.part_prefixes(), (REJECTED_DIR, "part-")]
                    manifest.remove_partial(prefixes, {shard.index for shard in pending})
                    progress.say(_plan_line(job.source, shards, pending, done))
                    for record in _stream(job, pending, manifest, progress, received, retried, sigint):
                        done[record.shard] = record
                sigint.check()  # a Ctrl-C that something swallowed still stops the job before its end
            except KeyboardInterrupt as interrupt:
                message = interrupted_message(job.out.url(), len(shards), done, num_before)
                raise JobInterrupted(message) from interrupt
        else:
            _take_lease(lease, progress)
            manifest.claim(job.name, job.fingerprint, settings, len(shards))
    keys = KeyIndex()
    for index in sorted(done):
        keys.add(index, manifest.key_hashes(index))
    collisions, groups = keys.collisions()
    summary = summarise(
        job.name, job.out, shards, done, pending, time.monotonic() - started, outputs_hint=job.outputs_hint
    )
    summary.received_bytes = received[0]
    if collisions:
        names = {shard.index: shard.name for shard in shards}
        summary.key_collisions = collisions
        summary.collision_shards = [[names.get(i, str(i)) for i in group] for group in groups]
    summary.count_store_retries(retried[0] + store_retries() - retries_before)
    check_rejected(summary, job.run.max_rejected)
    summary.outputs += job.writer.end_job(job.out, summary)
    summary.count_store_retries(retried[0] + store_retries() - retries_before)  # end_job's too
    _DRIVER_RETRIES_COUNTED[0] = store_retries()
    # A predictor actor killed in the middle of a write (and replaced) left its temporary file:
    # every shard is committed now and nothing of this job writes any more.
    job.out.remove_leftovers()
    manifest.mark_success(summary.as_dict())
    return summary


def _take_lease(lease: Lease, progress: Progress) -> None:
    """Take the folder's lease; a dead job's lease taken over is said even with --quiet."""
    line = lease.acquire()
    if line is None:
        return
    if progress.quiet:
        print(f"[{progress.label}] {line}", file=sys.stderr, flush=True)
    else:
        progress.say(line)


def check_same_shards(out: OutputDir, shards: list[Shard], done: dict[int, ShardRecord]) -> None:
    """Raise `JobError` when a finished shard's record names another shard than the source lists now.

    Records are filed by shard index, so a rerun over shards cut elsewhere (files added or resized
    in a folder, or a raeflow version that cuts folders differently) would skip images of unfinished
    shards and redo images of finished ones, even with the same number of shards.
    """
    for index, record in sorted(done.items()):
        now = shards[index].name if index < len(shards) else None
        if record.name != now:
            raise JobError(
                f"{out.url()} holds a run over other shards of the input (shard {index} was "
                f"{record.name!r}, now {now!r}): the input changed, or this raeflow version cuts it "
                "differently; write to a new --out or delete that folder"
            )


def _plan_line(
    source: Source, shards: list[Shard], pending: list[Shard], done: dict[int, ShardRecord]
) -> str:
    """What this run does: `6 shards to do (...)`, or on a rerun also what an earlier run finished."""
    if not done:
        return f"{len(pending)} shards to do ({source.describe()})"
    images = sum(record.rows_in for record in done.values())
    return (
        f"{len(pending)} of {len(shards)} shards to do ({source.describe()}); {len(done)} shards "
        f"({images:,} images) done before are skipped and not counted below"
    )


def _count_in_background(source: Source, pending: list[Shard], progress: Progress) -> None:
    """Set the display's total to the images of the `pending` shards, counted beside the job (a
    Parquet footer per file on a bucket may take a while); until then it says it is counting."""
    if progress.quiet:
        return
    progress.set_total(None, note="counting the total")

    def count() -> None:
        try:
            rows = source.count_rows(pending)
        except Exception:  # the total only serves the display; the job reads every shard anyway
            rows = [None]
        known = [r for r in rows if r is not None]
        if len(known) == len(rows):
            progress.set_total(sum(known))
        else:
            progress.set_total(None, note=source.uncounted)

    threading.Thread(target=count, name="raeflow-count-images", daemon=True).start()


def _connect(run: RunOptions) -> None:
    """Join the cluster (or start a private Ray), check GPUs, keep Ray Data's log lines off the console."""
    connect_ray(run.address, verbose=run.verbose)
    if run.gpu:
        require_gpus(1)
    if not run.verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)


def _stream(
    job: BatchJob,
    pending: list[Shard],
    manifest: Manifest,
    progress: Progress,
    received: list[int],
    retried: list[StoreRetries],
    sigint: SigintWatch,
) -> Iterator[ShardRecord]:
    """Run the pipeline over `pending` shards; yield each shard's record once it is committed.

    Between batches, `sigint.check()` raises `KeyboardInterrupt` for a Ctrl-C that was swallowed.

    Adds the bytes of the commit records the driver receives to `received[0]`, and the store
    requests the workers retried (as the records and the shard-finishing tasks say) to `retried[0]`.
    """
    ds = pipeline(job, pending)
    books = _Books(job, manifest, dict(PLACEMENT), retried)
    books.add_shards(pending)
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0))
    # Closed on any exit: a commit that fails (a full disk) or Ctrl-C would otherwise leave Ray
    # Data's executor thread running until the traceback is freed, and Ray's shutdown at exit
    # under it ends the process with status 1 ("the core worker has already been shutdown").
    with contextlib.closing(batches):
        for batch in batches:
            assert isinstance(batch, pa.Table)
            received[0] += batch.nbytes
            retried[0] += retries_in(batch)
            for record in batch.to_pylist():
                shard = books.open[record["shard"]]
                if shard.add(record):
                    progress.advance(record["rows_in"], rejected=record["rows_rejected"])
                if shard.complete:
                    yield from books.commit(shard)
            yield from books.finished(wait=False)
            sigint.check()
    # The stream has ended: every read task ran to its end, so every shard is complete
    # (shards with no rows at all sent no record).
    for shard in list(books.open.values()):
        if shard.total is not None and not shard.complete:
            raise RuntimeError(f"shard {shard.shard.name}: {shard.rows} of {shard.total} rows were written")
        yield from books.commit(shard)
    yield from books.finished(wait=True)


def pipeline(job: BatchJob, pending: list[Shard]) -> Any:
    """The job's Ray Data pipeline over `pending` shards: it yields `COMMIT_SCHEMA` records.

    Without --gpu, and with enough shards to go round (`fuses_read`), the read is fused into the
    predictor actors: each actor reads and decodes a shard's blocks, predicts and writes them in one
    process, so no decoded block crosses the object store and no core waits between a decode task
    and an actor (docs/batch.md, "Where the time goes"). Otherwise decoding runs in separate CPU
    tasks, preferring decode-labelled nodes: with --gpu it scales apart from the GPUs, and the
    blocks of a few shards still spread over every actor.
    """
    from raeflow.data.dataset import read_dataset

    fused = fuses_read(job.run, len(pending))
    read_args: dict[str, Any] = dict(PLACEMENT)
    if fused:  # Ray Data fuses a read into the next operator when their resource requests match
        read_args["num_cpus"] = job.run.worker_cpus
    ds = read_dataset(
        BatchSource(job.source, job.decode),
        pending,
        batch_rows=job.run.batch_size,
        schema=DECODED_SCHEMA,
        **read_args,
    )
    ds.context.target_max_block_size = job.block_bytes
    # Let the first actors (one per node) start before any block is handed out, so an actor that
    # comes up first cannot take every block of a small job while the others still load the model.
    ds.context.wait_for_min_actors_s = ACTOR_START_SECONDS
    if not fused and not job.run.gpu:
        # Each CPU actor holds one block at a time (`predictor_pool`), so Ray Data's utilisation
        # (blocks held per actor) never reaches its default 1.75 to add actors: add one as soon as
        # every actor is busy and CPUs are free (the reads of a few shards are done).
        ds.context.autoscaling_config = dataclasses.replace(
            ds.context.autoscaling_config, actor_pool_util_upscaling_threshold=1.0
        )
    return ds.map_batches(
        PredictAndWrite,  # type: ignore[arg-type]  # a callable class Ray runs in an actor pool
        fn_constructor_kwargs={
            "predictor": job.predictor,
            "predictor_kwargs": job.predictor_kwargs,
            "writer": job.writer,
            "out": job.out.uri,
            "batch_size": job.run.batch_size,
            "precision": job.run.precision,
            "threads": None if job.run.gpu else max(1, int(job.run.worker_cpus)),  # one per reserved CPU
        },
        compute=predictor_pool(job.run, fused=fused),
        # One block per call (rows of one shard, sliced to batch_size for the model); Ray Data wants
        # a number of rows when actors hold GPUs: a block's worth, so parts stay as large.
        batch_size=rows_per_block(job) if job.run.gpu else None,
        batch_format="pyarrow",
        num_gpus=1 if job.run.gpu else None,
        **(read_args if fused else {"num_cpus": job.run.worker_cpus}),
    )  # Ray Data's actor pools restart a lost actor and redo its block (max_restarts=-1 by default)


def rows_per_block(job: BatchJob) -> int:
    """Rows in a block of decoded images: `block_bytes` of them at the decoded size, or `batch_size`
    rows when images keep their own sizes (a denoise writes one file per image anyway)."""
    decode = job.decode
    if decode.height and decode.width:
        pixels = decode.height * decode.width * (decode.channels or 3)
        return max(job.run.batch_size, job.block_bytes // pixels)
    return job.run.batch_size


def fuses_read(run: RunOptions, num_shards: int) -> bool:
    """Whether the job reads inside its predictor actors: on CPUs, with at least
    `FUSED_SHARDS_PER_ACTOR` shards per actor of the pool (one actor reads a whole shard), or
    whenever an actor (`--worker-cpus`) leaves no whole CPU beside it on any node: a separate read
    task could then never start, and the job would wait for ever."""
    if run.gpu:
        return False
    if run.worker_cpus > _largest_node_cpus() - 1:
        return True
    return num_shards >= FUSED_SHARDS_PER_ACTOR * _most_actors(run)


def _largest_node_cpus() -> float:
    import ray

    return max((node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]), default=0.0)


def _most_actors(run: RunOptions) -> int:
    import ray

    if run.workers is not None:  # an autoscaling cluster may not have these nodes yet
        return run.workers
    resources = ray.cluster_resources()
    if run.gpu:
        return max(1, int(resources.get("GPU", 1)))
    return max(1, int(resources.get("CPU", 1) // run.worker_cpus))


def predictor_pool(run: RunOptions, *, fused: bool) -> Any:
    """The elastic actor pool: from one actor per node (with a CPU, or a GPU with --gpu) up to --workers,
    or without it one per GPU with --gpu, else one per `worker_cpus` CPUs that the cluster has now.
    It starts at its largest when the actors also read (`fused`, see `fuses_read`)."""
    import ray

    kind = "GPU" if run.gpu else "CPU"
    most = _most_actors(run)
    nodes = sum(1 for node in ray.nodes() if node["Alive"] and node["Resources"].get(kind, 0) > 0)
    # One actor per node (Ray Data spreads them) from the start and at least until the end, so no
    # node sits idle while a replacement actor loads the model; more while blocks queue up.
    least = max(1, min(most, nodes))
    # Actors that also read leave no CPU to decode tasks: every CPU has an actor's work from the start.
    initial = most if fused else least
    # Unfused on CPUs (a job of few shards), an actor takes one block at a time: Ray Data's default of
    # two queued a small job's blocks on the first actor while the actors added later had none (a
    # one-shard denoise of 6 photos, 2 blocks, ran on one core of two). A GPU actor keeps its next
    # block queued, fetched while it computes.
    in_flight = None if fused or run.gpu else 1
    return ray.data.ActorPoolStrategy(
        min_size=least, max_size=most, initial_size=initial, max_tasks_in_flight_per_actor=in_flight
    )


class _Books:
    """Open shards and the commits in flight (mirrors whose shard files are built by a Ray task)."""

    def __init__(
        self, job: BatchJob, manifest: Manifest, task_args: dict[str, Any], retried: list[StoreRetries]
    ) -> None:
        self.job = job
        self.retried = retried
        self.manifest = manifest
        self.task_args = task_args
        self.open: dict[int, OpenShard] = {}
        self.finishing: dict[Any, OpenShard] = {}
        self.num_committed = 0
        self.crash_after = int(os.environ.get(CRASH_HOOK, "-1"))
        self._finish: Any = None

    def add_shards(self, shards: list[Shard]) -> None:
        self.open.update({shard.index: OpenShard(shard) for shard in shards})

    def commit(self, shard: OpenShard) -> Iterator[ShardRecord]:
        """Commit a complete shard now, or start its `finish_shard` task."""
        del self.open[shard.shard.index]
        if not self.job.writer.finishes_shards:
            yield self._write(shard, shard.files())
            return
        import ray

        if self._finish is None:
            self._finish = ray.remote(_finish_shard).options(**self.task_args, max_retries=3)
        ref = self._finish.remote(self.job.writer, self.job.out.uri, shard.shard, shard.files())
        self.finishing[ref] = shard

    def finished(self, *, wait: bool) -> Iterator[ShardRecord]:
        """Records of shards whose `finish_shard` task is done (all of them with `wait`)."""
        import ray

        while self.finishing:
            ready, _ = ray.wait(list(self.finishing), num_returns=1, timeout=None if wait else 0)
            if not ready:
                return
            shard = self.finishing.pop(ready[0])
            outputs, retried = ray.get(ready[0])
            self.retried[0] += retried
            yield self._write(shard, outputs)

    def _write(self, shard: OpenShard, outputs: list[str]) -> ShardRecord:
        if self.num_committed == self.crash_after:  # test hook: die mid-commit, leaving a temporary file
            with self.manifest.out.open_atomic(f"_manifest/shard-{shard.shard.index:05d}.crash"):
                os._exit(3)
        record = shard.record(outputs)
        self.manifest.write_record(record, shard.hashes())
        self.num_committed += 1
        return record


def _finish_shard(
    writer: PartWriter, out: str, shard: Shard, parts: list[str]
) -> tuple[list[str], StoreRetries]:
    """`writer.finish_shard` in a Ray task; also returns the store requests the task retried."""
    before = store_retries()
    outputs = writer.finish_shard(OutputDir(out), shard, parts)
    return outputs, store_retries() - before
