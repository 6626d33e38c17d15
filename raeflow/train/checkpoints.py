"""Training checkpoints are model bundles plus what resuming needs, never a pickle.

A checkpoint folder holds:
- `weights.safetensors` + `bundle.json`: a complete model bundle (`raeflow.models.bundle`), so any
  checkpoint can be passed to `--model` as is;
- `optimizer.safetensors`: every tensor of the optimizer state (Adam's moments and step counts),
  flattened to names like `state.3.exp_avg`;
- `optimizer.json`: the optimizer's non-tensor state (param groups: lr, betas, ...);
- `trainer_state.json`: the loop's position (epochs done, global step) and the run's settings.

Ray Train uploads these folders to the run's storage (`trainer.py`); the plain loop writes them
with fsspec. Restoring reads them back from a local folder (Ray downloads remote ones first).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from raeflow.errors import BundleError
from raeflow.models.bundle import load_bundle, save_bundle

CHECKPOINTS_DIR = "checkpoints"
"""Folder under --out that holds the run's checkpoints (Ray Train's run name, too)."""
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_SCALARS = "optimizer.json"
TRAINER_STATE = "trainer_state.json"


def checkpoint_name(epoch: int) -> str:
    """Folder name of the checkpoint written after `epoch`."""
    return f"checkpoint-epoch-{epoch:04d}"


@dataclass
class TrainerState:
    """Where a run stands: enough to continue it on any number of workers."""

    epochs_done: int
    """Epochs completed when the checkpoint was written."""
    step: int
    """Optimisation steps taken so far (across all epochs, per worker)."""
    best_val_loss: float | None = None
    """Lowest validation loss seen so far."""


def write_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    *,
    training: dict[str, Any],
    metrics: dict[str, Any],
    settings: dict[str, Any],
) -> Path:
    """Write a bundle plus optimizer and loop state into a local folder; return the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_bundle(model, str(directory), training=training, metrics=metrics, settings=settings)
    tensors, scalars = _flatten_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(directory / OPTIMIZER_TENSORS))
    (directory / OPTIMIZER_SCALARS).write_text(json.dumps(scalars, indent=1))
    (directory / TRAINER_STATE).write_text(json.dumps({**asdict(state), "settings": settings}, indent=1))
    return directory


def read_checkpoint(
    directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> TrainerState:
    """Load weights (checksum-checked) and optimizer state from a checkpoint folder into the objects."""
    directory = Path(directory)
    bundle = load_bundle(str(directory))
    arch = bundle.meta.get("architecture", {}).get("name")
    if arch != getattr(model, "arch_name", None):
        raise BundleError(
            f"the checkpoint in {directory} holds a {arch!r} model, not {model.arch_name!r}: "
            "use a new --out for a different model"
        )
    try:
        model.load_state_dict(bundle.model.state_dict())
    except RuntimeError as err:
        raise BundleError(
            f"the checkpoint in {directory} does not fit this model ({str(err).splitlines()[0]}): "
            "use a new --out for different model settings"
        ) from None
    if optimizer is not None:
        tensors = load_file(str(directory / OPTIMIZER_TENSORS))
        scalars = json.loads((directory / OPTIMIZER_SCALARS).read_text())
        optimizer.load_state_dict(_unflatten_optimizer_state(tensors, scalars))
    state = json.loads((directory / TRAINER_STATE).read_text())
    return TrainerState(
        epochs_done=int(state["epochs_done"]),
        step=int(state["step"]),
        best_val_loss=state.get("best_val_loss"),
    )


def _flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into named CPU tensors and JSON-ready scalars."""
    tensors: dict[str, torch.Tensor] = {}
    per_param_scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for name, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"state.{param_id}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                per_param_scalars.setdefault(str(param_id), {})[name] = value
    scalars = {"param_groups": state_dict["param_groups"], "state_scalars": per_param_scalars}
    return tensors, scalars


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `_flatten_optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for flat_name, value in tensors.items():
        _, param_id, name = flat_name.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    for param_id, values in scalars.get("state_scalars", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    param_groups = scalars["param_groups"]
    for group in param_groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": param_groups}
