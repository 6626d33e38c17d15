"""Losses: the values they are documented to have."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raeflow.errors import ConfigError
from raeflow.models import losses


def test_bce_matches_torch_and_stays_finite_on_saturated_outputs() -> None:
    recon, target = torch.rand(4, 1, 8, 8).clamp(0.01, 0.99), torch.rand(4, 1, 8, 8)
    assert torch.allclose(losses.bce(recon, target), F.binary_cross_entropy(recon, target), atol=1e-5)
    saturated = torch.zeros(2, 1, 4, 4)
    assert torch.isfinite(losses.bce(saturated, torch.ones_like(saturated)))


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    zeros = torch.zeros(3, 5)
    assert torch.equal(losses.kl_divergence(zeros, zeros), torch.zeros(3))
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5)
    kl = losses.kl_divergence(mu, logvar)
    assert kl.shape == (3,) and (kl > 0).all()
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dimension.
    assert torch.allclose(losses.kl_divergence(torch.ones(1, 4), torch.zeros(1, 4)), torch.tensor([2.0]))


def test_vae_loss_adds_beta_weighted_kl_per_pixel() -> None:
    recon = torch.tensor(0.05)
    mu, logvar = torch.ones(2, 4), torch.zeros(2, 4)  # KL = 2 nats per image
    out = losses.vae_loss(recon, mu, logvar, beta=0.5, num_pixels=100)
    assert out["kl"].item() == pytest.approx(2.0)
    assert out["loss"].item() == pytest.approx(0.05 + 0.5 * 2.0 / 100)
    assert out["recon"] is recon


def test_unknown_reconstruction_loss_is_a_config_error() -> None:
    assert losses.reconstruction_loss("mse") is losses.mse
    with pytest.raises(ConfigError, match="mse, bce"):
        losses.reconstruction_loss("huber")
