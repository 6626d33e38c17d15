"""`raeflow embed` and `raeflow denoise`: parse options, build the job's settings, run it, print a summary.

raeflow embed   --data builtin:mnist --model runs/mnist/model --out emb/
raeflow denoise --data ./scans --model runs/photos/model --out ./scans-clean --tile 512
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from raeflow.train.config import parse_image_size


def _image_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    return parse_image_size(value)  # ConfigError -> one-line error, like train's --image-size


def batch_job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every batch job shares (Ray, batch size, rejects, input kind)."""
    options = [
        click.option(
            "--data",
            required=True,
            metavar="URI",
            help="Image source: folder, Parquet, WebDataset, "
            "dataset layout or builtin:NAME; local path or s3://, gs://, memory:// URI.",
        ),
        click.option(
            "--model", required=True, metavar="BUNDLE", help="Model bundle folder written by `raeflow train`."
        ),
        click.option("--out", required=True, metavar="URI", help="Output folder (local path or bucket URI)."),
        click.option("--batch-size", type=int, default=None, help="Images per predictor call."),
        click.option(
            "--workers", type=int, default=None, help="Predictor actors (default: 1, or one per GPU)."
        ),
        click.option("--gpu", is_flag=True, help="Give each predictor actor one GPU."),
        click.option(
            "--address",
            default=None,
            metavar="ADDR",
            help="Ray cluster to use (default: $RAY_ADDRESS, else a local Ray).",
        ),
        click.option(
            "--max-rejected",
            type=float,
            default=None,
            metavar="FRACTION",
            help="Fail when more than this fraction of the images cannot be used (e.g. 0.01).",
        ),
        click.option(
            "--source-format", default=None, help="Force the input kind (folder, parquet, webdataset, ...)."
        ),
        click.option("--image-column", default=None, help="Image-bytes column of a Parquet input."),
        click.option("--quiet", is_flag=True, help="No progress lines, only the summary."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run_options_from(options: dict[str, Any], default_batch: int):
    """Take the shared batch-job options out of a command's parsed options as `RunOptions`."""
    from raeflow.batch.config import RunOptions

    return RunOptions(
        batch_size=options.pop("batch_size") or default_batch,
        workers=options.pop("workers"),
        gpu=options.pop("gpu"),
        address=options.pop("address"),
        max_rejected=options.pop("max_rejected"),
        quiet=options.pop("quiet"),
    )


def _print_summary(summary) -> None:
    click.echo("\n".join(summary.lines()))


@click.command("embed")
@batch_job_options
@click.option(
    "--image-size",
    callback=_image_size,
    default=None,
    metavar="HxW",
    help="Resize images to this size first (a fully convolutional model embeds each at its own).",
)
def embed(**options: Any) -> None:
    """Embed every image of a source: a Parquet table with one row per image.

    Writes part-NNNNN.parquet (one per input shard: key, source, embedding as
    fixed_size_list<float32>[D], label where the source has labels), _manifest/, _rejected/ and
    _SUCCESS under --out. Rerunning the same command resumes: finished shards are skipped.
    """
    from raeflow.batch.config import EmbedConfig
    from raeflow.batch.embed import run_embed

    run = run_options_from(options, default_batch=256)
    config = EmbedConfig(
        data=options["data"],
        model=options["model"],
        out=options["out"],
        source_format=options["source_format"],
        image_column=options["image_column"],
        image_size=options["image_size"],
        run=run,
    )
    _print_summary(run_embed(config))


@click.command("denoise")
@batch_job_options
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["same", "png", "jpeg"]),
    default="same",
    show_default=True,
    help="Output image format: each image's own, or all PNG / JPEG.",
)
@click.option(
    "--resize", is_flag=True, help="Let a fixed-size model run on other sizes: resize to its size and back."
)
@click.option(
    "--tile",
    type=int,
    default=None,
    metavar="PIXELS",
    help="Tile side for fully convolutional models (default: tile only images above 1 megapixel).",
)
@click.option(
    "--tile-overlap", type=int, default=32, show_default=True, help="Pixels shared by neighbouring tiles."
)
@click.option("--jpeg-quality", type=int, default=95, show_default=True, help="Quality of JPEG outputs.")
def denoise(**options: Any) -> None:
    """Denoise every image of a source into the same layout, names, sizes and modes.

    A folder gives a folder with the same relative names, WebDataset .tar shards give .tar shards
    with the same keys (other members carried over), Parquet gives Parquet with the same keys and
    columns; other sources give a folder of <key>.png. Also writes _manifest/, _rejected/ and
    _SUCCESS; rerunning the same command resumes.
    """
    from raeflow.batch.config import DenoiseConfig
    from raeflow.batch.denoise import run_denoise

    run = run_options_from(options, default_batch=8)
    config = DenoiseConfig(
        data=options["data"],
        model=options["model"],
        out=options["out"],
        format=options["out_format"],
        resize=options["resize"],
        tile=options["tile"],
        tile_overlap=options["tile_overlap"],
        jpeg_quality=options["jpeg_quality"],
        source_format=options["source_format"],
        image_column=options["image_column"],
        run=run,
    )
    _print_summary(run_denoise(config))


COMMANDS: list[click.Command] = [embed, denoise]
