"""The per-worker training loop: the same code on each Ray Train worker and in one plain process.

Nothing here imports Ray. What differs between a Ray worker and a plain process (where batches come
from, how checkpoints are stored, how the model is wrapped) sits behind `WorkerRuntime`:
`trainer.RayRuntime` inside `ray.train.torch.TorchTrainer`, `plain.PlainRuntime` for world size 1
with PyTorch only (its command line is `python -m raeflow.train.plain`). This module imports
neither of them.

Per epoch: train on the worker's share of the training split (Adam, cosine learning rate, bf16
autocast where the device runs it natively (`--precision`), channels_last for convolutional models,
noisy input and clean target with --denoise), validate on its share of the held-out
split, sum the metrics over workers, checkpoint (rank 0 writes a bundle; all ranks report), then
rank 0 appends to metrics.jsonl and writes the epoch's image grid (and, at the global steps of
--grid-steps, a grid of the training batch). At the end rank 0 writes the final bundle to
`<out>/model/`.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from raeflow.data.noise import Noise, parse_noise
from raeflow.hardware import cpu_description
from raeflow.models import create_model, save_bundle
from raeflow.models.precision import (
    Precision,
    as_model_input,
    checked_precision,
    prepare_model,
    resolve_precision,
)
from raeflow.report.metrics import image_metrics
from raeflow.train.checkpoints import TrainerState, read_checkpoint, write_checkpoint
from raeflow.train.config import TrainConfig
from raeflow.train.grids import write_grid
from raeflow.train.metrics_log import MetricsLog
from raeflow.train.plan import RunPlan

FAIL_AT_ENV = "RAEFLOW_TEST_FAIL_AT"
"""Test hook: `rank:R,step:S` makes rank R exit abruptly at global step S, once (see FAIL_MARKER_ENV)."""
FAIL_MARKER_ENV = "RAEFLOW_TEST_FAIL_MARKER"
"""Test hook: a file created when the failure fires, so a restarted worker group does not fail again."""
HOLD_AT_ENV = "RAEFLOW_TEST_HOLD_AT"
"""Test hook: `rank:R,step:S` makes rank R stop at global step S, once, and wait there for its node to be
taken away; the marker file (FAIL_MARKER_ENV) says `node <id>` first, so the test knows which node."""
MIN_LR_FACTOR = 0.1
"""The cosine schedule ends at this fraction of --lr."""


class WorkerRuntime(Protocol):
    """Where the loop runs: which worker it is, where batches come from, where checkpoints go."""

    rank: int
    world_size: int
    device: torch.device
    node_id: str

    def batches(self, split: str, epoch: int) -> Iterable[dict[str, Any]]:
        """This worker's batches of one split for one epoch: `image` uint8 (N, C, H, W), `label` (N,)."""
        ...

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        """The latest checkpoint of this run as a local folder while the context lasts, or None."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        """Hand over an epoch's metrics and, on rank 0 when due, its checkpoint folder (all ranks call)."""
        ...

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model as training calls it (DistributedDataParallel across workers)."""
        ...

    def show(self, record: dict[str, Any]) -> None:
        """Show one epoch's record to the user (rank 0 only calls it)."""
        ...


def load_initial_weights(model: torch.nn.Module, uri: str) -> None:
    """Copy the weights of the bundle at `uri` into `model` (--init-from); `ConfigError` when they do
    not fit it (another architecture or size)."""
    from raeflow.errors import ConfigError
    from raeflow.models import load_bundle

    source = load_bundle(uri).model
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as err:
        raise ConfigError(
            f"--init-from {uri}: its weights do not fit model {getattr(model, 'arch_name', '?')!r} "
            f"({str(err).splitlines()[0]}); pick a bundle of the same architecture"
        ) from None


def worse_than_input(record: dict[str, Any]) -> str | None:
    """A plain warning, with what to try, when a denoising run's model ends worse than its noisy input
    (validation PSNR below the noisy input's own); None otherwise."""
    psnr, noisy = record.get("val_psnr"), record.get("val_noisy_psnr")
    if psnr is None or noisy is None or psnr >= noisy:
        return None
    return (
        f"warning: the model ends WORSE than its input: validation PSNR {psnr:.2f} dB against "
        f"{noisy:.2f} dB for the noisy images themselves, so using it would damage images. Try more "
        "--epochs; a residual denoiser, which starts from the input (--model denoiser --preset "
        "denoise_grey or denoise_rgb); --patch-size 64 for photos; or a lower --lr"
    )


