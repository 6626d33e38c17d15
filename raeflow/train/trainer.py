"""`raeflow train`: the per-worker loop (`loop.py`) run by a `ray.train.torch.TorchTrainer`.

    summary = run_training(TrainConfig(data="builtin:mnist", model="conv", out="runs/mnist"))

The driver reads one image to plan the run (`plan.py`), builds two streaming Ray Data datasets
(training and validation split, decoded to the model's size in map tasks) that Ray Train splits
across the workers, and starts the trainer with the run's storage at `<out>/checkpoints/`
(`RunConfig(storage_path=<out>, name="checkpoints")`). Running the same command into the same
`--out` again continues from the latest checkpoint there, and the driver does the same by itself
after a worker's node goes away (`--max-node-losses`) or a worker fails (`--max-failures`), saying
so (`restarts.py`). While the trainer runs, the driver prints each epoch's line as rank 0 adds it
to `<out>/metrics.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import ray
import ray.train
import ray.train.torch
import torch
from fsspec.implementations.local import LocalFileSystem
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

from raeflow import console
from raeflow.connection import connect_ray, require_gpus, resolve_address
from raeflow.data.dataset import read_dataset
from raeflow.data.sources import open_source
from raeflow.errors import ConfigError, JobError
from raeflow.models import create_model
from raeflow.models.bundle import read_bundle_meta
from raeflow.progress import Progress
from raeflow.train.batches import DecodeForTraining, shuffle_rows
from raeflow.train.checkpoints import CHECKPOINTS_DIR, checkpoint_name
from raeflow.train.config import TrainConfig
from raeflow.train.loop import (
    FAIL_AT_ENV,
    FAIL_MARKER_ENV,
    HOLD_AT_ENV,
    load_initial_weights,
    train_worker,
    worker_threads,
    worse_than_input,
)
from raeflow.train.metrics_log import MetricsLog, format_epoch
from raeflow.train.plan import RunPlan, plan_run
from raeflow.train.restarts import (
    SNAPSHOT_FILE,
    Failure,
    Restarts,
    alive_nodes,
    checkpoint_epoch,
    classify,
    failure_line,
    gone_node,
    is_start_timeout,
    start_timeout,
)

DECODE_BATCH_ROWS = 256
"""Rows per Ray Data decode task batch."""


@dataclass
class TrainSummary:
    """What a finished run reports: where things are and how it ended."""

    out: str
    """The run's output URI."""
    bundle: str
    """URI of the final model bundle (`<out>/model`)."""
    epochs: int
    """Epochs the final model has been trained for."""
    resumed_from: int
    """Epochs already done when this command started (0 for a fresh run)."""
    seconds: float
    """Wall time of this command's training."""
    last: dict[str, Any] = field(default_factory=dict)
    """The last epoch's metrics record."""
    warning: str | None = None
    """Set when the model ends worse than its noisy input (`loop.worse_than_input`), with what to try."""
    restarts: list[str] = field(default_factory=list)
    """One line per restart from a checkpoint during this command (`restarts.Restarts.lines`)."""


class RayRuntime:
    """`WorkerRuntime` of a Ray Train worker: dataset shards, Ray checkpoints, DDP."""

    def __init__(self, config: TrainConfig):
        context = ray.train.get_context()
        self.config = config
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.node_id = ray.get_runtime_context().get_node_id()

    def batches(self, split: str, epoch: int) -> Iterable[dict[str, Any]]:
        shuffle = split == "train"
        return ray.train.get_dataset_shard(split).iter_torch_batches(
            batch_size=self.config.batch_size,
            local_shuffle_buffer_size=shuffle_rows(self.config) if shuffle else None,
            local_shuffle_seed=self.config.seed * 7919 + epoch * 131 + self.rank if shuffle else None,
            device=self.device,
        )

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(epoch))

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def show(self, record: dict[str, Any]) -> None:
        pass  # the driver prints records from metrics.jsonl


