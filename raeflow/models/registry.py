"""The model zoo's registry: families (one class per file) and named presets, built by `create_model`.

A family registers its class with `@register_family("conv", "...")`; a preset is a small function,
named for what it is, that returns the arguments it sets on top of the family's defaults:

    @register_preset("conv")
    def conv_denoise() -> dict:
        '''Denoising variant: 32-32 channels.'''
        return {"channels": [32, 32]}

    model = create_model("conv_denoise", in_channels=3)   # a preset, with an override
    model = create_model("conv")                          # a family, with its default arguments
    rebuilt = create_model(model.arch_name, **model.arch_args)
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raeflow.errors import ConfigError
from raeflow.models.base import Autoencoder

FAMILY_MODULES = ("dense", "conv", "conv_dense", "strided", "vae", "cvae", "unet", "denoiser")
"""Modules under `raeflow.models` that register a family, in the order the zoo lists them."""

A = TypeVar("A", bound=type[Autoencoder])


@dataclass(frozen=True)
class Family:
    """One model family: its class and a one-line description."""

    name: str
    """Registry name (`conv`); also the model's `arch_name`."""
    cls: type[Autoencoder]
    """The class that builds it."""
    description: str
    """One line for `raeflow models`."""


@dataclass(frozen=True)
class PresetInfo:
    """A named configuration of a family."""

    name: str
    """Preset name (`conv_denoise`)."""
    family: str
    """Family it configures."""
    description: str
    """One line: what it is and where it comes from."""
    args: dict[str, Any] = field(default_factory=dict)
    """Arguments it sets on top of the family's defaults."""


_FAMILIES: dict[str, Family] = {}
_PRESETS: dict[str, PresetInfo] = {}


def register_family(name: str, description: str) -> Callable[[A], A]:
    """Class decorator: register a model family under `name`."""

    def decorate(cls: A) -> A:
        cls.arch_name = name
        _FAMILIES[name] = Family(name, cls, description)
        return cls

    return decorate


def register_preset(family: str) -> Callable[[Callable[[], dict[str, Any]]], Callable[[], dict[str, Any]]]:
    """Function decorator: register a preset of `family`, named after the function, its docstring
    the description; the function returns the preset's arguments."""

    def decorate(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        description = (inspect.getdoc(fn) or "").splitlines()[0] if fn.__doc__ else ""
        _PRESETS[fn.__name__] = PresetInfo(fn.__name__, family, description, fn())
        return fn

    return decorate


def _load_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(f"raeflow.models.{module}")


def list_families() -> list[Family]:
    """Every registered family, in zoo order."""
    _load_families()
    return [_FAMILIES[name] for name in FAMILY_MODULES if name in _FAMILIES]


def list_presets(family: str | None = None) -> list[PresetInfo]:
    """Every preset (of one family, if given), grouped by family in zoo order."""
    _load_families()
    order = {name: i for i, name in enumerate(FAMILY_MODULES)}
    presets = [p for p in _PRESETS.values() if family is None or p.family == family]
    return sorted(presets, key=lambda p: order.get(p.family, len(order)))


def resolve(name: str, **overrides: Any) -> tuple[Family, dict[str, Any]]:
    """The family of a family or preset name and the full, JSON-ready arguments it would be built with."""
    _load_families()
    if name in _PRESETS:
        preset = _PRESETS[name]
        family, args = _FAMILIES[preset.family], {**preset.args, **overrides}
    elif name in _FAMILIES:
        family, args = _FAMILIES[name], dict(overrides)
    else:
        known = ", ".join(sorted(_FAMILIES)) + "; presets: " + ", ".join(sorted(_PRESETS))
        raise ConfigError(f"unknown model {name!r}; families: {known} (see `raeflow models`)")
    signature = inspect.signature(family.cls)
    try:
        bound = signature.bind(**args)
    except TypeError:
        unknown = sorted(set(args) - set(signature.parameters))
        raise ConfigError(
            f"model '{family.name}' has no argument(s) {', '.join(unknown) or '?'}; "
            f"its arguments are: {', '.join(signature.parameters)}"
        ) from None
    bound.apply_defaults()
    return family, {key: _jsonable(value) for key, value in bound.arguments.items()}


def create_model(name: str, **overrides: Any) -> Autoencoder:
    """Build a model from a family (`conv`) or preset (`conv_denoise`) name, with argument overrides."""
    family, args = resolve(name, **overrides)
    model = family.cls(**args)
    model.arch_args = args
    return model


def _jsonable(value: Any) -> Any:
    # Tuples become lists so that arch_args survive a JSON round trip unchanged.
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def describe_presets(family: str | None = None) -> list[dict[str, Any]]:
    """One row per preset for `raeflow models`: family, preset, input contract, latent shape, size."""
    rows = []
    for preset in list_presets(family):
        model = create_model(preset.name)
        contract = model.input_contract
        rows.append(
            {
                "family": preset.family,
                "preset": preset.name,
                "input": f"{contract['channels']}x{contract['height']}x{contract['width']}",
                "latent": "x".join(str(d) for d in model.latent_shape),
                "embedding_dim": model.embedding_dim,
                "parameters": model.num_parameters,
                "generative": model.generative,
                "description": preset.description,
            }
        )
    return rows
