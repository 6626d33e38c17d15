"""Noise models: each does what its spec says, reproducibly, and a bad spec is a clear ConfigError."""

from __future__ import annotations

import pytest
import torch

from raeflow.data.noise import parse_noise
from raeflow.errors import ConfigError


def _grey_batch() -> torch.Tensor:
    """Mid-grey images (values far from 0 and 1, so clipping barely matters): (8, 3, 64, 64)."""
    return torch.full((8, 3, 64, 64), 0.5)


def test_gaussian_has_the_asked_std_and_stays_in_range() -> None:
    x = _grey_batch()
    noisy = parse_noise("gaussian:0.1")(x, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == x.shape
    assert abs((noisy - x).std().item() - 0.1) < 0.005
    assert abs((noisy - x).mean().item()) < 0.005
    assert torch.equal(x, torch.full_like(x, 0.5))  # input untouched


def test_gaussian_is_clipped_to_unit_range() -> None:
    x = torch.rand(4, 1, 32, 32)
    noisy = parse_noise("gaussian:0.8")(x)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert (noisy == 0).any() and (noisy == 1).any()


def test_salt_and_pepper_hits_the_asked_fraction_of_pixels_with_black_or_white() -> None:
    x = _grey_batch()
    noisy = parse_noise("saltpepper:0.05")(x, generator=torch.Generator().manual_seed(0))
    changed = (noisy != x).any(dim=1)  # (B, H, W): whole pixels
    assert abs(changed.float().mean().item() - 0.05) < 0.01
    values = noisy.permute(0, 2, 3, 1)[changed]  # (N, C): all channels of a hit pixel alike
    assert set(values.unique().tolist()) == {0.0, 1.0}
    assert (values == values[:, :1]).all()
    assert abs((values[:, 0] == 1).float().mean().item() - 0.5) < 0.1


def test_mask_zeroes_the_asked_fraction_of_pixels() -> None:
    x = _grey_batch()
    noisy = parse_noise("mask:0.25")(x, generator=torch.Generator().manual_seed(0))
    dropped = (noisy == 0).all(dim=1)
    assert abs(dropped.float().mean().item() - 0.25) < 0.02
    assert torch.equal(noisy[~dropped.unsqueeze(1).expand_as(x)], x[~dropped.unsqueeze(1).expand_as(x)])


@pytest.mark.parametrize("spec", ["gaussian:0.1", "saltpepper:0.05", "mask:0.25"])
def test_same_generator_seed_gives_the_same_noise(spec: str) -> None:
    x = torch.rand(2, 3, 16, 16)
    noise = parse_noise(spec)
    first = noise(x, generator=torch.Generator().manual_seed(7))
    again = noise(x, generator=torch.Generator().manual_seed(7))
    other = noise(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert noise.spec == spec and parse_noise(noise.spec).spec == spec


def test_none_is_the_identity() -> None:
    x = torch.rand(2, 1, 8, 8)
    for spec in ("none", None, ""):
        noise = parse_noise(spec)
        assert noise.spec == "none" and torch.equal(noise(x), x)


@pytest.mark.parametrize(
    "spec", ["gauss:0.1", "gaussian", "gaussian:abc", "mask:1.5", "saltpepper:-0.1", "mask:0"]
)
def test_bad_spec_is_a_one_line_config_error_listing_valid_forms(spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_noise(spec)
    message = str(err.value)
    assert "\n" not in message
    assert "gaussian:STD" in message and "saltpepper:FRACTION" in message and "mask:FRACTION" in message


def test_gaussian_range_draws_one_std_per_image_within_the_range() -> None:
    x = torch.full((64, 1, 48, 48), 0.5)
    noisy = parse_noise("gaussian:0.05-0.2")(x, generator=torch.Generator().manual_seed(0))
    stds = (noisy - x).flatten(1).std(dim=1)  # (64,): one per image
    assert stds.min() > 0.045 and stds.max() < 0.21
    assert stds.max() - stds.min() > 0.1  # they differ: spread over the range, not one value
    assert abs(stds.mean().item() - 0.125) < 0.02


def test_range_from_zero_includes_nearly_clean_images() -> None:
    x = torch.full((200, 1, 16, 16), 0.5)
    noisy = parse_noise("gaussian:0-0.2")(x, generator=torch.Generator().manual_seed(1))
    stds = (noisy - x).flatten(1).std(dim=1)
    assert stds.min() < 0.01 and stds.max() > 0.18


def test_unclipped_gaussian_keeps_values_outside_the_unit_range() -> None:
    x = torch.rand(4, 1, 32, 32)
    noise = parse_noise("gaussian:0.3:unclipped")
    noisy = noise(x, generator=torch.Generator().manual_seed(0))
    assert noisy.min() < -0.2 and noisy.max() > 1.2
    assert noise.spec == "gaussian:0.3:unclipped"
    assert parse_noise("gaussian:0-0.2:unclipped").spec == "gaussian:0-0.2:unclipped"


@pytest.mark.parametrize("spec", ["mask:0.1-0.3", "saltpepper:0-0.05"])
def test_fraction_ranges_vary_per_image(spec: str) -> None:
    x = torch.full((64, 1, 32, 32), 0.5)
    noisy = parse_noise(spec)(x, generator=torch.Generator().manual_seed(0))
    hit = (noisy != x).flatten(1).float().mean(dim=1)  # (64,)
    low, high = (float(v) for v in spec.split(":")[1].split("-"))
    assert hit.min() >= low - 0.03 and hit.max() <= high + 0.03
    assert hit.max() - hit.min() > (high - low) / 2
    assert parse_noise(spec).spec == spec


@pytest.mark.parametrize(
    "spec",
    ["gaussian:0.2-0.1", "gaussian:0-1.5", "gaussian:0.1-0.1", "gaussian:0.1:raw", "mask:0.1:unclipped"],
)
def test_bad_ranges_and_options_are_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="LO-HI"):
        parse_noise(spec)
