"""The training loop in one plain PyTorch process (world size 1), no Ray anywhere.

For profiling the loop where PyTorch is installed but Ray is not (a GPU box), and for quick runs:

    python -m raeflow.train.plain --data builtin:mnist --model conv --out runs/plain --epochs 2

Batches are read straight from the source (`Source.read_shard`) and decoded in this process;
checkpoints go to `<out>/checkpoints/checkpoint-epoch-NNNN/` (the layout Ray Train runs use) and
the newest is resumed from when the command is run again; images that cannot be used are listed
in `<out>/_rejected/rejected.parquet` (`raeflow.train.rejected`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import torch

from raeflow.commands.options import field_help
from raeflow.data.sources import open_source
from raeflow.errors import RaeflowError
from raeflow.train.batches import DecodeForTraining, iter_plain_batches, shuffle_rows
from raeflow.train.checkpoints import CHECKPOINTS_DIR, checkpoint_name
from raeflow.train.config import TrainConfig, parse_image_size, parse_model_args, parse_steps
from raeflow.train.loop import train_worker, worse_than_input
from raeflow.train.metrics_log import format_epoch
from raeflow.train.plan import RunPlan, plan_run
from raeflow.train.rejected import collect_rejected


class PlainRuntime:
    """`WorkerRuntime` for a single process: rank 0 of 1, batches decoded here, fsspec checkpoints."""

    rank = 0
    world_size = 1

    def __init__(self, config: TrainConfig, plan: RunPlan, *, quiet: bool = False):
        self.config, self.plan, self.quiet = config, plan, quiet
        self.device = torch.device("cuda" if config.gpu else "cpu")
        self.node_id = socket.gethostname()
        self.source = open_source(
            config.data,
            config.format,
            image_column=config.image_column,
            storage_options=config.storage_options,
        )
        self.fs, self.root = fsspec.core.url_to_fs(f"{config.out.rstrip('/')}/{CHECKPOINTS_DIR}")

    def batches(self, split: str, epoch: int) -> Iterable[dict[str, Any]]:
        decode = DecodeForTraining(
            split=split,
            channels=self.plan.channels,
            height=self.plan.height,
            width=self.plan.width,
            val_fraction=self.config.val_fraction,
            patch_size=self.config.patch_size,
            patches=self.config.patches_per_image,
            augment=self.config.augment,
            seed=self.config.seed * 7919 + epoch,
            rejected_out=self.config.out,  # bad images listed in <out>/_rejected/, as Ray Train runs do
        )
        seed = self.config.seed * 7919 + epoch if split == "train" else None
        for batch in iter_plain_batches(
            self.source,
            decode,
            self.config.batch_size,
            limit=self.config.limit,
            shuffle_seed=seed,
            shuffle_window=shuffle_rows(self.config),
        ):
            yield {"image": torch.from_numpy(batch["image"]), "label": torch.from_numpy(batch["label"])}

    def _checkpoint_paths(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        names = [path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(self.root, detail=False)]
        return sorted(f"{self.root}/{name}" for name in names if name.startswith("checkpoint-epoch-"))

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        paths = self._checkpoint_paths()
        if not paths:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="raeflow-restore-") as tmp:
            local = Path(tmp) / "checkpoint"
            self.fs.get(paths[-1] + "/", str(local) + "/", recursive=True)
            yield local

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        if checkpoint_dir is None:
            return
        target = f"{self.root}/{checkpoint_name(epoch)}"
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        self.fs.makedirs(target, exist_ok=True)
        for path in sorted(checkpoint_dir.iterdir()):
            self.fs.put_file(str(path), f"{target}/{path.name}")
        for stale in self._checkpoint_paths()[: -self.config.keep_checkpoints]:
            self.fs.rm(stale, recursive=True)

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def show(self, record: dict[str, Any]) -> None:
        if not self.quiet:
            print(format_epoch(record), flush=True)


def run_plain(config: TrainConfig, *, quiet: bool = False) -> dict[str, Any]:
    """Train (or continue training) in this process; returns the last epoch's record.

    The images it could not use end up in `<out>/_rejected/rejected.parquet` (each once, however
    many epochs met them), and unless `quiet` their count is printed in the Ray trainer's words.
    """
    config.validate()
    source = open_source(
        config.data, config.format, image_column=config.image_column, storage_options=config.storage_options
    )
    plan = plan_run(config, source)
    record = train_worker(config, plan, PlainRuntime(config, plan, quiet=quiet))
    rejected = collect_rejected(config.out)  # merges the per-batch pieces the decode step wrote
    if rejected.line() and not quiet:
        print(rejected.line(), flush=True)
    return record


def _parser() -> argparse.ArgumentParser:
    """Command-line options generated from `TrainConfig`'s fields and their docstrings."""
    parser = argparse.ArgumentParser(
        prog="python -m raeflow.train.plain", description="Train in one process with PyTorch only (no Ray)."
    )
    docs = field_help(TrainConfig)
    ray_only = {
        "workers",
        "cpus_per_worker",
        "address",
        "max_failures",
        "max_node_losses",
        "node_wait",
        "placement",
        "resume",
        "storage_options",
    }
    ray_only.add("model_args")  # added below: repeatable
    for field in dataclasses.fields(TrainConfig):
        if field.name in ray_only:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            action = argparse.BooleanOptionalAction if field.default is True else "store_true"
            parser.add_argument(flag, action=action, help=docs.get(field.name))
            continue
        annotation = str(field.type)
        kind = int if annotation.startswith("int") else float if annotation.startswith("float") else str
        required = field.name in ("data", "model")
        parser.add_argument(flag, type=kind, required=required, help=docs.get(field.name))
    parser.add_argument(
        "--model-arg", dest="model_args", action="append", default=[], help=docs.get("model_args")
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse options, train, print where the bundle is."""
    args = vars(_parser().parse_args(argv))
    args["image_size"] = parse_image_size(args.get("image_size"))
    args["grid_steps"] = parse_steps(args.get("grid_steps"))
    args["model_args"] = parse_model_args(args["model_args"])
    args["out"] = args.get("out") or "runs/plain"
    args["gpu"] = bool(args.get("gpu")) or torch.cuda.is_available()
    config = TrainConfig(**{key: value for key, value in args.items() if value is not None})
    try:
        record = run_plain(config)
    except RaeflowError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"model bundle: {config.out.rstrip('/')}/model  (last epoch {record.get('epoch', '?')})")
    warning = worse_than_input(record)
    if warning:
        print(warning)


if __name__ == "__main__":
    main()
