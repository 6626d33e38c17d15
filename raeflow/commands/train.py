"""CLI commands of the train area: `raeflow train` (Ray Train) and `raeflow sample` (VAE prior grids).

Options only parse and build a `TrainConfig`; the work happens in `raeflow.train.trainer`. Help
texts are the config fields' docstrings, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from raeflow.train.config import TrainConfig, field_help, parse_image_size, parse_model_args, parse_steps

_HELP = field_help(TrainConfig)


def _opt(*names: str, field: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option whose help is the docstring of TrainConfig.<field>."""
    default = TrainConfig.__dataclass_fields__[field].default
    if "default" not in kwargs and not kwargs.get("is_flag") and default not in (None, dataclasses.MISSING):
        kwargs["default"] = default
        kwargs.setdefault("show_default", True)
    return click.option(*names, field, help=_HELP[field], **kwargs)


@click.command("train")
@_opt("--data", field="data", required=True, metavar="URI")
@_opt("--model", field="model", required=True, metavar="NAME")
@_opt("--out", field="out", required=True, metavar="URI")
@_opt("--preset", field="preset", metavar="P")
@_opt("--source-format", "--format", field="format", metavar="KIND")
@_opt("--image-column", field="image_column", metavar="NAME")
@_opt("--epochs", field="epochs", type=int)
@_opt("--batch-size", field="batch_size", type=int)
@_opt("--lr", field="lr", type=float)
@_opt("--seed", field="seed", type=int)
@_opt("--workers", field="workers", type=int)
@_opt("--cpus-per-worker", field="cpus_per_worker", type=float)
@_opt("--gpu", field="gpu", is_flag=True)
@_opt("--model-arg", field="model_args", multiple=True, default=(), metavar="NAME=VALUE")
@_opt("--denoise", field="denoise", metavar="SPEC")
@_opt("--beta", field="beta", type=float)
@_opt("--image-size", field="image_size", metavar="H[xW]")
@_opt("--patch-size", field="patch_size", type=int, metavar="P")
@_opt("--patches-per-image", field="patches_per_image", type=int, metavar="K")
@_opt("--augment/--no-augment", field="augment")
@_opt("--init-from", field="init_from", metavar="BUNDLE")
@_opt("--grid-steps", field="grid_steps", default=None, metavar="N,M,...")
@_opt("--val-fraction", field="val_fraction", type=float)
@_opt("--limit", field="limit", type=int, metavar="N")
@_opt("--checkpoint-every", field="checkpoint_every", type=int, metavar="N")
@_opt("--keep-checkpoints", field="keep_checkpoints", type=int, metavar="K")
@_opt("--max-failures", field="max_failures", type=int, metavar="K")
@_opt("--resume", field="resume", is_flag=True)
@_opt("--address", field="address", metavar="ADDR")
@_opt("--placement", field="placement", type=click.Choice(["pack", "spread", "strict_spread"]))
@_opt("--grid-images", field="grid_images", type=int, metavar="N")
def train_command(**options) -> None:
    """Train an autoencoder on an image source with Ray Train; write a model bundle to OUT/model.

    \b
    Examples:
      raeflow train --data builtin:mnist --model conv --out runs/mnist --epochs 5
      raeflow train --data builtin:mnist --model conv_denoise --denoise gaussian:0.3 --out runs/dn
      raeflow train --data photos/ --model denoise_grey --patch-size 64 --denoise gaussian:0-0.2 --out runs/dn
      raeflow train --data s3://bucket/shards --model unet --image-size 128 --workers 8 --gpu --out s3://bucket/run

    Rerunning the same command into the same --out continues from its latest checkpoint.
    """
    from raeflow.train.trainer import run_training

    options["image_size"] = parse_image_size(options["image_size"])
    options["model_args"] = parse_model_args(options["model_args"])
    options["grid_steps"] = parse_steps(options["grid_steps"])
    config = TrainConfig(**options)
    summary = run_training(config, echo=click.echo)
    last = summary.last
    started = f" (continued after epoch {summary.resumed_from})" if summary.resumed_from else ""
    click.echo(f"done: {summary.epochs} epochs{started}, {summary.seconds:.1f} s")
    if last:
        noisy = f" (noisy input {last['val_noisy_psnr']:.2f} dB)" if "val_noisy_psnr" in last else ""
        click.echo(
            f"  last epoch: val loss {last['val_loss']:.5f}, PSNR {last['val_psnr']:.2f} dB{noisy}, "
            f"SSIM {last['val_ssim']:.3f}, {last['images_per_s']:.0f} images/s on {last['workers']} worker(s)"
        )
    out = config.out.rstrip("/")
    click.echo(f"  metrics: {out}/metrics.jsonl  grids: {out}/grids/  checkpoints: {out}/checkpoints/")
    click.echo(f"model bundle: {summary.bundle}")
    if summary.warning:
        click.echo(summary.warning)


@click.command("sample")
@click.option(
    "--model", "bundle", required=True, metavar="BUNDLE", help="Bundle folder of a vae or cvae model."
)
@click.option(
    "--out", required=True, metavar="FILE.png", help="Where to write the grid PNG (local or bucket)."
)
@click.option("--n", default=64, show_default=True, help="Number of images to draw.")
@click.option(
    "--label", type=int, default=None, help="Draw only this label (cvae); default one row per label."
)
@click.option("--seed", default=0, show_default=True, help="Seed of the prior draws.")
def sample_command(bundle: str, out: str, n: int, label: int | None, seed: int) -> None:
    """Draw images from a VAE's prior (a CVAE's per label) into one grid PNG."""
    from raeflow.train.sample import sample_grid

    summary = sample_grid(bundle, out, n=n, label=label, seed=seed)
    click.echo(f"wrote {summary.num_images} samples in {summary.rows} rows to {summary.out}")


COMMANDS: list[click.Command] = [train_command, sample_command]
