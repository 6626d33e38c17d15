"""Deciding, before any worker starts, which model a run builds and at what image size it trains.

The driver looks at the first readable image of the source (nothing more) and the model's input
contract, and settles three things every worker then follows:
- channels: the model takes the data's channels (grey data -> 1, colour -> 3);
- size: a fixed-size model trains at its own size, or at `--image-size` (the model is then built
  for that size); a fully convolutional model trains at `--image-size` or the first image's size;
  every image is resized to the training size;
- with `--patch-size P` the run trains on P x P patches: a fully convolutional model as it is, a
  fixed-size model built for P x P where it can be;
- a fixed-size model whose size differs from the data's, without `--image-size`, is refused with a
  message that says what to pass.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from raeflow.data.images import ImageRejected, decode_image
from raeflow.errors import ConfigError, SourceError
from raeflow.models import create_model, list_presets
from raeflow.models.registry import resolve
from raeflow.train.batches import iter_source_tables
from raeflow.train.config import TrainConfig

PROBE_ROWS = 256
"""How many rows the driver reads at most looking for one decodable image."""


@dataclass(frozen=True)
class RunPlan:
    """What every worker builds and how it shapes images."""

    model_name: str
    """Family or preset passed to `create_model`."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Overrides passed to `create_model` (channels, size, beta)."""
    channels: int = 1
    """Channels of the images fed to the model."""
    height: int = 28
    """Training image height."""
    width: int = 28
    """Training image width."""
    data_shape: tuple[int, int, int] = (28, 28, 1)
    """(height, width, channels) of the first image of the source, for the record."""


def probe_first_image(source, limit: int | None = None) -> tuple[int, int, int]:
    """(height, width, channels) of the first decodable image of a source (Ray-free)."""
    seen = 0
    for table in iter_source_tables(source, limit):
        for data, error in zip(
            table.column("image").to_pylist(), table.column("error").to_pylist(), strict=True
        ):
            seen += 1
            if error is None and data:
                try:
                    pixels = decode_image(data)
                except ImageRejected:
                    pixels = None
                if pixels is not None:
                    return pixels.shape[0], pixels.shape[1], pixels.shape[2]
            if seen >= PROBE_ROWS:
                raise SourceError(f"none of the first {PROBE_ROWS} images of {source.uri} could be decoded")
    raise SourceError(f"{source.uri} holds no images (or none that can be decoded); check the --data URI")


def plan_run(config: TrainConfig, source) -> RunPlan:
    """Settle model arguments and training size from the config and the source's first image."""
    if config.preset is not None:
        names = [info.name for info in list_presets(config.model)]
        if config.preset not in names:
            raise ConfigError(
                f"--preset {config.preset!r} is not a preset of {config.model!r}; "
                f"its presets: {', '.join(names) or 'none'} (see `raeflow models`)"
            )
    height, width, channels = probe_first_image(source, config.limit)
    family, defaults = resolve(config.model_name)
    parameters = inspect.signature(family.cls).parameters
    args: dict[str, Any] = dict(config.model_args)
    if "in_channels" in args:
        channels = int(args["in_channels"])  # the user's choice wins: images are converted to it
    elif "in_channels" in parameters and defaults.get("in_channels") != channels:
        args["in_channels"] = channels
    if config.beta is not None:
        if "beta" not in parameters:
            raise ConfigError(f"--beta only applies to variational models (vae, cvae), not {family.name!r}")
        args["beta"] = config.beta
    contract = create_model(config.model_name, **args).input_contract
    fixed = contract["height"] != "any" and contract["width"] != "any"
    if config.patch_size is not None or config.image_size is not None:
        if config.patch_size is not None:
            train_h = train_w = config.patch_size
            hint = f"--patch-size {contract['height']} or a fully convolutional model"
        else:
            assert config.image_size is not None
            train_h, train_w = config.image_size
            hint = f"--image-size {contract['height']}x{contract['width']}"
        if fixed and (contract["height"], contract["width"]) != (train_h, train_w):
            if not {"height", "width"} <= set(parameters):
                raise ConfigError(
                    f"model {config.model_name!r} is built for {contract['height']}x{contract['width']} "
                    f"images only; pass {hint}"
                )
            args.update(height=train_h, width=train_w)
    elif fixed:
        train_h, train_w = contract["height"], contract["width"]
        if (height, width) != (train_h, train_w):
            raise ConfigError(
                f"model {config.model_name!r} takes {train_h}x{train_w} images but {config.data} holds "
                f"{height}x{width} images; pass --image-size {height}x{width} to build the model for them, "
                f"or --image-size {train_h}x{train_w} to resize the images"
            )
    else:
        train_h, train_w = height, width
    model = create_model(config.model_name, **args)  # refuses sizes the architecture cannot take
    if model.conditional and not getattr(source, "has_labels", False):
        raise ConfigError(
            f"model {config.model_name!r} is conditioned on labels but {config.data} has none; "
            "use a labelled source (builtin:mnist, mnist, cifar10, ...) or an unconditional model (vae)"
        )
    return RunPlan(
        model_name=config.model_name,
        model_args=args,
        channels=channels,
        height=train_h,
        width=train_w,
        data_shape=(height, width, channels),
    )
