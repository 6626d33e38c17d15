"""`raeflow embed` and `raeflow denoise`: parse options, build the job's settings, run it, print a summary.

raeflow embed   --data builtin:mnist --model runs/mnist/model --out emb/
raeflow denoise --data ./scans --model runs/photos/model --out ./scans-clean --tile 512

Options are generated from the settings dataclasses (`EmbedConfig`, `DenoiseConfig`, their
`RunOptions`): names, defaults and help come from the fields and their docstrings.
"""

from __future__ import annotations

import os
from typing import Any

import click

from raeflow import console
from raeflow.batch.config import OUTPUT_FORMATS, DenoiseConfig, EmbedConfig
from raeflow.batch.location import resolved_uri
from raeflow.batch.manifest import SUCCESS_FILE
from raeflow.commands.options import OptionSpec, console_options, settings_from, settings_options
from raeflow.connection import check_reachable, start_local_early
from raeflow.data.sources.object_store import probe
from raeflow.errors import ConfigError

RUN_SKIP = ("quiet", "verbose")
"""RunOptions fields without an option of their own: --quiet and --verbose are the console's."""

BATCH_SPECS: dict[str, OptionSpec] = {
    "data": OptionSpec(metavar="URI"),
    "model": OptionSpec(metavar="BUNDLE"),
    "out": OptionSpec(metavar="URI"),
    "source_format": OptionSpec(metavar="KIND"),
    "image_column": OptionSpec(metavar="NAME"),
    "address": OptionSpec(metavar="HOST:PORT"),
    "max_rejected": OptionSpec(metavar="FRACTION"),
    "workers": OptionSpec(metavar="N"),
    "batch_size": OptionSpec(metavar="N"),
}
"""How the options every batch job shares are shown."""


def check_out_folder(out: str) -> None:
    """Refuse an --out that names an existing local file (outputs are a folder)."""
    path = _local_path(out)
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--out {out} is a file; --out names a folder (it is created when missing)")


def start_ray_while_loading(
    address: str | None,
    *inputs: str,
    out: str | None = None,
    num_cpus: int | None = None,
    verbose: bool | None = None,
) -> None:
    """Start the command's private Ray in the background while it loads torch, the model and the data.

    Not when one of `inputs` (--data, --model) is a local path that does not exist: the command says
    so within 2 s, and a Ray that was starting would only delay its exit. Not either when the local
    folder `out` already holds `_SUCCESS`: a rerun of a finished batch job needs no Ray.
    """
    for uri in inputs:
        path = _local_path(uri)
        if path is not None and not os.path.exists(path):
            return
    folder = _local_path(out) if out else None
    if folder is not None and os.path.exists(os.path.join(folder, SUCCESS_FILE)):
        return
    start_local_early(address, num_cpus=num_cpus, verbose=verbose)


def _local_path(uri: str) -> str | None:
    """The local path `uri` names (`resolved_uri`), or None for a bucket, a builtin source or a URL."""
    path = resolved_uri(uri)
    return None if path.startswith("builtin:") or "://" in path else path


def start_ray(config: Any) -> None:
    """`start_ray_while_loading` for a batch job's settings."""
    start_ray_while_loading(
        config.run.address, config.data, config.model, out=config.out, verbose=config.run.verbose
    )


def prepare(config: Any) -> Any:
    """Validate a batch job's settings before Ray starts; the console level decides `run.quiet`.

    Buckets are probed here too (`probe`): no credentials, access denied, no such bucket or an
    endpoint that does not answer is a one-line error before Ray starts or anything is written.
    """
    config.run.quiet = console.is_quiet()
    config.run.verbose = console.is_verbose()
    config.validate()
    check_out_folder(config.out)
    check_reachable(config.run.address)
    probe(config.data, "--data")
    probe(config.model, "--model")
    probe(config.out, "--out", output=True)
    return config


def print_summary(lines: list[str]) -> None:
    """The job's one-screen summary on stdout."""
    click.echo("\n".join(lines))


@click.command("embed")
@settings_options(EmbedConfig, skip=RUN_SKIP, specs=BATCH_SPECS)
@console_options
def embed(**options: Any) -> None:
    """Embed every image of a source: a Parquet table with one row per image.

    Writes part-NNNNN-NNNN.parquet files (key, source, embedding as fixed_size_list<float32>[D],
    label where the source has labels), _manifest/, _rejected/ and _SUCCESS under --out.
    Rerunning the same command resumes: finished shards are skipped.
    """
    config = prepare(settings_from(EmbedConfig, options))
    start_ray(config)
    from raeflow.batch.embed import run_embed

    print_summary(run_embed(config).lines())


@click.command("denoise")
@settings_options(
    DenoiseConfig,
    skip=RUN_SKIP,
    specs={**BATCH_SPECS, "format": OptionSpec(choices=OUTPUT_FORMATS), "tile": OptionSpec(metavar="PIXELS")},
)
@console_options
def denoise(**options: Any) -> None:
    """Denoise every image of a source into the same layout, names, sizes and modes.

    A folder gives a folder with the same relative names, WebDataset .tar shards give .tar shards
    with the same keys (other members carried over), Parquet gives Parquet with the same keys and
    columns; other sources give a folder of <key>.png. Also writes _manifest/, _rejected/ and
    _SUCCESS; rerunning the same command resumes.
    """
    config = prepare(settings_from(DenoiseConfig, options))
    start_ray(config)
    from raeflow.batch.denoise import run_denoise

    print_summary(run_denoise(config).lines())


COMMANDS: list[click.Command] = [embed, denoise]
