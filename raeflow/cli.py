"""The `raeflow` command line: parse options, build a settings object, call one library function.

Each command lives in `raeflow/commands/<area>.py`; this module only assembles the group and turns
user mistakes (`RaeflowError`) into a one-line error with exit code 2.

    raeflow --help
"""

from __future__ import annotations

import sys

import click

from raeflow import __version__
from raeflow.errors import RaeflowError


class _Group(click.Group):
    """A click group that reports user mistakes in one line instead of a traceback."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except RaeflowError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="raeflow")
def main() -> None:
    """Train convolutional autoencoders with Ray Train and stream image shards through them with Ray Data.

    \b
    Typical flow:
      raeflow train   --data builtin:mnist --model conv --out runs/mnist
      raeflow embed   --data s3://bucket/images --model runs/mnist/model --out s3://bucket/emb
      raeflow denoise --data ./scans --model runs/photos/model --out ./scans-clean
      raeflow report  --data builtin:mnist --model runs/mnist/model --out report/
    """


def _register() -> None:
    # Imported here so `raeflow --help` stays fast: heavy imports (torch, ray) live inside commands.
    from raeflow.commands import batch, cluster, demo, models, report, shard, train

    for module in (models, shard, train, batch, report, cluster, demo):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":
    main()
