"""`unet`: a fully convolutional encoder-decoder with skip connections, for denoising photos of any size.

The image is padded (edge pixels repeated) up to a multiple of the total stride 2^depth, run
through the U, and cropped back, so any height and width works, grey or RGB. The skip
connections carry fine detail past the bottleneck, which is what a denoiser needs.

`encode(x)` is the bottleneck feature map `(B, C, H', W')` (its size follows the image);
`embed(x)` averages it over space to one `C`-vector per image. `decode(z)` runs the decoder with
the skips left empty (zeros): it gives an image of the padded size, a coarse rendering of the
code, while `forward` is the real model.

    model = create_model("unet_grey")
    out = model(torch.rand(1, 1, 481, 321))["recon"]   # (1, 1, 481, 321)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raeflow.errors import ConfigError
from raeflow.models.base import Autoencoder, Size
from raeflow.models.registry import register_family, register_preset


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + batch norm + ReLU layers at the same resolution."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


@register_family("unet", "fully convolutional U-Net with skip connections, any image size, for denoising")
class UNet(Autoencoder):
    """`depth` levels of double conv + max-pool; the decoder upsamples, concatenates the skip, double conv."""

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 32,
        depth: int = 3,
        height: Size = "any",
        width: Size = "any",
        recon_loss: str = "mse",
    ) -> None:
        # height/width are accepted so every family takes the same size arguments; a U-Net takes any size.
        super().__init__(in_channels=in_channels, height="any", width="any", recon_loss=recon_loss)
        if depth < 1 or base_channels < 1:
            raise ConfigError("unet needs depth >= 1 and base_channels >= 1")
        self.stride = 2**depth
        widths = [base_channels * 2**i for i in range(depth + 1)]  # e.g. 32, 64, 128, 256 (bottleneck)

        self.down = nn.ModuleList(
            _double_conv(c_in, c) for c_in, c in zip([in_channels, *widths[:-2]], widths[:-1], strict=True)
        )
        self.bottleneck = _double_conv(widths[-2], widths[-1])
        self.up = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], 3, padding=1) for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], in_channels, 1)
        self.skip_widths = widths[:-1]
        self.latent_shape = (widths[-1], "any", "any")
        self.init_weights()

    @property
    def embedding_dim(self) -> int:
        return int(self.latent_shape[0])

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.stride, -w % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")  # (B, C, H + pad_h, W + pad_w)
        return x

    def _down(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)  # (B, c_i, H / 2^i, W / 2^i)
            x = F.max_pool2d(x, 2)
        return self.bottleneck(x), skips  # (B, c_depth, H / 2^depth, W / 2^depth)

    def _up(self, z: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = z
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = up(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, c_i, 2h, 2w)
            x = merge(torch.cat([x, skip], dim=1))
        return torch.sigmoid(self.head(x))  # (B, C, H, W)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._down(self._pad(x))[0]  # (B, C, H, W) -> (B, c_depth, ceil(H / s), ceil(W / s))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x).mean(dim=(2, 3))  # (B, c_depth), whatever the image size

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = z.shape
        skips = [
            z.new_zeros(b, c, h * 2 ** (len(self.skip_widths) - i), w * 2 ** (len(self.skip_widths) - i))
            for i, c in enumerate(self.skip_widths)
        ]
        return self._up(z, skips)  # (B, C, h * stride, w * stride)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        z, skips = self._down(self._pad(x))
        recon = self._up(z, skips)[..., :h, :w]  # crop the padding back off
        return {"recon": recon, "z": z}


@register_preset("unet")
def unet_grey() -> dict:
    """Grey photos of any size (denoising benchmarks like BSD68), depth 3, 32-64-128-256 channels."""
    return {"in_channels": 1, "base_channels": 32, "depth": 3}


@register_preset("unet")
def unet_rgb() -> dict:
    """Colour photos of any size, depth 3, 32-64-128-256 channels."""
    return {"in_channels": 3, "base_channels": 32, "depth": 3}
