"""Every zoo preset trained the same way, scored on held-out images, and the write-ups' claims checked.

    .venv/bin/python bench/zoo_quality.py --resume --json bench-out/zoo_quality.json   # docs/quality.md
    .venv/bin/python bench/zoo_quality.py --quick     # smoke run: few images, 1 epoch (~1 min)
    .venv/bin/python bench/zoo_quality.py --json zoo.json --markdown zoo.md

Data (builtin, nothing downloaded):
- `mnist`: `builtin:mnist` digits, 28x28 grey: the first `--train-images` (1,500) train, the last
  `--test-images` (500) are the test set;
- `rgb32`: 32x32 crops (random positions and flips, fixed seed) of scikit-image's colour photographs
  (`builtin:photos`); test crops come from two photographs the models never see (chelsea, coffee);
- `grey32`: the same crops in grey (601 luma), for grey models of any size.

Cost: about 6,000 image-epochs per model (16 models); roughly 12 minutes on an idle 2-core machine
(the quick run's rate), 64 minutes measured on one shared with four other training sessions.

Every model: Adam (lr 1e-3), batch 64, the same number of epochs (`--epochs`, 4), its own loss
(`model.loss`: MSE or BCE, + KL for VAEs), labels given to every model (only `cvae` uses them).
Presets built for another size (`conv_dense_coco` 64x64, `vae_stl10` 96x96) are built for 32x32
with their other arguments.
Beside the presets, the variants the claims need: a VAE with `cvae_mnist`'s encoder/decoder minus
the label, `strided_cifar10` with its batch norm layers removed, a max-pool `conv` and a shallow
`conv` with the same 256-value code as `strided_cifar10`, and a dense AE on colour crops.

Columns: parameters, code size (values per image) and compression ratio (input values / code values;
"skip" for models whose decoder also reads encoder features, so the code is not a bottleneck), test
MSE / PSNR / SSIM (`raeflow.report.metrics`, mean over test images), milliseconds per image to encode
and to decode (batches of 256, best of 3, this machine's threads), and training seconds. Then one
line per claim of the source write-ups: holds / does not hold, with the numbers behind it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from raeflow.data import images  # noqa: E402
from raeflow.data.sources import open_source  # noqa: E402
from raeflow.data.sources.builtin import PHOTO_NAMES  # noqa: E402
from raeflow.models import create_model  # noqa: E402
from raeflow.models.base import Autoencoder  # noqa: E402
from raeflow.models.registry import list_presets, resolve  # noqa: E402
from raeflow.report.metrics import image_metrics  # noqa: E402

TEST_PHOTOS = ("chelsea", "coffee")
"""Colour photographs kept out of training: the rgb32 / grey32 test crops come from them."""
CROP = 32
LR = 1e-3
BATCH = 64
SAME_CODE = 256
"""Code size of `strided_cifar10` (16x4x4); the colour variants are built to match it."""


@dataclass
class Entry:
    """One model of the table: how to build it and on which data it is trained."""

    name: str
    """Row name (a preset name, or a variant's)."""
    build: str
    """Family or preset passed to `create_model`."""
    data: str
    """mnist, rgb32 or grey32."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Arguments changed from the preset."""
    note: str = ""
    """What the row is, beside its name."""
    strip_batch_norm: bool = False
    """Replace every BatchNorm2d by an identity (the no-BN ablation)."""


@dataclass
class Row:
    """Measured results of one entry."""

    name: str
    data: str
    note: str
    params: int
    code: int | None
    ratio: float | None
    mse: float
    psnr: float
    ssim: float
    encode_ms: float
    decode_ms: float
    train_s: float
    final_loss: float


# -- data ------------------------------------------------------------------------------------------


def _read(uri: str, channels: int | None) -> tuple[list[np.ndarray], list[int | None], list[str]]:
    source = open_source(uri)
    arrays, labels, keys = [], [], []
    for shard in source.list_shards():
        for table in source.read_shard(shard):
            for key, data, label in zip(
                table["key"].to_pylist(), table["image"].to_pylist(), table["label"].to_pylist(), strict=True
            ):
                arrays.append(images.decode_image(data, channels=channels))
                labels.append(label)
                keys.append(key)
    return arrays, labels, keys


def _to_tensor(arrays: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    stacked = np.stack(arrays) if isinstance(arrays, list) else arrays  # (N, H, W, C)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # (N, C, H, W)


def mnist_split(num_train: int, num_test: int) -> dict[str, torch.Tensor]:
    """Digits: the first `num_train` for training, the last `num_test` (never trained on) for testing."""
    arrays, labels, _ = _read("builtin:mnist", 1)
    x = _to_tensor(arrays)  # (5000, 1, 28, 28)
    y = torch.tensor(labels, dtype=torch.long)
    return {
        "x_train": x[:num_train],
        "y_train": y[:num_train],
        "x_test": x[-num_test:],
        "y_test": y[-num_test:],
    }


def _crops(photos: list[np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random 32x32 crops, randomly flipped, spread evenly over `photos`: (count, 32, 32, 3)."""
    out = np.empty((count, CROP, CROP, 3), dtype=np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - CROP + 1)
        left = rng.integers(0, photo.shape[1] - CROP + 1)
        crop = photo[top : top + CROP, left : left + CROP]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop
    return out


def photo_split(num_train: int, num_test: int, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """rgb32 and grey32 crops: training crops from the colour photos but `TEST_PHOTOS`, test crops
    from those."""
    arrays, _, keys = _read("builtin:photos", None)
    colour = {
        PHOTO_NAMES[int(k.split("/")[1])]: a for k, a in zip(keys, arrays, strict=True) if a.shape[2] == 3
    }
    train = [a for name, a in colour.items() if name not in TEST_PHOTOS]
    test = [colour[name] for name in TEST_PHOTOS]
    rng = np.random.default_rng(seed)
    rgb = {
        "x_train": _to_tensor(_crops(train, num_train, rng)),
        "x_test": _to_tensor(_crops(test, num_test, rng)),
    }
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = {name: (x * luma).sum(dim=1, keepdim=True) for name, x in rgb.items()}  # (N, 1, 32, 32)
    return {"rgb32": rgb, "grey32": grey}


# -- models ----------------------------------------------------------------------------------------


def entries() -> list[Entry]:
    """Every registered preset (on the data that fits it) and the variants the claims compare."""
    rows: list[Entry] = []
    for preset in list_presets():
        _, args = resolve(preset.name)
        channels, height = args.get("in_channels", 1), args.get("height", "any")
        if (channels, height) == (1, 28):
            rows.append(Entry(preset.name, preset.name, "mnist"))
        elif height in (None, "any") or "height" not in args:
            rows.append(
                Entry(preset.name, preset.name, "rgb32" if channels == 3 else "grey32", note="any size")
            )
        elif height == CROP:
            rows.append(Entry(preset.name, preset.name, "rgb32" if channels == 3 else "grey32"))
        else:
            rows.append(
                Entry(
                    preset.name,
                    preset.name,
                    "rgb32" if channels == 3 else "grey32",
                    {"height": CROP, "width": CROP},
                    note=f"built for 32x32 (preset: {height}x{args.get('width', height)})",
                )
            )
    _, cvae_args = resolve("cvae_mnist")
    vae_args = {k: v for k, v in cvae_args.items() if k not in ("num_classes", "label_dim", "label_dropout")}
    rows += [
        Entry("vae_mnist (cvae_mnist minus label)", "vae", "mnist", vae_args, note="variant"),
        Entry("strided_cifar10 no BN", "strided_cifar10", "rgb32", note="variant", strip_batch_norm=True),
        Entry(
            "conv max-pool 32-64-16",
            "conv",
            "rgb32",
            {"in_channels": 3, "height": CROP, "width": CROP, "channels": [32, 64, 16]},
            note="variant: 16x4x4 code",
        ),
        Entry(
            "conv shallow 32-4",
            "conv",
            "rgb32",
            {"in_channels": 3, "height": CROP, "width": CROP, "channels": [32, 4]},
            note="variant: 4x8x8 code",
        ),
        Entry(
            "dense 3072-512-256",
            "dense",
            "rgb32",
            {"in_channels": 3, "height": CROP, "width": CROP, "hidden": [512], "latent_dim": SAME_CODE},
            note="variant",
        ),
    ]
    return rows


CLAIM_ROWS = (
    "dense_mnist",
    "conv_mnist",
    "strided_cifar10",
    "strided_cifar10 no BN",
    "conv max-pool 32-64-16",
    "conv shallow 32-4",
    "dense 3072-512-256",
    "conv_dense_coco",
    "vae_mnist (cvae_mnist minus label)",
    "cvae_mnist",
)
"""Rows the claims compare: trained first, so an interrupted run still checks the claims."""


def run_order(chosen: list[Entry]) -> list[Entry]:
    """The claims' rows first, then the other presets, each group in table order; then by data."""
    first = [e for e in chosen if e.name in CLAIM_ROWS]
    return first + [e for e in chosen if e.name not in CLAIM_ROWS]


def without_batch_norm(model: nn.Module) -> nn.Module:
    """The same model with every BatchNorm2d replaced by an identity (the no-BN ablation)."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.Identity())
        else:
            without_batch_norm(child)
    return model


# -- training and scoring --------------------------------------------------------------------------


def train(
    model: Autoencoder, x: torch.Tensor, y: torch.Tensor | None, epochs: int, seed: int
) -> tuple[float, float]:
    """Adam, batch 64, `epochs` passes in a seeded shuffled order; returns (seconds, last epoch's loss)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    began = time.perf_counter()
    mean_loss = math.nan
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(x), BATCH):
            index = order[start : start + BATCH]
            batch = x[index]  # (B, C, H, W)
            labels = y[index] if y is not None else None
            loss = model.loss(batch, model(batch, labels), labels)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        mean_loss = total / count
    return time.perf_counter() - began, mean_loss


def _best_ms_per_image(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int = 3
) -> float:
    best = math.inf
    for _ in range(repeats):
        began = time.perf_counter()
        for start in range(0, len(x), 256):
            fn(x[start : start + 256])
        best = min(best, time.perf_counter() - began)
    return 1000.0 * best / len(x)


@torch.inference_mode()
def score(model: Autoencoder, x: torch.Tensor, y: torch.Tensor | None) -> dict[str, float]:
    """Mean test MSE/PSNR/SSIM of the reconstructions, and encode/decode milliseconds per image."""
    model.eval()
    recon = torch.cat(
        [
            model(x[s : s + 256], None if y is None else y[s : s + 256])["recon"].clamp(0, 1)
            for s in range(0, len(x), 256)
        ]
    )
    metrics = {
        name: float(values.mean()) for name, values in image_metrics(x.double(), recon.double()).items()
    }
    codes = model.encode(x[:256])
    label = None if y is None else y[:256]
    metrics["encode_ms"] = _best_ms_per_image(model.encode, x)
    metrics["decode_ms"] = _best_ms_per_image(
        lambda z: model.decode(z, label[: len(z)] if label is not None else None), codes
    )
    return metrics


def run_entry(entry: Entry, data: dict[str, torch.Tensor], epochs: int, seed: int) -> Row:
    """Build, train and score one model."""
    torch.manual_seed(seed)
    model = create_model(entry.build, **entry.overrides)
    if entry.strip_batch_norm:
        without_batch_norm(model)
    x_train, x_test = data["x_train"], data["x_test"]
    seconds, final_loss = train(model, x_train, data.get("y_train"), epochs, seed)
    metrics = score(model, x_test, data.get("y_test"))
    input_values = math.prod(x_test.shape[1:])
    skip = any(d == "any" for d in model.latent_shape) or entry.build.startswith("unet")
    code = None if skip else model.embedding_dim
    return Row(
        name=entry.name,
        data=entry.data,
        note=entry.note,
        params=sum(p.numel() for p in model.parameters()),
        code=code,
        ratio=None if code is None else input_values / code,
        mse=metrics["mse"],
        psnr=metrics["psnr"],
        ssim=metrics["ssim"],
        encode_ms=metrics["encode_ms"],
        decode_ms=metrics["decode_ms"],
        train_s=seconds,
        final_loss=final_loss,
    )


# -- the claims ------------------------------------------------------------------------------------


def check_claims(rows: dict[str, Row]) -> list[tuple[str, bool | None, str]]:
    """(claim, holds? — None when a row is missing, evidence) for each write-up claim."""

    def psnr(name: str) -> float:
        return rows[name].psnr

    checks: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
        (
            "convolutional beats dense on MNIST",
            lambda: (
                psnr("conv_mnist") > psnr("dense_mnist"),
                f"conv_mnist {psnr('conv_mnist'):.2f} dB (code {rows['conv_mnist'].code}) vs "
                f"dense_mnist {psnr('dense_mnist'):.2f} dB (code {rows['dense_mnist'].code})",
            ),
        ),
        (
            "on 32x32 colour crops, fully connected layers hurt (same 256-value code)",
            lambda: (
                max(psnr("dense 3072-512-256"), psnr("conv_dense_coco"))
                < min(psnr("strided_cifar10"), psnr("conv max-pool 32-64-16"), psnr("conv shallow 32-4")),
                f"with dense layers: dense {psnr('dense 3072-512-256'):.2f}, conv_dense "
                f"{psnr('conv_dense_coco'):.2f} dB; without: strided {psnr('strided_cifar10'):.2f}, "
                f"max-pool {psnr('conv max-pool 32-64-16'):.2f}, shallow {psnr('conv shallow 32-4'):.2f} dB",
            ),
        ),
        (
            "strided convolutions beat max pooling (same 16x4x4 code)",
            lambda: (
                psnr("strided_cifar10") > psnr("conv max-pool 32-64-16"),
                f"strided_cifar10 {psnr('strided_cifar10'):.2f} vs conv max-pool "
                f"{psnr('conv max-pool 32-64-16'):.2f} dB",
            ),
        ),
        (
            "batch norm helps deeper models (strided, depth 3)",
            lambda: (
                psnr("strided_cifar10") > psnr("strided_cifar10 no BN"),
                f"with BN {psnr('strided_cifar10'):.2f} vs without {psnr('strided_cifar10 no BN'):.2f} dB",
            ),
        ),
        (
            "a shallow conv AE is a strong baseline (within 1 dB of the best same-code model)",
            lambda: (
                psnr("conv shallow 32-4")
                >= max(psnr("strided_cifar10"), psnr("conv max-pool 32-64-16"), psnr("conv shallow 32-4"))
                - 1.0,
                f"shallow {psnr('conv shallow 32-4'):.2f} vs best of strided/max-pool "
                f"{max(psnr('strided_cifar10'), psnr('conv max-pool 32-64-16')):.2f} dB",
            ),
        ),
        (
            "a conditional decoder does not improve VAE reconstructions (gain under 0.5 dB)",
            lambda: (
                psnr("cvae_mnist") - psnr("vae_mnist (cvae_mnist minus label)") < 0.5,
                f"cvae_mnist {psnr('cvae_mnist'):.2f} vs vae "
                f"{psnr('vae_mnist (cvae_mnist minus label)'):.2f} dB",
            ),
        ),
    ]
    results: list[tuple[str, bool | None, str]] = []
    for claim, check in checks:
        try:
            holds, evidence = check()
        except KeyError as missing:
            results.append((claim, None, f"not measured ({missing} missing)"))
        else:
            results.append((claim, holds, evidence))
    return results


# -- output ----------------------------------------------------------------------------------------


def markdown(rows: list[Row], claims: list[tuple[str, bool | None, str]], setup: str) -> str:
    """The table and the claims as Markdown (what docs/quality.md, "Embedding models" shows)."""
    lines = [
        setup,
        "",
        "| model | data | params | code | ratio | test MSE | PSNR dB | SSIM | encode ms/img | decode ms/img "
        "| train s | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        code = "skip" if r.code is None else str(r.code)
        ratio = "skip" if r.ratio is None else f"{r.ratio:.1f}"
        lines.append(
            f"| {r.name} | {r.data} | {r.params / 1000:,.1f}k | {code} | {ratio} | {r.mse:.5f} "
            f"| {r.psnr:.2f} | {r.ssim:.3f} | {r.encode_ms:.3f} | {r.decode_ms:.3f} "
            f"| {r.train_s:.0f} | {r.note} |"
        )
    lines += ["", "| claim | holds? | evidence (test PSNR) |", "| --- | --- | --- |"]
    for claim, holds, evidence in claims:
        verdict = "not measured" if holds is None else ("holds" if holds else "does not hold")
        lines.append(f"| {claim} | {verdict} | {evidence} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 300 train / 100 test images, 1 epoch"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs for every model (default 4; quick 1)"
    )
    parser.add_argument("--train-images", type=int, default=1500, help="training images per data set")
    parser.add_argument("--test-images", type=int, default=500, help="test images per data set")
    parser.add_argument("--only", nargs="*", default=None, help="run only these rows (names as in the table)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", default=None, help="also write the rows and claims to this JSON file (after every row)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows already in --json (same setup) and run the rest"
    )
    parser.add_argument("--markdown", default=None, help="also write the Markdown table to this file")
    args = parser.parse_args()
    epochs = args.epochs or (1 if args.quick else 4)
    num_train, num_test = (300, 100) if args.quick else (args.train_images, args.test_images)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    began = time.perf_counter()
    datasets: dict[str, dict[str, torch.Tensor]] = {"mnist": mnist_split(num_train, num_test)}
    datasets.update(photo_split(num_train, num_test, seed=args.seed))
    chosen = run_order([e for e in entries() if args.only is None or e.name in args.only])
    plan = {"epochs": epochs, "num_train": num_train, "num_test": num_test, "seed": args.seed}
    done: dict[str, Row] = {}
    if args.resume and args.json and os.path.exists(args.json):
        with open(args.json) as handle:
            previous = json.load(handle)
        if previous.get("plan") == plan:
            done = {r["name"]: Row(**r) for r in previous["rows"]}
    rows: list[Row] = []
    for entry in chosen:
        row = done.get(entry.name) or run_entry(entry, datasets[entry.data], epochs, args.seed)
        rows.append(row)
        if args.json:
            _write_json(args.json, plan, "(partial)", rows, [])
        print(
            f"{row.name:<36} {row.data:<6} {row.params:>10,} params  PSNR {row.psnr:6.2f} dB  "
            f"SSIM {row.ssim:.3f}  train {row.train_s:5.0f} s",
            flush=True,
        )
    claims = check_claims({r.name: r for r in rows})
    setup = (
        f"{len(rows)} models, {epochs} epochs each, Adam lr {LR}, batch {BATCH}; {num_train} training and "
        f"{num_test} test images per data set; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{time.perf_counter() - began:.0f} s in all."
    )
    text = markdown(rows, claims, setup)
    print()
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text + "\n")
    if args.json:
        _write_json(args.json, plan, setup, rows, claims)


def _write_json(
    path: str, plan: dict[str, Any], setup: str, rows: list[Row], claims: list[tuple[str, bool | None, str]]
) -> None:
    payload = {
        "plan": plan,
        "setup": setup,
        "rows": [asdict(r) for r in rows],
        "claims": [{"claim": c, "holds": h, "evidence": e} for c, h, e in claims],
    }
    with open(path + ".tmp", "w") as handle:
        json.dump(payload, handle, indent=1)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
