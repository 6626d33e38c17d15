"""CLI of the models area: `raeflow models` lists the zoo's families and presets, and the pretrained
bundles shipped with raeflow (`builtin:NAME`, usable as any command's `--model`)."""

from __future__ import annotations

import json

import click


def builtin_rows() -> list[dict]:
    """One row per shipped bundle: name, input contract, parameters, size on disk, recorded quality."""
    from raeflow.bundles import list_builtin

    rows = []
    for info in list_builtin():
        meta = info.meta
        contract = meta.get("input_contract", {})
        size = sum(p.stat().st_size for p in info.path.iterdir() if p.is_file())
        rows.append(
            {
                "family": "builtin",
                "preset": f"builtin:{info.name}",
                "architecture": meta.get("architecture", {}).get("name"),
                "input": f"{contract.get('channels')}x{contract.get('height')}x{contract.get('width')}",
                "parameters": int(meta.get("num_parameters", 0)),
                "bytes": size,
                "quality": meta.get("summary", ""),
                "description": info.description,
            }
        )
    return rows


def _format_count(n: int) -> str:
    """2140065 -> 2.14M, 4385 -> 4.4k."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.1f}k"
    return str(n)


@click.command("models")
@click.option("--family", default=None, help="Show only this family's presets (dense, conv, ..., unet).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON instead of a table.")
def models_command(family: str | None, as_json: bool) -> None:
    """List the model zoo (every family and its named presets) and the pretrained models shipped
    with raeflow (`builtin:NAME`: pass them to any command's --model, no training needed).

    For each preset: its family, the images it takes (channels x height x width; "any" for fully
    convolutional models), its code's shape, its number of parameters, and what it is. Pass the
    preset (or the family, for its default arguments) to `raeflow train --model`.

    \b
    Examples:
      raeflow models
      raeflow models --family vae
      raeflow train --data builtin:mnist --model conv --preset conv_denoise --denoise gaussian:0.3 \\
                    --out runs/denoise
    """
    from raeflow.errors import ConfigError
    from raeflow.models.registry import describe_presets, list_families

    families = [f.name for f in list_families()]
    if family is not None and family not in families:
        raise ConfigError(f"unknown family {family!r}; families: {', '.join(families)}")
    rows = describe_presets(family)
    shipped = builtin_rows() if family is None else []
    if as_json:
        click.echo(json.dumps(rows + shipped, indent=2))
        return
    header = ["family", "preset", "input", "latent", "params", "description"]
    table = [
        [r["family"], r["preset"], r["input"], r["latent"], _format_count(r["parameters"]), r["description"]]
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header) - 1)]
    for row in [header, *table]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())
    num_families = len({r["family"] for r in rows})
    click.echo(f"\n{len(rows)} presets in {num_families} families; input is channels x height x width.")
    if shipped:
        click.echo("\npretrained models shipped with raeflow (use as --model builtin:NAME):")
        header = ["model", "input", "params", "size", "measured"]
        table = [
            [
                r["preset"],
                r["input"],
                _format_count(r["parameters"]),
                f"{r['bytes'] / 1e6:.1f} MB",
                r["quality"],
            ]
            for r in shipped
        ]
        widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header) - 1)]
        for row in [header, *table]:
            cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
            click.echo("  ".join([*cells, row[-1]]).rstrip())


COMMANDS: list[click.Command] = [models_command]
