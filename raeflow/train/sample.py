"""`raeflow sample`: draw images from a VAE/CVAE bundle into one grid PNG, per label where asked.

    raeflow sample --model runs/vae/model --out samples.png --n 64
    raeflow sample --model runs/cvae/model --out per-label.png              # one row per label
    raeflow sample --model runs/cvae/model --out sevens.png --label 7
    raeflow sample --model runs/vae/model --data builtin:mnist --out per-label.png

A conditional model (cvae) draws each label from its own prior: without `--label`, one row per
label. An unconditional VAE knows no labels, so drawing "per label" needs labelled images: with
`--data` each label's row is drawn from a Gaussian fitted to that label's codes (the mean and
spread of the posteriors of up to `per_label_images` images of the label), decoded by the model,
which is how the VAE's latent space holds each class. `--precision` as for every model-running
command. Ray-free; torch is imported only to draw, so the CLI builds its options from
`SampleSettings` without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from raeflow.data import images
from raeflow.data.sources import open_source
from raeflow.errors import ConfigError
from raeflow.hardware import check_precision

if TYPE_CHECKING:  # torch is imported where the drawing happens: the CLI builds its options from here
    import torch

    from raeflow.models.base import Autoencoder

PER_LABEL_IMAGES = 256
"""Images of each label whose codes fit that label's Gaussian (with --data)."""
MAX_IMAGES_READ = 50_000
"""Most images read from --data while looking for every label's images."""


@dataclass
class SampleSettings:
    """`raeflow sample`: what to draw from which generative bundle, and where the grid goes."""

    model: str
    """Bundle folder of a vae or cvae model."""
    out: str
    """Where to write the grid PNG (local or bucket)."""
    n: int = 64
    """Number of images to draw."""
    label: int | None = None
    """Draw only this label (cvae, or a vae with --data); default one row per label."""
    seed: int = 0
    """Seed of the prior draws."""
    data: str | None = None
    """Labelled images: a plain VAE then draws each label's row from that label's codes."""
    precision: str = "auto"
    """Model arithmetic: auto (bf16 where the CPU runs it natively, else fp32), bf16 or fp32."""

    def validate(self) -> SampleSettings:
        """Raise `ConfigError` for values that cannot work (before the bundle is loaded); return self."""
        if self.n < 1:
            raise ConfigError(f"--n must be at least 1, got {self.n}")
        if not self.out.lower().endswith(".png"):
            raise ConfigError(f"--out must name a .png file, got {self.out!r}")
        check_precision(self.precision)
        return self


@dataclass
class SampleSummary:
    """What `sample_grid` wrote."""

    out: str
    """URI of the grid PNG."""
    num_images: int
    """Images drawn."""
    rows: int
    """Rows of the grid (one per label when drawing per label)."""
    labels: list[int] = field(default_factory=list)
    """The label of each row, top to bottom, when drawing per label (empty otherwise)."""
    precision: str = "fp32"
    """What the model ran in: bf16 or fp32."""
    note: str | None = None
    """One line about the precision, when it is not what was asked or slower than it could be."""


@dataclass
class LabelCodes:
    """Per label, the Gaussian of a VAE's codes of that label's images (diagonal covariance)."""

    mean: dict[int, torch.Tensor]
    """Label -> mean posterior mean, `(latent_dim,)`."""
    std: dict[int, torch.Tensor]
    """Label -> spread of the codes, `(latent_dim,)`: the posteriors' means' and their own variances."""
    counts: dict[int, int]
    """Label -> images used."""


