"""CLI commands of the train area: `raeflow train` (Ray Train) and `raeflow sample` (VAE prior grids).

Options only parse and build a `TrainConfig` (a `SampleSettings`); the work happens in
`raeflow.train.trainer` (`raeflow.train.sample`). Help texts are the settings fields' docstrings,
so they cannot drift apart.
"""

from __future__ import annotations

import click

from raeflow.commands.batch import check_out_folder, start_ray_while_loading
from raeflow.commands.options import OptionSpec, console_options, settings_from, settings_options
from raeflow.connection import check_reachable
from raeflow.data.sources.object_store import probe
from raeflow.hardware import PRECISION_NAMES
from raeflow.train.config import PLACEMENTS, TrainConfig, parse_model_args, parse_steps
from raeflow.train.sample import SampleSettings

TRAIN_SPECS: dict[str, OptionSpec] = {
    "data": OptionSpec(metavar="URI"),
    "model": OptionSpec(metavar="NAME"),
    "out": OptionSpec(metavar="URI"),
    "preset": OptionSpec(metavar="P"),
    # --format is the old name, kept as a deprecated alias: --format means an output format elsewhere.
    "format": OptionSpec(names=("--source-format", "--format"), metavar="KIND"),
    "image_column": OptionSpec(metavar="NAME"),
    "model_args": OptionSpec(
        names=("--model-arg",), multiple=True, metavar="NAME=VALUE", parse=parse_model_args
    ),
    "denoise": OptionSpec(metavar="SPEC"),
    "limit": OptionSpec(metavar="N"),
    "checkpoint_every": OptionSpec(metavar="N"),
    "keep_checkpoints": OptionSpec(metavar="K"),
    "max_failures": OptionSpec(metavar="K"),
    "max_node_losses": OptionSpec(metavar="K"),
    "node_wait": OptionSpec(metavar="SECONDS"),
    "address": OptionSpec(metavar="HOST:PORT"),
    "placement": OptionSpec(choices=PLACEMENTS),
    "grid_images": OptionSpec(metavar="N"),
    "patch_size": OptionSpec(metavar="P"),
    "patches_per_image": OptionSpec(metavar="K"),
    "augment": OptionSpec(names=("--augment/--no-augment",)),
    "grid_steps": OptionSpec(metavar="N,M,...", parse=parse_steps),
}
"""How train's generated options differ from `--field-name`."""


@click.command("train")
@settings_options(TrainConfig, skip=("storage_options",), specs=TRAIN_SPECS)
@console_options
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
    config = settings_from(TrainConfig, options).validate()
    check_out_folder(config.out)
    check_reachable(config.address)
    probe(config.data, "--data", storage_options=config.storage_options)
    probe(config.out, "--out", output=True, storage_options=config.storage_options)
    start_ray_while_loading(config.address, config.data, num_cpus=config.local_cpus())
    from raeflow.train.rejected import collect_rejected
    from raeflow.train.trainer import run_training

    summary = run_training(config, echo=click.echo)
    rejected = collect_rejected(config.out)  # merges what the decode tasks listed, each image once
    last = summary.last
    started = f" (continued after epoch {summary.resumed_from})" if summary.resumed_from else ""
    click.echo(f"done: {summary.epochs} epochs{started}, {summary.seconds:.1f} s")
    if last:
        noisy = f" (noisy input {last['val_noisy_psnr']:.2f} dB)" if "val_noisy_psnr" in last else ""
        click.echo(
            f"  last epoch: val loss {last['val_loss']:.5f}, PSNR {last['val_psnr']:.2f} dB{noisy}, "
            f"SSIM {last['val_ssim']:.3f}, {last['images_per_s']:.0f} images/s on {last['workers']} worker(s)"
        )
        if "precision" in last:
            model = PRECISION_NAMES.get(last["precision"], last["precision"])
            click.echo(f"  model: {model}, {last['threads']} torch thread(s) per worker")
        if last.get("precision_note"):
            click.echo(f"  {last['precision_note']}")
    out = config.out.rstrip("/")
    click.echo(f"  metrics: {out}/metrics.jsonl  grids: {out}/grids/  checkpoints: {out}/checkpoints/")
    if rejected.line():
        click.echo(rejected.line())
    click.echo(f"model bundle: {summary.bundle}")
    if summary.warning:
        click.echo(summary.warning)


SAMPLE_SPECS: dict[str, OptionSpec] = {
    "model": OptionSpec(metavar="BUNDLE"),
    "out": OptionSpec(metavar="FILE.png"),
    "label": OptionSpec(metavar="L"),
    "seed": OptionSpec(kwargs={"show_default": True}),
    "data": OptionSpec(metavar="URI"),
}
"""How sample's generated options differ from `--field-name`."""


@click.command("sample")
@settings_options(SampleSettings, specs=SAMPLE_SPECS)
def sample_command(**options) -> None:
    """Draw images from a VAE's prior (a CVAE's per label) into one grid PNG.

    \b
    Examples:
      raeflow sample --model runs/vae/model --out samples.png --n 64
      raeflow sample --model runs/cvae/model --out sevens.png --label 7 --precision fp32
    """
    from raeflow.train.sample import sample_grid

    settings = settings_from(SampleSettings, options).validate()
    summary = sample_grid(
        settings.model,
        settings.out,
        n=settings.n,
        label=settings.label,
        seed=settings.seed,
        data=settings.data,
        precision=settings.precision,
    )
    if summary.note:
        click.echo(summary.note)
    labels = f" (labels {', '.join(map(str, summary.labels))})" if summary.labels else ""
    click.echo(
        f"wrote {summary.num_images} samples in {summary.rows} rows{labels} to {summary.out} "
        f"(model in {summary.precision})"
    )


COMMANDS: list[click.Command] = [train_command, sample_command]
