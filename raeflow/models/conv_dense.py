"""`conv_dense`: convolutions, then dense layers down to a 256-d code, and back (the COCO autoencoder).

Encoder: input dropout (a light denoising regulariser), three stride-2 convolutions, three dense
layers down to `latent_dim`. Decoder: three dense layers back to the last feature map, three
stride-2 transposed convolutions to the image. The side must be a multiple of 8.

    model = create_model("conv_dense_coco")                                # 64x64 RGB -> 256-d code
    model = create_model("conv_dense", height=16, width=16, hidden=[64, 32])   # a tiny one for tests
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raeflow.errors import ConfigError
from raeflow.models.base import Autoencoder, require_divisible
from raeflow.models.registry import register_family, register_preset


@register_family("conv_dense", "input dropout, 3 strided convs, 3 dense to a flat code, mirrored back")
class ConvDenseAutoencoder(Autoencoder):
    """Conv feature extractor + dense bottleneck; transposed convs (kernel 4, stride 2) to decode."""

    def __init__(
        self,
        in_channels: int = 3,
        height: int = 64,
        width: int = 64,
        channels: Sequence[int] = (32, 64, 128),
        hidden: Sequence[int] = (1024, 512),
        latent_dim: int = 256,
        dropout: float = 0.1,
        recon_loss: str = "mse",
    ) -> None:
        super().__init__(in_channels=in_channels, height=height, width=width, recon_loss=recon_loss)
        if len(channels) != 3 or len(hidden) != 2:
            raise ConfigError(
                "conv_dense has three conv layers and three dense layers: give 3 channels, 2 hidden"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        h = require_divisible("height", height, 8) // 8
        w = require_divisible("width", width, 8) // 8
        self.feature_shape = (channels[-1], h, w)  # e.g. (128, 8, 8) for 64x64
        flat = channels[-1] * h * w

        encoder: list[nn.Module] = [nn.Dropout(dropout)]
        c_in = in_channels
        for c in channels:  # each halves the side: 64 -> 32 -> 16 -> 8
            encoder += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c
        widths = [flat, *hidden, latent_dim]
        encoder.append(nn.Flatten())
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            encoder.append(nn.Linear(a, b))
            if i < len(widths) - 2:  # the code itself stays linear
                encoder.append(nn.ReLU())
        self.encoder = nn.Sequential(*encoder)

        dense: list[nn.Module] = []
        back = widths[::-1]  # 256 -> 512 -> 1024 -> flat
        for a, b in zip(back[:-1], back[1:], strict=True):
            dense += [nn.Linear(a, b), nn.ReLU()]
        self.decoder_dense = nn.Sequential(*dense)

        deconv: list[nn.Module] = []
        outs = [*reversed(channels[:-1]), in_channels]  # 128 -> 64 -> 32 -> C
        for i, c in enumerate(outs):
            deconv += [nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1)]
            deconv.append(nn.Sigmoid() if i == len(outs) - 1 else nn.ReLU())
            c_in = c
        self.decoder_conv = nn.Sequential(*deconv)
        self.latent_dim = latent_dim
        self.latent_shape = (latent_dim,)
        self.init_weights()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        return self.encoder(x)  # (B, C, H, W) -> (B, latent_dim)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        features = self.decoder_dense(z).view(-1, *self.feature_shape)  # (B, c, H/8, W/8)
        return self.decoder_conv(features)  # (B, C, H, W)


@register_preset("conv_dense")
def conv_dense_coco() -> dict:
    """64x64 RGB photos (COCO-like) to a 256-d code; dense 8192-1024-512-256."""
    return {"in_channels": 3, "height": 64, "width": 64}
