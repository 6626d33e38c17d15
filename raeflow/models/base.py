"""The one interface every raeflow autoencoder has, so no caller special-cases a model.

Every family subclasses `Autoencoder` and implements `encode` and `decode`; `forward` and `loss`
have working defaults (plain reconstruction), which the VAEs extend with `mu`, `logvar` and `kl`.
Models are built through `raeflow.models.create_model`, which also records `arch_args`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from raeflow.errors import ConfigError
from raeflow.models import losses

Size = int | str
"""A height or width: a number of pixels, or "any" for fully convolutional models."""


class Autoencoder(nn.Module):
    """Base of the zoo: images `(B, C, H, W)` in [0, 1] in, reconstructions of the same shape out."""

    arch_name: str = ""
    """Registry family name (`conv`, `vae`, ...); set by `register_family`."""
    generative: bool = False
    """True when `sample(n)` draws new images from the decoder."""
    conditional: bool = False
    """True when `decode` and `sample` use the label `y`."""

    def __init__(self, *, in_channels: int, height: Size, width: Size, recon_loss: str = "mse") -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ConfigError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels}")
        self.recon_loss = losses.reconstruction_loss(recon_loss)
        self.arch_args: dict[str, Any] = {}
        """Constructor arguments (JSON-serialisable); `create_model(arch_name, **arch_args)` rebuilds."""
        self.num_classes = 0
        """Number of labels a conditional model knows (0 otherwise)."""
        self.input_contract: dict[str, Any] = {
            "channels": in_channels,
            "height": height,
            "width": width,
            "value_range": [0, 1],
        }
        """What images the model takes: channels, height/width (pixels or "any"), value range."""
        self.latent_shape: tuple[Size, ...] = ()
        """Shape of one image's code from `encode` (without the batch dimension)."""

    # -- the interface ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of each image: `(B, C, H, W) -> (B, *latent_shape)` (VAEs: the posterior mean)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] from codes: `(B, *latent_shape) -> (B, C, H, W)`; `y` only for `cvae`."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Reconstruct a batch: a dict with `recon` `(B, C, H, W)` and `z` `(B, *latent_shape)`."""
        z = self.encode(x)
        return {"recon": self.decode(z, y), "z": z}

    def loss(
        self, target: torch.Tensor, out: dict[str, torch.Tensor], y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Training objective of one batch: `loss` (what to minimise) and `recon` (reconstruction term)."""
        recon = self.recon_loss(out["recon"], target)
        return {"loss": recon, "recon": recon}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """One fixed-length vector per image, `(B, embedding_dim)`: the flattened code."""
        return self.encode(x).flatten(1)

    @property
    def embedding_dim(self) -> int:
        """Length of the vectors `embed` returns."""
        return math.prod(int(d) for d in self.latent_shape)

    def sample(
        self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`n` new images in [0, 1] drawn from the prior (generative models only)."""
        raise ConfigError(f"model '{self.arch_name}' is not generative; sample from a 'vae' or 'cvae' model")

    def check_batch(self, x: torch.Tensor) -> None:
        """Refuse a batch that is not `(B, C, H, W)` with the model's channels and (fixed) size.

        Without it some families would silently return another size (`conv` upsamples to the
        sizes it was built for) or fail deep inside with a matrix-shape error.
        """
        c = self.input_contract
        want = (c["channels"], c["height"], c["width"])
        if x.ndim != 4 or any(w != "any" and w != got for w, got in zip(want, x.shape[1:], strict=True)):
            size = f"{c['channels']}x{c['height']}x{c['width']}"
            raise ConfigError(
                f"model '{self.arch_name}' takes batches of {size} images (B, C, H, W), got shape "
                f"{tuple(x.shape)}; resize the images or build the model for this size"
            )

    def init_weights(self) -> None:
        """He (Kaiming) initialisation for the ReLU stacks, zero biases.

        PyTorch's default init shrinks the signal layer after layer; deep plain stacks (conv_dense
        has twelve layers) then start on a "mean image" plateau they leave slowly, if at all.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- facts -----------------------------------------------------------------------------------
    @property
    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.parameters()).device


def require_divisible(name: str, size: Size, stride: int) -> int:
    """Check that a fixed image side is a positive multiple of the model's total stride."""
    if not isinstance(size, int) or size <= 0 or size % stride:
        raise ConfigError(
            f"{name}={size!r} must be a positive multiple of {stride} for this model "
            f"(its layers halve the image that many times); pick another size or change its depth"
        )
    return size
