"""Noise models for denoising training and reports, parsed from a short spec string.

    noise = parse_noise("gaussian:0.1")      # add N(0, 0.1^2), clip to [0, 1]
    noise = parse_noise("saltpepper:0.05")   # 5% of pixels set to 0 or 1 (half each)
    noise = parse_noise("mask:0.25")         # 25% of pixels set to 0
    noisy = noise(batch, generator=torch.Generator().manual_seed(0))   # (B, C, H, W) in [0, 1]

Salt-and-pepper and masking act on whole pixels (all channels of a pixel alike), the way a dead
or stuck sensor pixel looks. Every noise model returns a new tensor and leaves its input alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raeflow.errors import ConfigError

VALID_FORMS = "none, gaussian:STD (0 < STD <= 1), saltpepper:FRACTION, mask:FRACTION (0 < FRACTION <= 1)"
"""The accepted spec forms, as shown in error messages."""


class Noise:
    """A corruption of a batch of images `(B, C, H, W)` in [0, 1]; `spec` is its parseable name."""

    spec: str = "none"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy copy of `x`, same shape, values in [0, 1]."""
        return x.clone()

    def __repr__(self) -> str:
        return f"parse_noise({self.spec!r})"


def _pixel_mask(x: torch.Tensor, fraction: float, generator: torch.Generator | None) -> torch.Tensor:
    """A boolean `(B, 1, H, W)` mask that selects each pixel with probability `fraction`."""
    b, _, h, w = x.shape
    return torch.rand((b, 1, h, w), generator=generator, device=x.device) < fraction


@dataclass(frozen=True, repr=False)
class GaussianNoise(Noise):
    """Additive Gaussian noise with standard deviation `std`, clipped back to [0, 1]."""

    std: float
    """Standard deviation in [0, 1] pixel units."""

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"gaussian:{self.std:g}"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.std * noise).clamp_(0.0, 1.0)


@dataclass(frozen=True, repr=False)
class SaltPepperNoise(Noise):
    """A `fraction` of pixels replaced by black or white (half each)."""

    fraction: float
    """Share of pixels hit."""

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"saltpepper:{self.fraction:g}"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        hit = _pixel_mask(x, self.fraction, generator)  # (B, 1, H, W)
        white = _pixel_mask(x, 0.5, generator)  # salt or pepper, per pixel
        value = white.to(x.dtype).expand_as(x)
        return torch.where(hit.expand_as(x), value, x)


@dataclass(frozen=True, repr=False)
class MaskNoise(Noise):
    """A `fraction` of pixels dropped (set to 0), like masked or missing pixels."""

    fraction: float
    """Share of pixels dropped."""

    @property
    def spec(self) -> str:  # type: ignore[override]
        return f"mask:{self.fraction:g}"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        hit = _pixel_mask(x, self.fraction, generator)  # (B, 1, H, W)
        return x.masked_fill(hit, 0.0)


_KINDS: dict[str, type[Noise]] = {"gaussian": GaussianNoise, "saltpepper": SaltPepperNoise, "mask": MaskNoise}


def parse_noise(spec: str | None) -> Noise:
    """The noise model a spec names: `none`, `gaussian:0.1`, `saltpepper:0.05` or `mask:0.25`."""
    text = (spec or "none").strip().lower()
    if text in ("none", "", "0"):
        return Noise()
    kind, _, value = text.partition(":")
    try:
        amount = float(value)
    except ValueError:
        amount = float("nan")
    if kind not in _KINDS or not 0.0 < amount <= 1.0:
        raise ConfigError(f"bad noise spec {spec!r}; valid forms: {VALID_FORMS}")
    return _KINDS[kind](amount)  # type: ignore[call-arg]
