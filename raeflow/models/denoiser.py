"""`denoiser`: a blind, fully convolutional, residual (noise-predicting) denoiser for photos of any size.

In the DnCNN / FFDNet line: the image is folded to half resolution (pixel unshuffle, 2x2 blocks
become 4 channels per input channel), run through a plain stack of 3x3 conv + ReLU layers that
predicts the *noise*, unfolded back, and the noise is subtracted from the input:

    recon = x - unshuffle^-1(stack(unshuffle(x)))

Working at half resolution makes every layer four times cheaper and doubles the receptive field
(FFDNet's trick), which is what lets a CPU train and run it. The last layer starts at zero, so an
untrained model returns its input unchanged: training starts from "do no harm" rather than from a
random image. It is blind (no noise-level input): one model covers the noise range it was trained
on (`raeflow train --denoise gaussian:0-0.2`).

A small network that is blind also removes some detail from photos that have little or no noise.
The shipped presets therefore carry a *noise guard* (`noise_guard=(low, high)`, 0-255 scale), used
outside training only: each image's noise level is estimated from its finest diagonal detail in
its flattest areas (`estimate_noise`); below `low` the image comes back unchanged, above `high` it
is fully denoised, in between partly, and what is removed is never stronger than that estimate.
A photo denoised in tiles is estimated once, as a whole (`pinned_noise`), not tile by tile.
Odd heights and widths are padded (edge pixels
repeated) to even and cropped back.

The "code" is the denoised image in the folded layout: `encode(x)` is `(B, 4C, H/2, W/2)` and
`decode(z)` unfolds it and clips to [0, 1], so `decode(encode(x))` equals `forward(x)["recon"]` (for
even sizes).
`embed(x)` averages the last hidden feature map over space: one `channels`-vector per image.

    model = create_model("denoise_grey")
    clean = model(noisy)["recon"]   # (B, 1, H, W), any H and W
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raeflow.errors import ConfigError
from raeflow.models.base import Autoencoder, Size
from raeflow.models.registry import register_family, register_preset

FOLD = 2
"""Pixel-unshuffle factor: the stack runs at 1/FOLD of the image's height and width."""

NOISE_GUARD = (4.0, 10.0)
"""The shipped denoisers' guard (0-255 scale): measured on BSD68 and held-out colour crops at sigma
0-50 (bench/denoise_quality.py), it keeps sigma 0 and 5 from losing detail and costs nothing above."""
OPPONENT = torch.tensor(
    [
        [1 / 3, 1 / 3, 1 / 3],
        [0.5**0.5, 0.0, -(0.5**0.5)],
        [(1 / 6) ** 0.5, -2 * (1 / 6) ** 0.5, (1 / 6) ** 0.5],
    ]
)
"""RGB -> opponent colours: the mean (noise sigma / sqrt 3) and two orthonormal colour differences
(noise sigma unchanged), as in CBM3D."""
OPPONENT_OFFSET = torch.tensor([0.0, 0.5, 0.5])
"""Added to the colour differences so they sit around mid-grey, where the grey network has seen pixels."""
GUARD_BLOCK = 8
"""Side of the blocks of diagonal detail coefficients the noise level is estimated from."""
GUARD_QUANTILE = 0.2
"""The noise estimate is this quantile of the blocks' RMS: flat regions show the noise, texture
does not count."""
GUARD_CORRECTION = 1.08
"""Undoes the low bias of that quantile for pure Gaussian noise (the RMS of 64 samples is 0.925
sigma at its 20 % quantile)."""


