"""Training losses of the zoo: pixel reconstruction (MSE, BCE) and the VAE's KL term with weight β.

Every reconstruction loss is a mean over all pixels of the batch, so its value reads the same
whatever the image size and is comparable between models. The KL divergence is summed over the
latent dimensions (nats per image); a VAE divides it by the number of pixels before adding it,
which is the per-image ELBO (sum over pixels + β·KL) scaled by a constant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from raeflow.errors import ConfigError

ReconLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every pixel of the batch (a scalar)."""
    return F.mse_loss(recon, target)


def bce(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of [0, 1] reconstructions against [0, 1] targets, mean over pixels."""
    # Written out (not F.binary_cross_entropy, which refuses to run under CUDA autocast) and in
    # float32; the clamp keeps log() finite when a sigmoid saturates to exactly 0 or 1.
    eps = 1e-6
    p, t = recon.float().clamp(eps, 1 - eps), target.float()
    return -(t * p.log() + (1 - t) * (1 - p).log()).mean()


RECON_LOSSES: dict[str, ReconLoss] = {"mse": mse, "bce": bce}
"""Reconstruction losses by name (the `recon_loss` argument of every model)."""


def reconstruction_loss(name: str) -> ReconLoss:
    """The reconstruction loss called `name` ("mse" or "bce")."""
    try:
        return RECON_LOSSES[name]
    except KeyError:
        raise ConfigError(
            f"unknown reconstruction loss {name!r}; use one of: {', '.join(RECON_LOSSES)}"
        ) from None


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per image, summed over latent dims: `(B, D) -> (B,)`."""
    mu, logvar = mu.float(), logvar.float()  # float32 even under bf16 autocast
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def vae_loss(
    recon_term: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float, num_pixels: int
) -> dict[str, torch.Tensor]:
    """VAE objective from a mean-per-pixel reconstruction term: `loss = recon + β·KL / num_pixels`.

    Returns `loss`, `recon` (as given) and `kl` (mean over the batch, nats per image, >= 0).
    """
    kl = kl_divergence(mu, logvar).mean()
    return {"loss": recon_term + beta * kl / num_pixels, "recon": recon_term, "kl": kl}
