"""`dense`: a fully connected autoencoder on flattened images (the classic MNIST 784-128-64-128-784).

model = create_model("dense_mnist")     # 28x28 grey, ReLU layers, sigmoid output
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raeflow.models.base import Autoencoder
from raeflow.models.registry import register_family, register_preset


@register_family("dense", "fully connected AE on flattened pixels, ReLU, sigmoid output")
class DenseAutoencoder(Autoencoder):
    """Flatten -> Linear/ReLU stack down to `latent_dim` -> mirrored stack -> sigmoid -> reshape."""

    def __init__(
        self,
        in_channels: int = 1,
        height: int = 28,
        width: int = 28,
        hidden: Sequence[int] = (128,),
        latent_dim: int = 64,
        recon_loss: str = "mse",
    ) -> None:
        super().__init__(in_channels=in_channels, height=height, width=width, recon_loss=recon_loss)
        self.image_shape = (in_channels, height, width)
        num_pixels = in_channels * height * width
        widths = [num_pixels, *hidden, latent_dim]  # e.g. 784 -> 128 -> 64

        encoder: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            encoder += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = []
        back = widths[::-1]  # e.g. 64 -> 128 -> 784
        for i, (a, b) in enumerate(zip(back[:-1], back[1:], strict=True)):
            last = i == len(back) - 2
            decoder += [nn.Linear(a, b), nn.Sigmoid() if last else nn.ReLU()]
        self.decoder = nn.Sequential(*decoder)
        self.latent_dim = latent_dim
        self.latent_shape = (latent_dim,)
        self.init_weights()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        return self.encoder(x)  # (B, C, H, W) -> (B, latent_dim)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.image_shape)  # (B, latent_dim) -> (B, C, H, W)


@register_preset("dense")
def dense_mnist() -> dict:
    """784-128-64-128-784 on 28x28 grey digits, BCE loss (the MNIST fully connected AE)."""
    return {
        "in_channels": 1,
        "height": 28,
        "width": 28,
        "hidden": [128],
        "latent_dim": 64,
        "recon_loss": "bce",
    }