def _train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker: torch runs one thread per CPU the worker reserved."""
    config: TrainConfig = loop_config["config"]
    threads = worker_threads(loop_config.get("cpus"))
    if threads and not config.gpu:
        torch.set_num_threads(threads)
    train_worker(config, loop_config["plan"], RayRuntime(config))


def _storage(out: str) -> tuple[str, Any]:
    """`RunConfig` storage path and filesystem for an output URI (buckets go through fsspec)."""
    fs, path = fsspec.core.url_to_fs(out)
    if isinstance(fs, LocalFileSystem):
        return path, None
    import pyarrow.fs

    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _absolute(uri: str) -> str:
    """A local path made absolute (workers run in other folders); URIs with a scheme stay as they are."""
    if "://" in uri or uri.startswith("builtin:"):
        return uri
    return os.path.abspath(uri)


def has_checkpoint(out: str) -> bool:
    """Whether `--out` holds a Ray Train run that can be resumed."""
    fs, path = fsspec.core.url_to_fs(f"{out.rstrip('/')}/{CHECKPOINTS_DIR}/{SNAPSHOT_FILE}")
    return fs.exists(path)


def _check_same_model(config: TrainConfig, plan: RunPlan) -> None:
    """Refuse to continue a run in --out that trained a different architecture."""
    fs, path = fsspec.core.url_to_fs(f"{config.out.rstrip('/')}/{CHECKPOINTS_DIR}/{SNAPSHOT_FILE}")
    latest = json.loads(fs.cat_file(path)).get("latest_checkpoint_result") or {}
    if not latest.get("checkpoint_dir_name"):
        return
    meta = read_bundle_meta(f"{config.out.rstrip('/')}/{CHECKPOINTS_DIR}/{latest['checkpoint_dir_name']}")
    built = create_model(plan.model_name, **plan.model_args)
    theirs = meta.get("architecture", {})
    if theirs.get("name") != built.arch_name:
        raise ConfigError(
            f"{config.out} holds a run of {theirs.get('name')!r} but this command builds "
            f"{built.arch_name!r}; use a new --out, or the same model settings"
        )
    # Rebuilt by this version of the family, so an argument added since the run started counts
    # at its default rather than as a difference.
    stored = create_model(built.arch_name, **theirs.get("args", {})).arch_args
    differ = {k: (stored.get(k), v) for k, v in built.arch_args.items() if stored.get(k) != v}
    if differ:
        changes = ", ".join(f"{k}: {old!r} in the run, {new!r} now" for k, (old, new) in differ.items())
        raise ConfigError(
            f"{config.out} holds a run of {built.arch_name!r} with other model settings ({changes}); "
            "use a new --out, or the same model settings"
        )


def build_datasets(config: TrainConfig, source, plan: RunPlan) -> dict[str, Any]:
    """Streaming training and validation datasets: read shards, keep the split, decode to the plan's size."""
    rows = read_dataset(source)
    if config.limit is not None:
        rows = rows.limit(config.limit)
    datasets: dict[str, Any] = {}
    for split in ("train", "val"):
        decode = DecodeForTraining(
            split=split,
            channels=plan.channels,
            height=plan.height,
            width=plan.width,
            val_fraction=config.val_fraction,
            patch_size=config.patch_size,
            patches=config.patches_per_image,
            augment=config.augment,
            seed=None,  # Ray Data reruns the map every epoch: fresh patches each time
            rejected_out=config.out,  # bad images listed in <out>/_rejected/ (train/rejected.py)
        )
        datasets[split] = rows.map_batches(decode, batch_format="pyarrow", batch_size=DECODE_BATCH_ROWS)
    return datasets


def _connect(config: TrainConfig) -> None:
    """Join --address / RAY_ADDRESS, or start a private local Ray with room for the data tasks.

    `num_cpus` only sizes a private local Ray: a cluster that is joined keeps its own resources.
    """
    connect_ray(config.address, num_cpus=config.local_cpus())
    if config.gpu:
        require_gpus(config.workers)


class _EpochPrinter:
    """Shows training progress while the trainer runs (a background thread of the driver).

    Each new record of metrics.jsonl is echoed as the epoch's line (not with --quiet); a
    `raeflow.progress.Progress` over the epochs adds a live bar with rate and ETA on a terminal.
    """

    def __init__(self, log: MetricsLog, echo):
        self.log, self.echo = log, echo
        self.seen = {(r.get("epoch"), r.get("restored_from_epoch")) for r in log.read()}
        self.stop = threading.Event()
        self.lock = threading.Lock()  # the thread and `say` both print new records
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.progress = Progress("train", unit="epochs", plain_lines=False)

    def _print_new(self) -> None:
        with self.lock, contextlib.suppress(Exception):  # a file being replaced is read again next time
            for record in self.log.read():
                key = (record.get("epoch"), record.get("restored_from_epoch"))
                if key not in self.seen:
                    self.seen.add(key)
                    self._show(record)

    def _show(self, record: dict[str, Any]) -> None:
        if self.progress.total is None and record.get("epochs"):
            self.progress.set_total(int(record["epochs"]))
            self.progress.done = int(record.get("epoch", 1)) - 1  # a resumed run starts part way
        ahead = max(0, int(record.get("epoch", 0)) - self.progress.done)  # 0 for an epoch done again
        if console.is_quiet():
            self.progress.advance(ahead)
            return
        if self.progress.live:
            self.progress.say(format_epoch(record))
        else:
            self.echo(format_epoch(record))
        self.progress.advance(ahead)

    def say(self, line: str) -> None:
        """Show a line between the epochs' (a restart), unless --quiet: the summary repeats it."""
        if console.is_quiet():
            return
        self._print_new()  # the epochs before it first
        if self.progress.live:
            self.progress.say(line)
        else:
            self.echo(line)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            self._print_new()

    def __enter__(self) -> _EpochPrinter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self._print_new()
        self.progress.close()


