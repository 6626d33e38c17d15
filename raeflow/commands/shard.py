"""CLI of the shard area: `raeflow shard` packs any image source into Parquet or WebDataset shards."""

from __future__ import annotations

import click


@click.command("shard")
@click.argument("src")
@click.option(
    "--out", required=True, help="Output folder URI (local or s3://...); shards and _index.json go there."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "webdataset"]),
    default="parquet",
    show_default=True,
    help="Shard format: Parquet (key, image, label, format columns) or WebDataset .tar.",
)
@click.option("--shard-size", type=int, default=10_000, show_default=True, help="Images per output shard.")
@click.option(
    "--source-format",
    default=None,
    help="Input kind instead of detecting it (folder, parquet, webdataset, mnist, cifar10, stl10, coco).",
)
@click.option("--image-column", default=None, help="Image-bytes column of a Parquet input.")
@click.option(
    "--read-ahead", type=int, default=4, show_default=True, help="Input shards read ahead in parallel."
)
@click.option(
    "--image-size",
    metavar="H[xW]",
    default=None,
    help="Store every image resized to H x W as PNG: a training cache decoded once, not every epoch.",
)
def shard_command(
    src: str,
    out: str,
    fmt: str,
    shard_size: int,
    source_format: str | None,
    image_column: str | None,
    read_ahead: int,
    image_size: str | None,
) -> None:
    """Pack the images of SRC into numbered shards under --out.

    Keys and labels are kept; JPEG/PNG/WebP bytes are copied as they are, raw pixels (MNIST, CIFAR-10,
    STL-10, builtin) and other formats are stored as PNG. Images that cannot be read are listed in
    _rejected/ with the reason. Running it again with the same arguments writes the same bytes.

    \b
    Examples:
      raeflow shard ./mnist-idx --out ./mnist-shards
      raeflow shard s3://bucket/photos --out s3://bucket/photos-wds --format webdataset --shard-size 5000
    """
    from raeflow.data.shard_writer import ShardSettings, iter_report_lines, pack_source
    from raeflow.train.config import parse_image_size

    settings = ShardSettings(
        source=src,
        out=out,
        format=fmt,
        shard_size=shard_size,
        source_format=source_format,
        image_column=image_column,
        read_ahead=read_ahead,
        image_size=parse_image_size(image_size),
    )
    report = pack_source(settings, progress=lambda line: click.echo(line, err=True))
    for line in iter_report_lines(report):
        click.echo(line)


COMMANDS: list[click.Command] = [shard_command]
"""CLI commands, one module per area; `raeflow.cli` assembles them."""
