"""The settings of one training run: what `raeflow train` parses and every worker receives.

A `TrainConfig` is plain data (JSON-serialisable through `to_dict`), validated in one place
(`validate`), written into every checkpoint and the final bundle so a model says how it was made.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from raeflow.data.noise import parse_noise
from raeflow.errors import ConfigError
from raeflow.hardware import check_precision

PLACEMENTS = ("pack", "spread", "strict_spread")
"""Ray placement strategies offered by `--placement` (lower-case names of Ray's own)."""


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained; the CLI fills it, the loop reads it."""

    data: str
    """URI of the training images (folder, parquet, webdataset, mnist, ..., builtin:NAME)."""
    model: str
    """Model family or preset from the zoo (`raeflow models` lists them)."""
    out: str
    """Output URI (local or s3://): checkpoints, metrics.jsonl, grids/ and the final model/."""
    preset: str | None = None
    """Named preset to use instead of the family's defaults (must belong to --model)."""
    format: str | None = None
    """Force the source kind instead of detecting it."""
    image_column: str | None = None
    """Image-bytes column of a Parquet source, when it is not image/jpg/png."""
    epochs: int = 5
    """Number of passes over the training split (a resumed run continues up to this many)."""
    batch_size: int = 64
    """Images per optimisation step on each worker."""
    lr: float = 1e-3
    """Peak learning rate of Adam; a cosine schedule decays it to a tenth by the last epoch."""
    seed: int = 0
    """Seed for weights, noise and shuffling."""
    workers: int = 1
    """Number of Ray Train workers (data-parallel replicas)."""
    cpus_per_worker: float | None = None
    """CPUs each worker reserves, and its torch threads; default: a local Ray's cores shared among
    the workers, 1 on a cluster."""
    gpu: bool = False
    """One GPU per worker (NCCL); CPU and gloo otherwise."""
    precision: str = "auto"
    """Model arithmetic: auto (bf16 where the CPU/GPU runs it natively, else fp32), bf16 or fp32."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Model arguments on top of the preset's, e.g. recon_loss=bce or latent_dim=32 (--model-arg K=V)."""
    denoise: str | None = None
    """Train a denoiser: noise spec applied to the input (gaussian:0.1, saltpepper:0.05, mask:0.25)."""
    beta: float | None = None
    """Weight of the KL term for vae/cvae models (default: the model's own)."""
    image_size: tuple[int, int] | None = None
    """Train at this H x W: images are resized to it and fixed-size models are built for it."""
    patch_size: int | None = None
    """Train on random P x P patches cut from each image (denoisers) instead of resized whole images."""
    patches_per_image: int = 8
    """With --patch-size: random patches cut from each training image per epoch (validation: fixed ones)."""
    augment: bool = True
    """With --patch-size: random flips and 90-degree rotations of training patches (--no-augment: none)."""
    init_from: str | None = None
    """Start from this bundle's weights (fine-tuning), e.g. builtin:denoise-grey; the model must fit them."""
    grid_steps: tuple[int, ...] = ()
    """Also write a reconstruction grid of the current training batch at these global steps (1000,5000)."""
    val_fraction: float = 0.1
    """Share of images held out for validation, chosen by a hash of the key (stable across runs)."""
    limit: int | None = None
    """Use only the first N images of the source (demos, tests)."""
    checkpoint_every: int = 1
    """Write a checkpoint bundle every N epochs (and always after the last one)."""
    keep_checkpoints: int = 2
    """How many checkpoints Ray Train keeps in the run folder."""
    max_failures: int = 0
    """Restart from the last checkpoint up to K times after a worker fails on a node that is still there."""
    max_node_losses: int = 5
    """Restart from the last checkpoint up to K times after a worker's node goes away (-1: always)."""
    node_wait: float = 600.0
    """After such a restart: seconds to wait for room for --workers workers before failing."""
    resume: bool = False
    """Require an existing run in --out and continue it (a rerun into the same --out resumes anyway)."""
    address: str | None = None
    """Ray cluster to connect to (default: RAY_ADDRESS, else a local Ray)."""
    placement: str = "pack"
    """How workers are placed on nodes: pack, spread, or strict_spread (one worker per node)."""
    grid_images: int = 8
    """Images per row of the per-epoch grid PNG."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for the data URI (e.g. an S3 endpoint)."""

    @property
    def model_name(self) -> str:
        """The name `create_model` receives: the preset if one was given, else the family."""
        return self.preset or self.model

    def worker_cpus(self, *, local: bool) -> float:
        """CPUs each worker reserves (and torch threads it runs): --cpus-per-worker, else on a private
        local Ray the machine's cores shared among the workers, on a joined cluster 1."""
        if self.cpus_per_worker:
            return self.cpus_per_worker
        if self.gpu or not local:
            return 1.0
        return float(max(1, (os.cpu_count() or 1) // self.workers))

    def local_cpus(self) -> int:
        """CPUs of a private local Ray: the workers' share, and one more for the decode tasks (at
        least the machine's cores; shard caches decode cheaply, so one extra slot keeps them fed)."""
        held = math.ceil(self.workers * self.worker_cpus(local=True))
        return max(os.cpu_count() or 1, held + 1)

    def validate(self) -> TrainConfig:
        """Raise `ConfigError` for values that cannot work; return self so calls chain."""
        positive = {
            "--epochs": self.epochs,
            "--batch-size": self.batch_size,
            "--workers": self.workers,
            "--checkpoint-every": self.checkpoint_every,
            "--keep-checkpoints": self.keep_checkpoints,
            "--grid-images": self.grid_images,
        }
        for option, value in positive.items():
            if value < 1:
                raise ConfigError(f"{option} must be at least 1, got {value}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(
                f"--limit must be at least 2 (one training and one validation image), got {self.limit}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {self.val_fraction}")
        check_precision(self.precision)
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ConfigError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.beta is not None and self.beta < 0:
            raise ConfigError(f"--beta must be zero or positive, got {self.beta}")
        if self.max_failures < -1:
            raise ConfigError(f"--max-failures must be -1 (retry forever) or more, got {self.max_failures}")
        if self.max_node_losses < -1:
            raise ConfigError(
                f"--max-node-losses must be -1 (restart always) or more, got {self.max_node_losses}"
            )
        if self.node_wait <= 0:
            raise ConfigError(f"--node-wait must be a positive number of seconds, got {self.node_wait:g}")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"--placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.patch_size is not None:
            if self.patch_size < 8:
                raise ConfigError(f"--patch-size must be at least 8 pixels, got {self.patch_size}")
            if self.image_size is not None:
                raise ConfigError(
                    "--patch-size and --image-size exclude each other: patches are cut from the "
                    "images at their own size; drop one of them"
                )
        if self.patches_per_image < 1:
            raise ConfigError(f"--patches-per-image must be at least 1, got {self.patches_per_image}")
        if any(step < 1 for step in self.grid_steps):
            raise ConfigError(f"--grid-steps must be positive step numbers, got {list(self.grid_steps)}")
        if self.denoise is not None:
            parse_noise(self.denoise)  # a bad spec is refused here, before Ray starts
        if self.image_size is not None and min(self.image_size) < 4:
            raise ConfigError(
                f"--image-size must be at least 4x4, got {self.image_size[0]}x{self.image_size[1]}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data (written next to every checkpoint and bundle)."""
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size) if self.image_size else None
        data["grid_steps"] = list(self.grid_steps)
        data.pop("storage_options")  # may hold credentials
        return data


def parse_model_args(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`["recon_loss=bce", "channels=[32,16]"]` -> {"recon_loss": "bce", "channels": [32, 16]} (JSON values
    where they parse as JSON, strings otherwise)."""
    import json

    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-arg must look like NAME=VALUE (e.g. recon_loss=bce), got {pair!r}")
        try:
            args[key.strip()] = json.loads(text)
        except ValueError:
            args[key.strip()] = text
    return args


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """`28` -> (28, 28), `32x48` -> (32, 48) (height x width); None stays None."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--image-size must look like 28 or 32x48 (height x width), got {text!r}") from None
    if len(sizes) == 1:
        return sizes[0], sizes[0]
    if len(sizes) == 2:
        return sizes[0], sizes[1]
    raise ConfigError(f"--image-size must look like 28 or 32x48 (height x width), got {text!r}")


def parse_steps(text: str | None) -> tuple[int, ...]:
    """`"1000,5000"` -> (1000, 5000); None or "" -> ()."""
    if not text:
        return ()
    try:
        return tuple(sorted({int(part) for part in text.replace(" ", "").split(",") if part}))
    except ValueError:
        raise ConfigError(
            f"--grid-steps must look like 1000,5000 (global step numbers), got {text!r}"
        ) from None
