"""`vae`: a convolutional variational autoencoder with a small latent (the STL-10/CIFAR-10 VAE).

Encoder: stride-2 convolutions, then one linear layer to the posterior's mean and log-variance.
Decoder: a linear layer back to the last feature map and stride-2 transposed convolutions.
Objective: reconstruction (MSE by default) + β·KL, see `losses.vae_loss`. In training mode the
code is sampled from the posterior; in eval mode it is the mean, so reconstructions, embeddings
and denoised images are deterministic.

    model = create_model("vae_stl10", beta=0.5)        # 96x96 RGB, 40-d latent
    images = model.sample(16)                          # (16, 3, 96, 96) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raeflow.errors import ConfigError
from raeflow.models import losses
from raeflow.models.base import Autoencoder, require_divisible
from raeflow.models.registry import register_family, register_preset


@register_family("vae", "conv VAE: MSE + beta*KL, small latent, sample() draws new images")
class ConvVAE(Autoencoder):
    """Stride-2 conv encoder -> (mu, logvar) -> reparameterised z -> linear + transposed-conv decoder."""

    generative = True

    def __init__(
        self,
        in_channels: int = 3,
        height: int = 32,
        width: int = 32,
        channels: Sequence[int] = (32, 64, 128),
        latent_dim: int = 40,
        beta: float = 1.0,
        batch_norm: bool = True,
        recon_loss: str = "mse",
    ) -> None:
        super().__init__(in_channels=in_channels, height=height, width=width, recon_loss=recon_loss)
        if not channels or latent_dim < 1 or beta < 0:
            raise ConfigError("vae needs at least one conv stage, latent_dim >= 1 and beta >= 0")
        stride = 2 ** len(channels)
        h, w = (
            require_divisible("height", height, stride) // stride,
            require_divisible("width", width, stride) // stride,
        )
        self.beta = float(beta)
        self.num_pixels = in_channels * height * width
        self.feature_shape = (channels[-1], h, w)
        flat = channels[-1] * h * w

        encoder: list[nn.Module] = []
        c_in = in_channels
        for c in channels:  # each halves the side: 32 -> 16 -> 8 -> 4
            encoder.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=not batch_norm))
            encoder += [nn.BatchNorm2d(c)] if batch_norm else []
            encoder.append(nn.LeakyReLU(0.2))
            c_in = c
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.posterior = nn.Linear(flat, 2 * latent_dim)  # -> mu, logvar

        self.decoder_input = nn.Linear(latent_dim + self.condition_dim(), flat)
        decoder: list[nn.Module] = [nn.ReLU()]
        outs = [*reversed(channels[:-1]), in_channels]  # 64 -> 32 -> C
        for i, c in enumerate(outs):
            last = i == len(outs) - 1
            decoder.append(nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1, bias=last or not batch_norm))
            if last:
                decoder.append(nn.Sigmoid())
            else:
                decoder += [nn.BatchNorm2d(c), nn.ReLU()] if batch_norm else [nn.ReLU()]
            c_in = c
        self.decoder = nn.Sequential(*decoder)
        self.latent_dim = latent_dim
        self.latent_shape = (latent_dim,)
        self.init_weights()

    # Conditioning hooks, used by `cvae`: extra decoder inputs per image (none here).
    def condition_dim(self) -> int:
        """Width of the label conditioning appended to z before decoding."""
        return 0

    def condition(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The decoder's input for codes `z` `(B, D)` and labels `y` `(B,)`."""
        return z

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each `(B, latent_dim)`."""
        self.check_batch(x)
        mu, logvar = self.posterior(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 12.0)  # keeps exp() finite early in training

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior_params(x)[0]  # (B, C, H, W) -> (B, latent_dim), the posterior mean

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        features = self.decoder_input(self.condition(z, y)).view(-1, *self.feature_shape)  # (B, c, h, w)
        return self.decoder(features)  # (B, C, H, W)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mu, logvar = self.posterior_params(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return {"recon": self.decode(z, y), "z": z, "mu": mu, "logvar": logvar}

    def loss(
        self, target: torch.Tensor, out: dict[str, torch.Tensor], y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        recon = self.recon_loss(out["recon"], target)
        return losses.vae_loss(recon, out["mu"], out["logvar"], self.beta, self.num_pixels)

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        z = torch.randn((n, self.latent_dim), generator=generator, device=self.device)
        return self.decode(z, y)  # (n, C, H, W) in [0, 1]


@register_preset("vae")
def vae_cifar10() -> dict:
    """32x32 RGB (CIFAR-10), 32-64-128 channels, 40-d latent, MSE + KL."""
    return {"in_channels": 3, "height": 32, "width": 32, "channels": [32, 64, 128], "latent_dim": 40}


@register_preset("vae")
def vae_stl10() -> dict:
    """96x96 RGB (STL-10), 32-64-128-256 channels, 40-d latent, MSE + KL."""
    return {"in_channels": 3, "height": 96, "width": 96, "channels": [32, 64, 128, 256], "latent_dim": 40}
