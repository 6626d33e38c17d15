"""CLI of the shard area: `raeflow shard` packs any image source into Parquet or WebDataset shards.

Options are generated from `ShardSettings` (names, defaults, help from its fields).
"""

from __future__ import annotations

import re
from typing import Any

import click

from raeflow.commands.batch import check_out_folder
from raeflow.commands.options import OptionSpec, console_options, settings_from, settings_options
from raeflow.data.shard_formats import SHARD_FILES
from raeflow.data.shard_writer import ShardSettings
from raeflow.data.sources.object_store import probe

_ROWS = re.compile(r": (\d+) images")


@click.command("shard")
@settings_options(
    ShardSettings,
    specs={
        "source": OptionSpec(argument=True, metavar="SRC"),
        "out": OptionSpec(metavar="URI"),
        "format": OptionSpec(choices=tuple(SHARD_FILES)),
        "source_format": OptionSpec(metavar="KIND"),
        "image_column": OptionSpec(metavar="NAME"),
        "shard_size": OptionSpec(metavar="N"),
    },
)
@console_options
def shard_command(**options: Any) -> None:
    """Pack the images of SRC into numbered shards under --out.

    Keys and labels are kept; JPEG/PNG/WebP bytes are copied as they are, raw pixels (MNIST, CIFAR-10,
    STL-10, builtin) and other formats are stored as PNG. Images that cannot be read are listed in
    _rejected/ with the reason. Running it again with the same arguments writes the same bytes.

    \b
    Examples:
      raeflow shard ./mnist-idx --out ./mnist-shards
      raeflow shard s3://bucket/photos --out s3://bucket/photos-wds --format webdataset --shard-size 5000
    """
    from raeflow.data.shard_writer import iter_report_lines, pack_source
    from raeflow.progress import Progress

    settings = settings_from(ShardSettings, options)
    check_out_folder(settings.out)
    probe(settings.source, "SRC")
    probe(settings.out, "--out", output=True)
    with Progress("shard", plain_lines=False) as progress:

        def shard_done(line: str) -> None:
            rows = _ROWS.search(line)
            progress.advance(int(rows.group(1)) if rows else 0)
            progress.say(line)

        report = pack_source(settings, progress=shard_done)
    for line in iter_report_lines(report):
        click.echo(line)


COMMANDS: list[click.Command] = [shard_command]