def sample_grid(
    bundle_uri: str,
    out: str,
    *,
    n: int = 64,
    label: int | None = None,
    seed: int = 0,
    data: str | None = None,
    per_label_images: int = PER_LABEL_IMAGES,
    precision: str = "auto",
) -> SampleSummary:
    """Draw `n` images from the bundle (per label for a CVAE, or for a VAE given labelled `data`)
    and write them as a grid PNG; `precision` (auto, bf16, fp32) as for every command."""
    import torch

    from raeflow.models import load_bundle
    from raeflow.models.precision import checked_precision, prepare_model, resolve_precision
    from raeflow.train.grids import write_grid

    SampleSettings(bundle_uri, out, n=n, label=label, seed=seed, data=data, precision=precision).validate()
    bundle = load_bundle(bundle_uri)
    model = bundle.model
    if not model.generative:
        raise ConfigError(
            f"model {bundle_uri} is a {model.arch_name!r} autoencoder, which cannot generate images; "
            "sample from a 'vae' or 'cvae' bundle"
        )
    if data is not None and model.conditional:
        raise ConfigError(
            f"--data is for unconditional VAEs; {bundle_uri} is a conditional {model.arch_name!r} that draws "
            "each label from its own prior (leave --data out)"
        )
    if label is not None and not model.conditional and data is None:
        raise ConfigError(
            f"--label needs a conditional model (cvae), or --data with labelled images for a "
            f"{model.arch_name!r}; {bundle_uri} knows no labels"
        )
    if label is not None and model.conditional and not 0 <= label < model.num_classes:
        raise ConfigError(
            f"--label must be between 0 and {model.num_classes - 1} for this model, got {label}"
        )
    generator = torch.Generator().manual_seed(seed)
    labels: list[int] = []
    wanted = resolve_precision(precision, torch.device("cpu"))
    model = prepare_model(model, wanted)
    contract = model.input_contract  # generative models are fixed-size
    probe = torch.zeros((2, contract["channels"], contract["height"], contract["width"]))  # (2, C, H, W)
    used = checked_precision(model, wanted, probe)  # float32, with a note, where bf16 fails
    with torch.no_grad(), used.autocast():
        if data is not None:
            codes = label_codes(model, data, per_label_images=per_label_images)
            if label is not None and label not in codes.mean:
                found = ", ".join(str(k) for k in sorted(codes.mean))
                raise ConfigError(f"--label {label} has no images in {data}; its labels: {found}")
            labels = [label] if label is not None else sorted(codes.mean)
            per_row = n if label is not None else max(1, n // len(labels))
            rows = [_draw_from(model, codes, c, per_row, generator) for c in labels]
            if label is not None:
                rows = _square(rows[0])
        elif model.conditional and label is None:
            per_row = max(1, n // model.num_classes)
            labels = list(range(model.num_classes))
            rows = [
                model.sample(per_row, y=torch.full((per_row,), c, dtype=torch.long), generator=generator)
                for c in labels
            ]  # each (per_row, C, H, W)
        else:
            y = torch.full((n,), label, dtype=torch.long) if label is not None else None
            rows = _square(model.sample(n, y=y, generator=generator))  # (n, C, H, W) in rows
    rows = [row.float() for row in rows]  # (n, C, H, W) float32 pixels whatever the precision
    write_grid(rows, out)
    return SampleSummary(
        out=out,
        num_images=sum(len(row) for row in rows),
        rows=len(rows),
        labels=labels,
        precision=used.name,
        note=used.note,
    )


def _square(drawn: torch.Tensor) -> list[torch.Tensor]:
    """`(n, C, H, W)` images as the rows of a square-ish grid."""
    per_row = math.ceil(math.sqrt(len(drawn)))
    return [drawn[start : start + per_row] for start in range(0, len(drawn), per_row)]


def _draw_from(
    model: Autoencoder, codes: LabelCodes, label: int, count: int, generator: torch.Generator
) -> torch.Tensor:
    """`count` images decoded from codes drawn from `label`'s Gaussian: `(count, C, H, W)`."""
    import torch

    mean, std = codes.mean[label], codes.std[label]
    z = mean + std * torch.randn((count, mean.numel()), generator=generator)  # (count, latent_dim)
    return model.decode(z).clamp(0.0, 1.0)


def label_codes(model: Autoencoder, data: str, *, per_label_images: int = PER_LABEL_IMAGES) -> LabelCodes:
    """Fit each label's Gaussian of `model`'s codes on up to `per_label_images` images of it in `data`.

    Reads `data` in shard order until every label has enough images (labels known up front, like a
    folder's classes), else to the end or `MAX_IMAGES_READ` images; unreadable images are skipped.
    The spread adds the posteriors' own variance to the variance of their means, so a label's
    draws cover what the encoder assigns to it.
    """
    import torch

    contract = model.input_contract
    if "any" in (contract["height"], contract["width"]):
        raise ConfigError("drawing per label needs a fixed-size VAE")
    source = open_source(data)
    if not source.has_labels:
        raise ConfigError(
            f"{data} has no labels, so there is nothing to draw per label; use a labelled source "
            "(builtin:mnist, a folder of class subfolders, ...) or leave --data out"
        )
    names = getattr(source, "label_names", None)
    expected = set(range(len(names))) if names else None
    pixels: dict[int, list[np.ndarray]] = {}
    read = 0

    def done() -> bool:
        full = {k for k, v in pixels.items() if len(v) >= per_label_images}
        return read >= MAX_IMAGES_READ or (expected is not None and expected <= full)

    for shard in source.list_shards():
        for table in source.read_shard(shard):
            for data_bytes, image_label in zip(
                table.column("image").to_pylist(), table.column("label").to_pylist(), strict=True
            ):
                read += 1
                if image_label is None or len(pixels.get(image_label, ())) >= per_label_images:
                    continue
                try:
                    array = images.decode_fitted(
                        data_bytes, contract["channels"], contract["height"], contract["width"]
                    )
                except images.ImageRejected:
                    continue
                pixels.setdefault(int(image_label), []).append(array)
            if done():
                break
        if done():
            break
    if not pixels:
        raise ConfigError(f"no usable labelled images in {data}")
    mean, std, counts = {}, {}, {}
    for image_label, arrays in sorted(pixels.items()):
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0  # (N, C, H, W)
        outs = [model(x[start : start + 64]) for start in range(0, len(x), 64)]
        mu = torch.cat([o["mu"].float() for o in outs])  # (N, latent_dim), float32 statistics
        var = torch.cat([o["logvar"].float() for o in outs]).exp()  # (N, latent_dim)
        mean[image_label] = mu.mean(dim=0)
        std[image_label] = (mu.var(dim=0, unbiased=False) + var.mean(dim=0)).sqrt()
        counts[image_label] = len(arrays)
    return LabelCodes(mean=mean, std=std, counts=counts)
