"""Numeric precision and memory layout of a model where it runs: bf16 autocast and channels_last.

    precision = resolve_precision("auto", device)       # once per process, where the model runs
    model = prepare_model(model, precision)             # channels_last for convolutional models
    with precision.autocast():
        out = model(as_model_input(x))                  # bf16 maths where it pays, float32 results

`auto` picks bf16 autocast only where the hardware computes it natively (a CUDA device with bf16, a
CPU with AMX or AVX-512-BF16), so it is never slower than float32; `bf16` forces it (legal anywhere,
slow on a CPU without native bf16, and the job says so); `fp32` turns it off. Weights stay float32
either way, so a bundle trained in one precision loads and runs in the other. What stays float32
under autocast, on purpose: losses and KL terms (callers cast the outputs with `.float()` first),
BatchNorm statistics (autocast runs batch norm in float32), metrics, embeddings and denoised pixels.

channels_last (NHWC in memory) is used for every model with a convolution, in float32 too: oneDNN's
convolutions run 2-3x faster on it on CPUs, and tensor cores want it on GPUs. Decoded images are
`(B, H, W, C)` uint8, so a batch permuted to `(B, C, H, W)` already has that layout: no copy is made.
Nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TypeVar

import torch

from raeflow.hardware import PRECISIONS, check_precision, cpu_has_native_bf16

__all__ = [
    "PRECISIONS",
    "Precision",
    "as_model_input",
    "checked_precision",
    "prepare_model",
    "resolve_precision",
]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 maths natively (so bf16 autocast is faster than float32 there)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


@dataclass(frozen=True)
class Precision:
    """The precision one process runs its model in, decided once (`resolve_precision`)."""

    name: str
    """`bf16` (autocast to bfloat16) or `fp32`."""
    requested: str
    """What the settings asked for: auto, bf16 or fp32."""
    device_type: str
    """`cpu` or `cuda`: where autocast applies."""
    native: bool
    """Whether the device runs bf16 natively."""
    note: str | None = None
    """A one-line remark for the user (bf16 forced without native support, or a fallback)."""

    @property
    def bf16(self) -> bool:
        """Whether autocast to bfloat16 is on."""
        return self.name == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on the device when this precision is bf16, else nothing."""
        if self.bf16:
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def as_dict(self) -> dict[str, object]:
        """What bundle.json's training record and the job summary say about it."""
        return {"precision": self.name, "requested": self.requested, "native_bf16": self.native}


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The precision to use on `device` for the setting `requested` (auto, bf16 or fp32)."""
    check_precision(requested)
    native = native_bf16(device)
    if requested == "fp32" or (requested == "auto" and not native):
        return Precision("fp32", requested, device.type, native)
    note = None
    if not native:
        where = "this GPU" if device.type == "cuda" else "this CPU"
        note = (
            f"--precision bf16: {where} has no native bf16, so this runs slower than float32 would; "
            "use --precision auto"
        )
    return Precision("bf16", requested, device.type, native, note)


def has_convolutions(model: torch.nn.Module) -> bool:
    """Whether `model` has a 2-d convolution (and so gains from channels_last)."""
    return any(isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d) for m in model.modules())


ModelT = TypeVar("ModelT", bound=torch.nn.Module)


def prepare_model(model: ModelT, precision: Precision) -> ModelT:
    """`model` in channels_last when it convolves (weights stay float32; autocast does the rest)."""
    del precision  # the layout pays in both precisions; autocast is applied per call
    if has_convolutions(model):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def as_model_input(x: torch.Tensor) -> torch.Tensor:
    """An image batch `(B, C, H, W)` in channels_last memory (no copy when it already is)."""
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def checked_precision(model: torch.nn.Module, precision: Precision, probe: torch.Tensor) -> Precision:
    """`precision`, or float32 with a note when the model's layers fail under bf16 autocast; and
    float32 when `auto` meets a model that bf16 cannot speed up on a CPU.

    `probe` is a small input batch of the model's shape; it runs once in bf16. On CPUs bf16 pays
    through oneDNN's convolutions (2.3-4.7x for the zoo's convolutional presets, bench/model_speed.py);
    a model of dense layers alone (`dense_mnist`) ran at 0.84-0.99x of float32, so `auto` keeps it
    in float32 there (GPUs' tensor cores speed dense layers up, so they keep bf16).
    """
    if not precision.bf16:
        return precision
    if precision.requested == "auto" and precision.device_type == "cpu" and not has_convolutions(model):
        return Precision("fp32", precision.requested, precision.device_type, precision.native)
    try:
        with torch.inference_mode(), precision.autocast():
            model(as_model_input(probe))
    except (RuntimeError, NotImplementedError) as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        return Precision(
            "fp32",
            precision.requested,
            precision.device_type,
            precision.native,
            f"this model does not run in bf16 ({first}); using float32",
        )
    return precision