def _make_trainer(
    config: TrainConfig, source, plan: RunPlan, cpus: float, *, restarted: bool
) -> ray.train.torch.TorchTrainer:
    """The run's TorchTrainer; Ray Train retries nothing itself (`restarts.py` says why)."""
    test_env = {
        name: os.environ[name] for name in (FAIL_AT_ENV, HOLD_AT_ENV, FAIL_MARKER_ENV) if name in os.environ
    }
    storage_path, storage_fs = _storage(config.out)
    return ray.train.torch.TorchTrainer(
        _train_fn_per_worker,
        train_loop_config={"config": config, "plan": plan, "cpus": cpus},
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if config.gpu else {})},
            placement_strategy=config.placement.upper(),
        ),
        run_config=RunConfig(
            name=CHECKPOINTS_DIR,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            # A first start waits for room as long as Ray does (-1); a restart gives up after its start
            # timeout (--node-wait, set by `restarts.start_timeout`), with one line.
            failure_config=FailureConfig(  # type: ignore[call-arg]  # Train V2's (mypy sees V1's)
                max_failures=0, max_preemption_failures=0, controller_failure_limit=0 if restarted else -1
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            worker_runtime_env={"env_vars": test_env} if test_env else None,  # type: ignore[call-arg]
        ),
        datasets=build_datasets(config, source, plan),
        # --limit takes the first N rows in source order, so the same images every epoch and rerun.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True))
        if config.limit
        else None,
    )


def _fit_with_restarts(config: TrainConfig, source, plan: RunPlan, printer: _EpochPrinter) -> list[str]:
    """Run the trainer to the end; after a lost node (--max-node-losses) or a failed worker
    (--max-failures) run it again from the latest checkpoint. Returns one line per restart."""
    cpus = config.worker_cpus(local=resolve_address(config.address) is None)
    restarts = Restarts(config)
    while True:
        restarted = bool(restarts.lines)
        nodes = alive_nodes()
        try:
            with start_timeout(config.node_wait if restarted else None):
                _make_trainer(config, source, plan, cpus, restarted=restarted).fit()
            return restarts.lines
        except ray.train.TrainingFailedError as err:
            if restarted and is_start_timeout(err):
                raise JobError(restarts.no_room(cpus)) from None
            line = failure_line(err)
            failure = classify(err, line)
            gone = gone_node(nodes) if failure.kind == "worker" else None  # Ray may not know yet
            failure = Failure("node", gone) if gone else failure
            if not restarts.allows(failure):
                raise JobError(_failed(config, line, failure)) from None
            records = printer.log.read()
            epoch = min(config.epochs, (records[-1]["epoch"] if records else 0) + 1)  # the one under way
            printer.say(restarts.record(failure, epoch, checkpoint_epoch(config.out)))


def _failed(config: TrainConfig, line: str, failure: Failure) -> str:
    """The one-line error of a run that is not restarted again."""
    checkpointed = has_checkpoint(config.out)
    where = "from its latest checkpoint" if checkpointed else "(no checkpoint yet: from scratch)"
    option = {"node": "--max-node-losses", "worker": "--max-failures"}.get(failure.kind)
    retry = f", or raise {option} to retry automatically" if option else ""
    return f"training failed ({line}); rerun the same command to continue {where}{retry}"


def run_training(config: TrainConfig, echo=print) -> TrainSummary:
    """Train (or continue training) as `config` says on Ray Train; returns where the bundle is."""
    config = dataclasses.replace(config.validate(), data=_absolute(config.data), out=_absolute(config.out))
    source = open_source(
        config.data, config.format, image_column=config.image_column, storage_options=config.storage_options
    )
    plan = plan_run(config, source)
    resumable = has_checkpoint(config.out)
    if config.resume and not resumable:
        raise ConfigError(
            f"--resume: {config.out} holds no checkpoint to continue from; drop --resume to start"
        )
    if resumable:
        _check_same_model(config, plan)
    elif config.init_from:  # refused here, before Ray starts, when the weights do not fit
        load_initial_weights(create_model(plan.model_name, **plan.model_args), config.init_from)
    log = MetricsLog(config.out)
    resumed_from = max((r["epoch"] for r in log.read()), default=0) if resumable else 0
    _connect(config)
    if resumed_from:
        echo(f"continuing the run in {config.out} after epoch {resumed_from}")
    start = time.perf_counter()
    with _EpochPrinter(log, echo) as printer:
        restarts = _fit_with_restarts(config, source, plan, printer)
    for line in restarts:  # the summary's first lines, --quiet too
        echo(line)
    bundle = f"{config.out.rstrip('/')}/model"
    meta = read_bundle_meta(bundle)
    records = log.read()
    return TrainSummary(
        out=config.out,
        bundle=bundle,
        epochs=int(meta.get("training", {}).get("epochs", 0)),
        resumed_from=resumed_from,
        seconds=time.perf_counter() - start,
        last=records[-1] if records else {},
        warning=worse_than_input(records[-1]) if records else None,
        restarts=restarts,
    )
