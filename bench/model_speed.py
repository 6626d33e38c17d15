"""The models alone, per preset: float32 NCHW, float32 channels_last, bf16 autocast, bf16 + channels_last.

    .venv/bin/python bench/model_speed.py                  # every preset, inference and a training step
    .venv/bin/python bench/model_speed.py --presets conv_dense_coco denoise_grey --seconds 3

One process, torch threads = the CPUs given (`--threads`, default all), no Ray and no decoding: the
ceiling a batch job or a training run can reach per process. Each cell is images (or patches) per
second, the median of three timed rounds after a warm-up; the load average is printed with the
table (a figure measured at load above 2 on this 2-core machine is contended). The last columns
say how far bf16 moves the outputs from float32: mean cosine of the embeddings, and the PSNR of the
bf16 reconstruction against the float32 one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from raeflow.hardware import cpu_description
from raeflow.models import create_model
from raeflow.models.precision import Precision, as_model_input, prepare_model

PRESETS: dict[str, tuple[tuple[int, int, int], int]] = {
    "dense_mnist": ((1, 28, 28), 256),
    "conv_mnist": ((1, 28, 28), 256),
    "conv_dense_coco": ((3, 64, 64), 256),
    "strided_cifar10": ((3, 32, 32), 256),
    "vae_cifar10": ((3, 32, 32), 256),
    "unet_rgb": ((3, 256, 256), 4),
    "denoise_grey": ((1, 256, 256), 4),
    "denoise_rgb": ((3, 256, 256), 4),
}
"""Preset -> (input shape, batch size) of the inference rows."""

TRAIN_PRESETS = {"conv_dense_coco": ((3, 64, 64), 64), "denoise_grey": ((1, 64, 64), 32)}
"""Preset -> (patch shape, batch size) of the training-step rows (Adam)."""

MODES = {
    "fp32 NCHW": (False, False),
    "fp32 channels_last": (False, True),
    "bf16": (True, False),
    "bf16 + channels_last": (True, True),
}
"""Column -> (bf16 autocast, channels_last)."""


def _precision(bf16: bool) -> Precision:
    return Precision("bf16" if bf16 else "fp32", "bench", "cpu", True)


def _rate(step, images: int, seconds: float) -> float:
    step()  # warm-up (oneDNN picks its kernels on the first call)
    rounds = []
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            step()
            done += images
        rounds.append(done / (time.perf_counter() - start))
    return statistics.median(rounds)


def _model(preset: str, channels_last: bool, bf16: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(preset).eval()
    return prepare_model(model, _precision(bf16)) if channels_last else model


def inference_row(preset: str, seconds: float) -> dict[str, object]:
    shape, batch = PRESETS[preset]
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(1))
    row: dict[str, object] = {"preset": preset, "input": f"{batch} x {'x'.join(map(str, shape))}"}
    outputs = {}
    for name, (bf16, channels_last) in MODES.items():
        model = _model(preset, channels_last, bf16)
        inputs = as_model_input(x) if channels_last else x.contiguous()
        precision = _precision(bf16)

        @torch.inference_mode()
        def step(model=model, inputs=inputs, precision=precision) -> dict[str, torch.Tensor]:
            with precision.autocast():
                return {k: v.float() for k, v in model(inputs).items()}

        row[name] = _rate(step, batch, seconds)
        outputs[name] = step()
    ref, low = outputs["fp32 NCHW"], outputs["bf16 + channels_last"]
    z_ref, z_low = ref["z"].flatten(1), low["z"].flatten(1)
    row["cosine z"] = float(torch.nn.functional.cosine_similarity(z_ref, z_low, dim=1).mean())
    mse = float((ref["recon"].clamp(0, 1) - low["recon"].clamp(0, 1)).pow(2).mean())
    row["recon PSNR bf16 vs fp32"] = 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()
    return row


def training_row(preset: str, seconds: float) -> dict[str, object]:
    shape, batch = TRAIN_PRESETS[preset]
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(1))
    row: dict[str, object] = {"preset": preset, "input": f"train {batch} x {'x'.join(map(str, shape))}"}
    for name, (bf16, channels_last) in MODES.items():
        model = _model(preset, channels_last, bf16).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        inputs = as_model_input(x) if channels_last else x.contiguous()
        precision = _precision(bf16)

        def step(model=model, inputs=inputs, precision=precision, optimizer=optimizer) -> None:
            with precision.autocast():
                out = model(inputs)
            loss = model.loss(inputs, {k: v.float() for k, v in out.items()})["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        row[name] = _rate(step, batch, seconds)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per cell")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {args.threads} threads")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    rows = [inference_row(p, args.seconds) for p in args.presets if p in PRESETS]
    if not args.no_train:
        rows += [training_row(p, args.seconds) for p in args.presets if p in TRAIN_PRESETS]
    names = list(MODES)
    print(
        "\n| preset | input (images/s) | " + " | ".join(names) + " | bf16+cl / fp32 | cosine z | recon PSNR |"
    )
    print("| --- | --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: | ---: |")
    for row in rows:
        cells = [f"{row[n]:,.0f}" for n in names]
        gain = float(row["bf16 + channels_last"]) / float(row["fp32 NCHW"])  # type: ignore[arg-type]
        cos = f"{row['cosine z']:.5f}" if "cosine z" in row else ""
        psnr = f"{row['recon PSNR bf16 vs fp32']:.1f} dB" if "cosine z" in row else ""
        print(
            f"| {row['preset']} | {row['input']} | "
            + " | ".join(cells)
            + f" | {gain:.2f}x | {cos} | {psnr} |"
        )
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