def lr_for_epoch(config: TrainConfig, epoch: int) -> float:
    """Cosine schedule over epochs 1..config.epochs, from --lr down to MIN_LR_FACTOR * --lr."""
    progress = (epoch - 1) / max(1, config.epochs - 1)
    low = config.lr * MIN_LR_FACTOR
    return low + 0.5 * (config.lr - low) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _sum_over_workers(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all workers (identity in a single process)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


def _gather_from_workers(value: Any) -> list[Any]:
    """`value` from every worker, in rank order (a one-item list in a single process)."""
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, value)
        return gathered
    return [value]


def _test_hooks(rank: int, step: int, node_id: str) -> None:
    """FAIL_AT_ENV / HOLD_AT_ENV: at the named rank and step, once, exit abruptly or stop and wait."""
    marker = Path(os.environ.get(FAIL_MARKER_ENV, Path(tempfile.gettempdir()) / "raeflow-test-fail-marker"))
    for name in (FAIL_AT_ENV, HOLD_AT_ENV):
        spec = os.environ.get(name)
        if not spec or marker.exists():
            continue
        target = dict(part.split(":", 1) for part in spec.split(","))
        if int(target["rank"]) != rank or int(target["step"]) != step:
            continue
        what = "failed" if name == FAIL_AT_ENV else "held"
        partial = marker.with_name(marker.name + ".partial")  # renamed: the test never reads half a line
        partial.write_text(f"node {node_id}\nrank {rank} {what} at step {step}\n")
        partial.replace(marker)
        if name == FAIL_AT_ENV:
            os._exit(1)
        while True:  # mid-epoch, until the node goes (its peers wait in their next all-reduce)
            time.sleep(1.0)


