"""`strided`: strided convolutions instead of pooling, batch norm, no dense layers (CIFAR-10 study's best).

Depth (how many times the image is halved) and width (channels of the first stage, doubled at each
stage) are arguments; a 1x1 convolution sets the code's channels. The side must be a multiple
of 2^depth.

    model = create_model("strided_cifar10")                       # 32x32 RGB -> 16x4x4 code
    model = create_model("strided", depth=2, width=16)            # shallower, thinner
"""

from __future__ import annotations

import torch
from torch import nn

from raeflow.errors import ConfigError
from raeflow.models.base import Autoencoder, require_divisible
from raeflow.models.registry import register_family, register_preset


def _stage(c_in: int, c_out: int, *, up: bool) -> nn.Sequential:
    """Halve (conv, stride 2) or double (transposed conv, stride 2) the side, then BN + ReLU."""
    conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1) if up else nn.Conv2d(c_in, c_out, 3, 2, 1)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())


@register_family("strided", "strided convs + batch norm, no pooling, no dense layers; depth/width arguments")
class StridedAutoencoder(Autoencoder):
    """`depth` stride-2 conv stages (width, 2·width, ...) -> 1x1 conv code -> mirrored transposed convs."""

    def __init__(
        self,
        in_channels: int = 3,
        height: int = 32,
        width: int = 32,
        depth: int = 3,
        base_channels: int = 32,
        latent_channels: int = 16,
        recon_loss: str = "mse",
    ) -> None:
        super().__init__(in_channels=in_channels, height=height, width=width, recon_loss=recon_loss)
        if depth < 1 or base_channels < 1 or latent_channels < 1:
            raise ConfigError("strided needs depth, base_channels and latent_channels of at least 1")
        h = require_divisible("height", height, 2**depth) >> depth
        w = require_divisible("width", width, 2**depth) >> depth
        widths = [base_channels * 2**i for i in range(depth)]  # e.g. 32, 64, 128

        stages = [
            _stage(c_in, c_out, up=False)
            for c_in, c_out in zip([in_channels, *widths[:-1]], widths, strict=True)
        ]
        self.encoder = nn.Sequential(*stages, nn.Conv2d(widths[-1], latent_channels, 1))

        decoder: list[nn.Module] = [
            nn.Conv2d(latent_channels, widths[-1], 1),
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(),
        ]
        back = widths[::-1]  # 128, 64, 32
        for c_in, c_out in zip(back[:-1], back[1:], strict=True):
            decoder.append(_stage(c_in, c_out, up=True))
        decoder += [nn.ConvTranspose2d(back[-1], in_channels, 4, 2, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)
        self.latent_shape = (latent_channels, h, w)
        self.init_weights()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        return self.encoder(x)  # (B, C, H, W) -> (B, latent_channels, H / 2^depth, W / 2^depth)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z)  # (B, latent_channels, h, w) -> (B, C, H, W)


@register_preset("strided")
def strided_cifar10() -> dict:
    """32x32 RGB (CIFAR-10), depth 3, 32-64-128 channels, 16x4x4 code."""
    return {
        "in_channels": 3,
        "height": 32,
        "width": 32,
        "depth": 3,
        "base_channels": 32,
        "latent_channels": 16,
    }


@register_preset("strided")
def strided_photo64() -> dict:
    """64x64 RGB photos, depth 4, 24-48-96-192 channels, 16x4x4 code (the builtin:photo-ae architecture)."""
    return {
        "in_channels": 3,
        "height": 64,
        "width": 64,
        "depth": 4,
        "base_channels": 24,
        "latent_channels": 16,
    }