def estimate_noise(folded: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-image Gaussian noise level (0-1 scale) of images folded by `pixel_unshuffle(x, 2)`, `(B,)`.

    The diagonal Haar detail `(a - b - c + d) / 2` of each 2x2 block has the noise's standard
    deviation and little of the picture; in textured areas it also carries detail, so the estimate
    is a low quantile of its RMS over `GUARD_BLOCK`-sized blocks (flat areas), averaged over channels.
    """
    b, _, h, w = folded.shape
    f = folded.reshape(b, channels, FOLD * FOLD, h, w)
    hh = (f[:, :, 0] - f[:, :, 1] - f[:, :, 2] + f[:, :, 3]) / 2  # (B, C, h, w)
    n = GUARD_BLOCK
    if h < n or w < n:  # too small for blocks: the median absolute value (Donoho's estimator)
        return hh.abs().flatten(1).median(dim=1).values / 0.6745
    hh = hh[..., : h // n * n, : w // n * n].reshape(b, channels, h // n, n, w // n, n)
    rms = hh.pow(2).mean(dim=(3, 5)).flatten(2)  # (B, C, blocks) mean squares
    return (torch.quantile(rms.sqrt(), GUARD_QUANTILE, dim=2) * GUARD_CORRECTION).mean(dim=1)


def noise_sample(image: np.ndarray, max_blocks: int = 4096) -> np.ndarray:
    """At most `max_blocks` of the `2 x GUARD_BLOCK`-pixel blocks of `image` `(H, W, C)`, taken on an
    even grid and put side by side `(h, w, C)`: what `estimate_noise` sees of the whole image, in
    bounded memory (4096 blocks of 16x16: 1 megapixel), since it works on such blocks one by one."""
    side = FOLD * GUARD_BLOCK
    rows, cols = image.shape[0] // side, image.shape[1] // side
    if rows * cols <= max_blocks:
        return image
    step = math.ceil(math.sqrt(rows * cols / max_blocks))
    grid = image[: rows * side, : cols * side].reshape(rows, side, cols, side, image.shape[2])
    picked = grid[::step, :, ::step]  # (r, side, c, side, C), r * c <= max_blocks
    return np.ascontiguousarray(picked).reshape(
        picked.shape[0] * side, picked.shape[2] * side, image.shape[2]
    )


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
        noise_guard: tuple[float, float] | None = None,
        colour_space: str = "rgb",
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
        if noise_guard is not None and not 0 <= noise_guard[0] < noise_guard[1]:
            raise ConfigError("denoiser noise_guard is (low, high) with 0 <= low < high (0-255 scale)")
        self.noise_guard: tuple[float, float] | None = (
            (float(noise_guard[0]), float(noise_guard[1])) if noise_guard is not None else None
        )
        """Outside training: below an estimated noise of `low` (0-255 scale) the image is left as it is,
        above `high` it is fully denoised, in between partly; and the removed part is never
        stronger than the estimated noise. Keeps clean and barely noisy photos from losing detail."""
        if colour_space not in ("rgb", "opponent") or (colour_space == "opponent" and in_channels != 3):
            raise ConfigError("denoiser colour_space is rgb, or opponent for 3 channels")
        self.colour_space = colour_space
        """`opponent`: denoise brightness and two colour differences instead of R, G, B (as CBM3D does):
        the colour differences are smooth, and Gaussian noise stays Gaussian of the same level in them."""
        self._pinned: torch.Tensor | None = None  # noise levels set by `pinned_noise`
        self.register_buffer("to_opponent", OPPONENT.clone(), persistent=False)
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

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        """The padded input in the network's colours, folded: `(B', 4C', H/2, W/2)`; per channel,
        B' = B * C and C' = 1."""
        x = self._pad(x)
        if self.colour_space == "opponent":  # (B, 3, H, W) RGB -> brightness, two colour differences
            x = torch.einsum("oc,bchw->bohw", self.to_opponent, x) + OPPONENT_OFFSET.to(x)[:, None, None]
        if self.per_channel:
            x = x.reshape(-1, 1, *x.shape[-2:])  # (B * C, 1, H, W)
        return F.pixel_unshuffle(x, FOLD)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The folded input (`_fold`) and the last hidden features `(B', channels, H/2, W/2)`."""
        folded = self._fold(x)
        return folded, self.body(folded)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        folded, features = self._features(x)
        noise = self.head(features)  # the predicted noise, folded: (B', 4C', ceil(H/2), ceil(W/2))
        if self.noise_guard is not None and not self.training:
            noise = noise * self._guard(folded, noise)[:, None, None, None]
        z = folded - noise  # the denoised image, folded
        if self.per_channel:  # (B * C, 4, h, w) -> (B, C * 4, h, w), channel-major like pixel_unshuffle
            z = z.reshape(x.shape[0], -1, *z.shape[-2:])
        return z

    @contextmanager
    def pinned_noise(self, x: torch.Tensor) -> Iterator[None]:
        """Inside the block the guard uses the noise level of `x` `(B0, C, H, W)` for every image: a
        batch of tiles of one photo (B = n x B0) is treated as that photo, not tile by tile.

        `x` is the whole image, or a sample of its `GUARD_BLOCK x 2`-pixel blocks (`noise_sample`).
        """
        with torch.no_grad():
            folded = self._fold(x)
            self._pinned = estimate_noise(folded, folded.shape[1] // (FOLD * FOLD))  # (B0',)
        try:
            yield
        finally:
            self._pinned = None

    def _guard(self, folded: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """How much of the predicted noise to remove from each image, `(B',)` in [0, 1]."""
        assert self.noise_guard is not None
        low, high = (v / 255.0 for v in self.noise_guard)
        if self._pinned is not None:  # (B0',) repeated over the batch of tiles
            sigma = self._pinned.to(folded).repeat(folded.shape[0] // len(self._pinned))
        else:
            sigma = estimate_noise(folded, folded.shape[1] // (FOLD * FOLD))  # (B',)
        ramp = ((sigma - low) / (high - low)).clamp(0.0, 1.0)
        removed = noise.pow(2).flatten(1).mean(dim=1).sqrt()  # RMS of what the network would remove
        return ramp * (sigma / removed.clamp_min(1e-8)).clamp(max=1.0)

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = F.pixel_shuffle(z, FOLD)  # (B, C, 2h, 2w)
        if self.colour_space == "opponent":  # back to RGB
            x = x - OPPONENT_OFFSET.to(x)[:, None, None]
            x = torch.einsum("co,bohw->bchw", torch.linalg.inv(self.to_opponent), x)
        return x.clamp(0.0, 1.0)  # clipped to valid pixels

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
    """Blind grey denoiser (the builtin:denoise-grey architecture): 14 layers of 48 at half resolution.

    Its noise guard leaves photos with an estimated noise below 4 (0-255 scale) as they are."""
    return {"in_channels": 1, "channels": 48, "depth": 14, "noise_guard": NOISE_GUARD}


@register_preset("denoiser")
def denoise_rgb() -> dict:
    """Blind colour denoiser for training from scratch: 14 layers of 48, batch norm, half resolution."""
    return {"in_channels": 3, "channels": 48, "depth": 14, "batch_norm": True, "noise_guard": NOISE_GUARD}


@register_preset("denoiser")
def denoise_rgb_per_channel() -> dict:
    """Colour denoiser (the builtin:denoise-rgb architecture): denoise_grey on each opponent colour.

    Brightness and two colour differences, each by the grey network (start it with
    --init-from builtin:denoise-grey)."""
    return {
        "in_channels": 3,
        "channels": 48,
        "depth": 14,
        "per_channel": True,
        "colour_space": "opponent",
        "noise_guard": NOISE_GUARD,
    }


@register_preset("denoiser")
def denoise_small() -> dict:
    """Small blind denoiser for quick CPU runs and tests: 6 layers of 32 at half resolution."""
    return {"in_channels": 1, "channels": 32, "depth": 6}