def _as_images(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch tensors on the device: images float (N, C, H, W) in [0, 1], channels_last in memory
    (converted while still uint8, a quarter of the bytes), labels int64 (N,)."""
    images = as_model_input(torch.as_tensor(batch["image"]))
    if device.type == "cuda":
        images = images.pin_memory()
    images = images.to(device, non_blocking=True)
    labels = torch.as_tensor(batch["label"]).to(device, non_blocking=True).long()
    return images.float().div_(255.0), labels


def worker_threads(cpus: float | None) -> int | None:
    """Torch CPU threads for a worker that reserved `cpus` CPUs: one per whole CPU (None: leave as is)."""
    return max(1, int(cpus)) if cpus else None


def _probe_size(config: TrainConfig, plan: RunPlan) -> tuple[int, int]:
    """A small input size the model takes (a patch, or the training size), for the bf16 check."""
    if config.patch_size:
        return config.patch_size, config.patch_size
    return plan.height, plan.width


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


class EpochRunner:
    """Trains and validates one model for one worker, epoch by epoch."""

    def __init__(self, config: TrainConfig, plan: RunPlan, runtime: WorkerRuntime):
        self.config, self.plan, self.runtime = config, plan, runtime
        torch.manual_seed(config.seed)  # same initial weights on every rank (DDP also broadcasts)
        wanted = resolve_precision(config.precision, runtime.device)  # decided here, where it runs
        model = create_model(plan.model_name, **plan.model_args).to(runtime.device)
        self.model = prepare_model(model, wanted)
        probe = torch.zeros((2, plan.channels, *_probe_size(config, plan)), device=runtime.device)
        self.precision: Precision = checked_precision(self.model.eval(), wanted, probe)
        self.model.train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.noise: Noise | None = parse_noise(config.denoise) if config.denoise else None
        self.state = TrainerState(epochs_done=0, step=0)
        self.restored_from = 0
        with runtime.latest_checkpoint() as checkpoint:
            if checkpoint is not None:
                self.state = read_checkpoint(checkpoint, self.model, self.optimizer)
                self.restored_from = self.state.epochs_done
            elif config.init_from:
                load_initial_weights(self.model, config.init_from)
        self.trained = runtime.wrap_model(self.model)
        self.grid_steps = set(config.grid_steps)

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator(device=self.runtime.device).manual_seed(self.config.seed * 1_000_003 + salt)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this worker's training share; returns summed loss terms, images and seconds."""
        self.trained.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr_for_epoch(self.config, epoch)
        noise_rng = self._generator(epoch * self.runtime.world_size + self.runtime.rank)
        loss_sum, num_images, start = 0.0, 0, time.perf_counter()
        for batch in self.runtime.batches("train", epoch):
            clean, labels = _as_images(batch, self.runtime.device)  # (N, C, H, W)
            inputs = self.noise(clean, generator=noise_rng) if self.noise else clean
            with self.precision.autocast():
                out = self.trained(inputs, labels)
            out = {name: value.float() for name, value in out.items()}  # losses and KL in float32
            losses = self.model.loss(clean, out, labels)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            self.optimizer.step()
            self.state.step += 1
            loss_sum += float(losses["loss"].detach()) * len(clean)
            num_images += len(clean)
            if self.state.step in self.grid_steps and self.runtime.rank == 0:
                recon = out["recon"].detach().clamp(0, 1)
                rows = self._grid_rows(clean, inputs, recon, labels, with_samples=False)
                write_grid(rows, f"{self.config.out.rstrip('/')}/grids/step-{self.state.step:07d}.png")
            _test_hooks(self.runtime.rank, self.state.step, self.runtime.node_id)
        return {"loss_sum": loss_sum, "images": num_images, "seconds": time.perf_counter() - start}

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], list[torch.Tensor]]:
        """Summed validation metrics of this worker's share, and grid rows from its first batch."""
        self.model.eval()
        noise_rng = self._generator(10_007 + self.runtime.rank)  # the same noisy inputs every epoch
        sums = {"loss": 0.0, "psnr": 0.0, "ssim": 0.0, "noisy_psnr": 0.0, "images": 0.0}
        grid_rows: list[torch.Tensor] = []
        for batch in self.runtime.batches("val", 0):
            clean, labels = _as_images(batch, self.runtime.device)
            inputs = self.noise(clean, generator=noise_rng) if self.noise else clean
            with self.precision.autocast():
                out = self.model(inputs, labels)
            out = {name: value.float() for name, value in out.items()}  # metrics in float32
            recon = out["recon"].clamp(0, 1)
            scores = image_metrics(clean, recon)  # each (N,)
            sums["loss"] += float(self.model.loss(clean, out, labels)["loss"]) * len(clean)
            sums["psnr"] += float(scores["psnr"].sum())
            sums["ssim"] += float(scores["ssim"].sum())
            if self.noise:
                sums["noisy_psnr"] += float(image_metrics(clean, inputs)["psnr"].sum())
            sums["images"] += len(clean)
            if not grid_rows:
                grid_rows = self._grid_rows(clean, inputs, recon, labels)
        return sums, grid_rows

    def _grid_rows(
        self,
        clean: torch.Tensor,
        inputs: torch.Tensor,
        recon: torch.Tensor,
        labels: torch.Tensor,
        *,
        with_samples: bool = True,
    ) -> list[torch.Tensor]:
        """Originals / noisy inputs / reconstructions (/ samples from the prior for VAEs)."""
        n = self.config.grid_images
        rows = [clean[:n]] + ([inputs[:n].clamp(0, 1)] if self.noise else []) + [recon[:n]]
        if self.model.generative and with_samples:
            y = labels[:n] if self.model.conditional else None
            rows.append(self.model.sample(len(clean[:n]), y=y, generator=self._generator(99_991)))
        return [row.detach().cpu() for row in rows]

    def training_record(self, epochs_done: int) -> dict[str, Any]:
        """What the bundle says about how it was trained."""
        return {
            "data": self.config.data,
            "epochs": epochs_done,
            "noise": self.config.denoise or "none",
            "image_size": [self.plan.height, self.plan.width],
            "patch_size": self.config.patch_size,
            "patches_per_image": self.config.patches_per_image if self.config.patch_size else None,
            "augment": bool(self.config.augment and self.config.patch_size),
            "lr": self.config.lr,
            "seed": self.config.seed,
            "model": self.plan.model_name,
            "init_from": self.config.init_from,
            "channels": self.plan.channels,
            "workers": self.runtime.world_size,
            "batch_size": self.config.batch_size,
            "limit": self.config.limit,
            "val_fraction": self.config.val_fraction,
            "precision": self.precision.name,
            "cpu": cpu_description(),
            "device": _device_name(self.runtime.device),
            "threads": torch.get_num_threads(),
        }


