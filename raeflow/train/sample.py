"""`raeflow sample`: draw images from a VAE/CVAE bundle's prior into one grid PNG.

    raeflow sample --model runs/vae/model --out samples.png --n 64
    raeflow sample --model runs/cvae/model --out sevens.png --label 7

A conditional model without `--label` gives one row per label. Ray-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from raeflow.errors import ConfigError
from raeflow.models import load_bundle
from raeflow.train.grids import write_grid


@dataclass
class SampleSummary:
    """What `sample_grid` wrote."""

    out: str
    """URI of the grid PNG."""
    num_images: int
    """Images drawn."""
    rows: int
    """Rows of the grid (one per label for a conditional model without --label)."""


def sample_grid(
    bundle_uri: str, out: str, *, n: int = 64, label: int | None = None, seed: int = 0
) -> SampleSummary:
    """Draw `n` images from the bundle's prior (per label for a CVAE) and write them as a grid PNG."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    if not out.lower().endswith(".png"):
        raise ConfigError(f"--out must name a .png file, got {out!r}")
    bundle = load_bundle(bundle_uri)
    model = bundle.model
    if not model.generative:
        raise ConfigError(
            f"model {bundle_uri} is a {model.arch_name!r} autoencoder, which cannot generate images; "
            "sample from a 'vae' or 'cvae' bundle"
        )
    if label is not None and not model.conditional:
        raise ConfigError(f"--label needs a conditional model (cvae); {bundle_uri} is a {model.arch_name!r}")
    if label is not None and not 0 <= label < model.num_classes:
        raise ConfigError(
            f"--label must be between 0 and {model.num_classes - 1} for this model, got {label}"
        )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if model.conditional and label is None:
            per_row = max(1, n // model.num_classes)
            rows = [
                model.sample(per_row, y=torch.full((per_row,), c, dtype=torch.long), generator=generator)
                for c in range(model.num_classes)
            ]  # each (per_row, C, H, W)
        else:
            y = torch.full((n,), label, dtype=torch.long) if label is not None else None
            images = model.sample(n, y=y, generator=generator)  # (n, C, H, W)
            per_row = math.ceil(math.sqrt(n))
            rows = [images[start : start + per_row] for start in range(0, n, per_row)]
    write_grid(rows, out)
    return SampleSummary(out=out, num_images=sum(len(row) for row in rows), rows=len(rows))
