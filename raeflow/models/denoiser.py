"""`denoiser`: a blind, fully convolutional, residual (noise-predicting) denoiser for photos of any size.

In the DnCNN / FFDNet line: the image is folded to half resolution (pixel unshuffle, 2x2 blocks
become 4 channels per input channel), run through a plain stack of 3x3 conv + ReLU layers that
predicts the *noise*, unfolded back, and the noise is subtracted from the input:

    recon = x - unshuffle^-1(stack(unshuffle(x)))

Working at half resolution makes every layer four times cheaper and doubles the receptive field
(FFDNet's trick), which is what lets a CPU train and run it. The last layer starts at zero, so an
untrained model returns its input unchanged: training starts from "do no harm" rather than from a
random image. It is blind (no noise-level input): one model covers the noise range it was trained
on (`raeflow train --denoise gaussian:0-0.2`). Odd heights and widths are padded (edge pixels
repeated) to even and cropped back.

The "code" is the denoised image in the folded layout: `encode(x)` is `(B, 4C, H/2, W/2)` and
`decode(z)` unfolds it and clips to [0, 1], so `decode(encode(x))` equals `forward(x)["recon"]` (for
even sizes).
`embed(x)` averages the last hidden feature map over space: one `channels`-vector per image.

    model = create_model("denoise_grey")
    clean = model(noisy)["recon"]   # (B, 1, H, W), any H and W
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raeflow.errors import ConfigError
from raeflow.models.base import Autoencoder, Size
from raeflow.models.registry import register_family, register_preset

FOLD = 2
"""Pixel-unshuffle factor: the stack runs at 1/FOLD of the image's height and width."""


@register_family("denoiser", "blind residual denoiser (DnCNN/FFDNet line) at half resolution, any size")
class ResidualDenoiser(Autoencoder):
    """Pixel unshuffle, `depth` 3x3 conv layers of `channels` features (ReLU between, batch norm in
    the middle layers if `batch_norm`), pixel shuffle; the output is the input minus the predicted
    noise."""

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        depth: int = 12,
        batch_norm: bool = False,
        per_channel: bool = False,
        height: Size = "any",
        width: Size = "any",
        recon_loss: str = "mse",
    ) -> None:
        # height/width are accepted so every family takes the same size arguments; it takes any size.
        super().__init__(in_channels=in_channels, height="any", width="any", recon_loss=recon_loss)
        if depth < 2 or channels < 1:
            raise ConfigError("denoiser needs depth >= 2 and channels >= 1")
        self.per_channel = per_channel
        """Run one grey network on each channel separately (colour from a grey model's weights)."""
        net_channels = 1 if per_channel else in_channels
        folded = net_channels * FOLD * FOLD
        self.features = channels
        """Width of the hidden layers (and of `embed`'s vectors)."""
        layers: list[nn.Module] = [nn.Conv2d(folded, channels, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            if batch_norm:  # DnCNN's recipe: keeps the ReLUs alive and speeds training up
                layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)]
            else:
                layers.append(nn.Conv2d(channels, channels, 3, padding=1))
            layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, folded, 3, padding=1)
        self.latent_shape = (in_channels * FOLD * FOLD, "any", "any")
        self.init_weights()
        nn.init.zeros_(self.head.weight)  # untrained: predicts no noise, returns the input

    @property
    def embedding_dim(self) -> int:
        return self.features

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        h, w = x.shape[-2:]
        pad_h, pad_w = h % FOLD, w % FOLD
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")  # (B, C, H + pad_h, W + pad_w)
        return x

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Folded padded input `(B', 4C', H/2, W/2)` and the last hidden features `(B', channels, H/2, W/2)`;
        per channel, B' = B * C and C' = 1."""
        x = self._pad(x)
        if self.per_channel:
            x = x.reshape(-1, 1, *x.shape[-2:])  # (B * C, 1, H, W)
        folded = F.pixel_unshuffle(x, FOLD)
        return folded, self.body(folded)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        folded, features = self._features(x)
        z = folded - self.head(features)  # the denoised image, folded: (B', 4C', ceil(H/2), ceil(W/2))
        if self.per_channel:  # (B * C, 4, h, w) -> (B, C * 4, h, w), channel-major like pixel_unshuffle
            z = z.reshape(x.shape[0], -1, *z.shape[-2:])
        return z

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return F.pixel_shuffle(z, FOLD).clamp(0.0, 1.0)  # (B, C, 2h, 2w), clipped to valid pixels

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = self._features(x)[1].mean(dim=(2, 3))  # (B', channels), whatever the image size
        return features.reshape(x.shape[0], -1, self.features).mean(dim=1)  # (B, channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        z = self.encode(x)
        recon = self.decode(z)[..., :h, :w]  # crop the padding back off
        return {"recon": recon, "z": z}


@register_preset("denoiser")
def denoise_grey() -> dict:
    """Blind grey denoiser (the builtin:denoise-grey architecture): 14 layers of 48 at half resolution."""
    return {"in_channels": 1, "channels": 48, "depth": 14}


@register_preset("denoiser")
def denoise_rgb() -> dict:
    """Blind colour denoiser for training from scratch: 14 layers of 48, batch norm, half resolution."""
    return {"in_channels": 3, "channels": 48, "depth": 14, "batch_norm": True}


@register_preset("denoiser")
def denoise_rgb_per_channel() -> dict:
    """Colour denoiser (the builtin:denoise-rgb architecture): the denoise_grey network on each channel
    (start it with --init-from builtin:denoise-grey)."""
    return {"in_channels": 3, "channels": 48, "depth": 14, "per_channel": True}


@register_preset("denoiser")
def denoise_small() -> dict:
    """Small blind denoiser for quick CPU runs and tests: 6 layers of 32 at half resolution."""
    return {"in_channels": 1, "channels": 32, "depth": 6}