def train_worker(config: TrainConfig, plan: RunPlan, runtime: WorkerRuntime) -> dict[str, Any]:
    """Run (or continue) training on this worker up to `config.epochs`; returns the last epoch's record."""
    runner = EpochRunner(config, plan, runtime)
    log = MetricsLog(config.out)
    node_ids = _gather_from_workers(runtime.node_id)
    if runtime.rank == 0:
        log.keep_epochs_up_to(runner.state.epochs_done)
    previous = log.read() if runtime.rank == 0 else []
    record: dict[str, Any] = previous[-1] if previous else {}
    for epoch in range(runner.state.epochs_done + 1, config.epochs + 1):
        epoch_start = time.perf_counter()
        train = runner.train_epoch(epoch)
        val, grid_rows = runner.validate()
        per_rank_images = _gather_from_workers(int(train["images"]))
        loss_sum, num_images, val_loss, psnr, ssim, noisy, num_val = _sum_over_workers(
            [
                train["loss_sum"],
                train["images"],
                val["loss"],
                val["psnr"],
                val["ssim"],
                val["noisy_psnr"],
                val["images"],
            ],
            runtime.device,
        )
        seconds = max(_gather_from_workers(train["seconds"]))
        record = {
            "epoch": epoch,
            "epochs": config.epochs,
            "train_loss": loss_sum / max(1.0, num_images),
            "val_loss": val_loss / max(1.0, num_val),
            "val_psnr": psnr / max(1.0, num_val),
            "val_ssim": ssim / max(1.0, num_val),
            "images_per_s": num_images / max(seconds, 1e-9),
            "train_seconds": seconds,
            "epoch_seconds": time.perf_counter() - epoch_start,
            "train_images": int(num_images),
            "val_images": int(num_val),
            "lr": lr_for_epoch(config, epoch),
            "step": runner.state.step,
            "workers": runtime.world_size,
            "rank_train_images": per_rank_images,
            "node_ids": node_ids,
            "restored_from_epoch": runner.restored_from,
            "precision": runner.precision.name,
            "threads": torch.get_num_threads(),
            # The node's 1/5/15-minute load: a figure from a contended machine is not a result.
            "load_average": [round(load, 2) for load in os.getloadavg()],
        }
        if runner.precision.note:  # bf16 forced without native support, or the model's fp32 fallback
            record["precision_note"] = runner.precision.note
        if config.denoise:
            record["val_noisy_psnr"] = noisy / max(1.0, num_val)
        runner.state.epochs_done = epoch
        if runner.state.best_val_loss is None or record["val_loss"] < runner.state.best_val_loss:
            runner.state.best_val_loss = record["val_loss"]
        if runtime.rank == 0:
            # Before the checkpoint: a run restarted from an earlier checkpoint drops this line again.
            log.append(record)
            if grid_rows:
                write_grid(grid_rows, f"{config.out.rstrip('/')}/grids/epoch-{epoch:04d}.png")
            runtime.show(record)
        due = epoch % config.checkpoint_every == 0 or epoch == config.epochs
        with tempfile.TemporaryDirectory(prefix="raeflow-ckpt-") as tmp:
            checkpoint_dir = None
            if due and runtime.rank == 0:
                checkpoint_dir = write_checkpoint(
                    Path(tmp) / "checkpoint",
                    runner.model,
                    runner.optimizer,
                    runner.state,
                    training=runner.training_record(epoch),
                    metrics=record,
                    settings=config.to_dict(),
                )
            runtime.report(record, checkpoint_dir, epoch)
    if runtime.rank == 0:
        save_bundle(
            runner.model,
            f"{config.out.rstrip('/')}/model",
            training=runner.training_record(runner.state.epochs_done),
            metrics=record,
            settings=config.to_dict(),
        )
    return record
