"""Noise models for denoising training and reports, parsed from a short spec string.

    noise = parse_noise("gaussian:0.1")      # add N(0, 0.1^2), clip to [0, 1]
    noise = parse_noise("gaussian:0-0.2")    # blind training: each image its own std in [0, 0.2]
    noise = parse_noise("gaussian:0.1:unclipped")   # not clipped (the denoising benchmarks' protocol)
    noise = parse_noise("saltpepper:0.05")   # 5% of pixels set to 0 or 1 (half each)
    noise = parse_noise("mask:0.25")         # 25% of pixels set to 0
    noisy = noise(batch, generator=torch.Generator().manual_seed(0))   # (B, C, H, W) in [0, 1]

Every amount may be a range `LO-HI`: each image of a batch then draws its own amount uniformly
from it (a blind denoiser learns the whole range). Gaussian noise is clipped to [0, 1] like noise
in a saved 8-bit photo; `:unclipped` keeps values outside, as the published denoising numbers do.
Salt-and-pepper and masking act on whole pixels (all channels of a pixel alike), the way a dead
or stuck sensor pixel looks. Every noise model returns a new tensor and leaves its input alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from raeflow.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where noise is made: parsing a spec (the CLI) needs no torch
    import torch

VALID_FORMS = (
    "none, gaussian:STD[:unclipped] (0 < STD <= 1), saltpepper:FRACTION, mask:FRACTION (0 < FRACTION <= 1); "
    "any amount may be a range LO-HI (0 <= LO < HI), drawn per image, e.g. gaussian:0-0.2"
)
"""The accepted spec forms, as shown in error messages."""


class Noise:
    """A corruption of a batch of images `(B, C, H, W)` in [0, 1]; `spec` is its parseable name."""

    spec: str = "none"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy copy of `x`, same shape, values in [0, 1]."""
        return x.clone()

    def __repr__(self) -> str:
        return f"parse_noise({self.spec!r})"


def _pixel_mask(x: torch.Tensor, fraction: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A boolean `(B, 1, H, W)` mask that selects each pixel with probability `fraction` (per image)."""
    import torch

    b, _, h, w = x.shape
    return torch.rand((b, 1, h, w), generator=generator, device=x.device) < fraction


def _amounts(low: float, high: float, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One amount per image, `(B, 1, 1, 1)`: `high` when fixed, uniform in [low, high] for a range."""
    import torch

    if low == high:
        return torch.full((x.shape[0], 1, 1, 1), high, device=x.device, dtype=x.dtype)
    u = torch.rand((x.shape[0], 1, 1, 1), generator=generator, device=x.device, dtype=x.dtype)
    return low + (high - low) * u


def _amount_spec(low: float, high: float) -> str:
    return f"{high:g}" if low == high else f"{low:g}-{high:g}"


@dataclass(frozen=True, repr=False)
class GaussianNoise(Noise):
    """Additive Gaussian noise with standard deviation `std` (or one drawn per image from
    [`low`, `std`]), clipped back to [0, 1] unless `clip` is False."""

    std: float
    """Standard deviation in [0, 1] pixel units (the top of the range for a range)."""
    low: float | None = None
    """Bottom of the per-image range; None for a fixed std."""
    clip: bool = True
    """Clip the noisy image to [0, 1] (a saved photo); False keeps it unbounded (benchmark protocol)."""

    @property
    def spec(self) -> str:  # type: ignore[override]
        low = self.std if self.low is None else self.low
        return f"gaussian:{_amount_spec(low, self.std)}" + ("" if self.clip else ":unclipped")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        std = _amounts(self.std if self.low is None else self.low, self.std, x, generator)  # (B, 1, 1, 1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noisy = x + std * noise
        return noisy.clamp_(0.0, 1.0) if self.clip else noisy


@dataclass(frozen=True, repr=False)
class SaltPepperNoise(Noise):
    """A `fraction` of pixels (or one drawn per image from [`low`, `fraction`]) replaced by black
    or white (half each)."""

    fraction: float
    """Share of pixels hit (the top of the range for a range)."""
    low: float | None = None
    """Bottom of the per-image range; None for a fixed fraction."""

    @property
    def spec(self) -> str:  # type: ignore[override]
        low = self.fraction if self.low is None else self.low
        return f"saltpepper:{_amount_spec(low, self.fraction)}"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        import torch

        fraction = _amounts(self.fraction if self.low is None else self.low, self.fraction, x, generator)
        hit = _pixel_mask(x, fraction, generator)  # (B, 1, H, W)
        white = _pixel_mask(x, torch.tensor(0.5), generator)  # salt or pepper, per pixel
        value = white.to(x.dtype).expand_as(x)
        return torch.where(hit.expand_as(x), value, x)


@dataclass(frozen=True, repr=False)
class MaskNoise(Noise):
    """A `fraction` of pixels (or one drawn per image from [`low`, `fraction`]) dropped (set to 0),
    like masked or missing pixels."""

    fraction: float
    """Share of pixels dropped (the top of the range for a range)."""
    low: float | None = None
    """Bottom of the per-image range; None for a fixed fraction."""

    @property
    def spec(self) -> str:  # type: ignore[override]
        low = self.fraction if self.low is None else self.low
        return f"mask:{_amount_spec(low, self.fraction)}"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        fraction = _amounts(self.fraction if self.low is None else self.low, self.fraction, x, generator)
        hit = _pixel_mask(x, fraction, generator)  # (B, 1, H, W)
        return x.masked_fill(hit, 0.0)


_KINDS: dict[str, type[Noise]] = {"gaussian": GaussianNoise, "saltpepper": SaltPepperNoise, "mask": MaskNoise}


def _parse_amount(text: str) -> tuple[float, float] | None:
    """`0.1` -> (0.1, 0.1); `0-0.2` -> (0.0, 0.2); None when it is neither a valid amount nor range."""
    low_text, dash, high_text = text.partition("-")
    try:
        high = float(high_text if dash else low_text)
        low = float(low_text) if dash else high
    except ValueError:
        return None
    if dash and not 0.0 <= low < high <= 1.0:
        return None
    if not dash and not 0.0 < high <= 1.0:
        return None
    return low, high


def parse_noise(spec: str | None) -> Noise:
    """The noise model a spec names: `none`, `gaussian:0.1`, `gaussian:0-0.2`, `gaussian:0.1:unclipped`,
    `saltpepper:0.05`, `mask:0.25` (amounts may be ranges `LO-HI`); `ConfigError` naming the valid
    forms otherwise."""
    text = (spec or "none").strip().lower()
    if text in ("none", "", "0"):
        return Noise()
    kind, _, rest = text.partition(":")
    value, _, option = rest.partition(":")
    amount = _parse_amount(value)
    clip_ok = option == "" or (kind == "gaussian" and option == "unclipped")
    if kind not in _KINDS or amount is None or not clip_ok:
        raise ConfigError(f"bad noise spec {spec!r}; valid forms: {VALID_FORMS}")
    low, high = amount
    low_arg = None if low == high else low
    if kind == "gaussian":
        return GaussianNoise(high, low_arg, clip=option != "unclipped")
    return _KINDS[kind](high, low_arg)  # type: ignore[call-arg]
