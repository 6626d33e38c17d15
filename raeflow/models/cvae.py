"""`cvae`: a conditional VAE whose decoder also sees the image's label.

The encoder is the plain VAE's (so `encode(x)` and embeddings need no label); the decoder gets a
learned label embedding concatenated to z. One extra embedding row means "label unknown": labels
outside `0..num_classes-1` (e.g. -1 for unlabelled rows) and `y=None` use it, and in training a
`label_dropout` share of labels is replaced by it, so the model also reconstructs unlabelled data.

    model = create_model("cvae_mnist")
    sevens = model.sample(8, y=torch.full((8,), 7))    # (8, 1, 28, 28), all drawn as 7s
    grid = model.sample(20)                            # labels cycle 0, 1, ..., 9, 0, 1, ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from raeflow.errors import ConfigError
from raeflow.models.registry import register_family, register_preset
from raeflow.models.vae import ConvVAE


@register_family("cvae", "conditional VAE: the decoder is conditioned on the label; sample(n, y)")
class ConditionalVAE(ConvVAE):
    """`ConvVAE` with a label embedding (`num_classes` + 1 rows, the last "unknown") fed to the decoder."""

    conditional = True

    def __init__(
        self,
        in_channels: int = 1,
        height: int = 28,
        width: int = 28,
        channels: Sequence[int] = (32, 64),
        latent_dim: int = 16,
        beta: float = 1.0,
        num_classes: int = 10,
        label_dim: int = 16,
        label_dropout: float = 0.1,
        batch_norm: bool = True,
        recon_loss: str = "mse",
    ) -> None:
        if num_classes < 1 or label_dim < 1 or not 0.0 <= label_dropout < 1.0:
            raise ConfigError("cvae needs num_classes >= 1, label_dim >= 1 and label_dropout in [0, 1)")
        self._label_dim = label_dim  # read by condition_dim() during ConvVAE.__init__
        super().__init__(
            in_channels=in_channels,
            height=height,
            width=width,
            channels=channels,
            latent_dim=latent_dim,
            beta=beta,
            batch_norm=batch_norm,
            recon_loss=recon_loss,
        )
        self.num_classes = num_classes
        self.label_dropout = label_dropout
        self.labels = nn.Embedding(num_classes + 1, label_dim)  # row num_classes = unknown

    def condition_dim(self) -> int:
        return self._label_dim

    def label_index(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """Embedding rows for labels `y` `(B,)`: the label itself, or the "unknown" row."""
        unknown = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if y is None:
            return unknown
        y = torch.as_tensor(y, device=device).long().reshape(-1).expand(batch)
        return torch.where((y >= 0) & (y < self.num_classes), y, unknown)

    def condition(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        rows = self.label_index(y, z.shape[0], z.device)
        return torch.cat([z, self.labels(rows)], dim=1)  # (B, latent_dim + label_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.training and y is not None and self.label_dropout > 0:
            y = torch.as_tensor(y, device=x.device).long()
            dropped = torch.rand(y.shape, device=x.device) < self.label_dropout
            y = torch.where(dropped, torch.full_like(y, -1), y)
        return super().forward(x, y)

    @torch.no_grad()
    def sample(
        self, n: int, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if y is None:  # one of each label in turn, so a grid shows every class
            y = torch.arange(n, device=self.device) % self.num_classes
        return super().sample(n, y, generator)


@register_preset("cvae")
def cvae_mnist() -> dict:
    """28x28 grey digits, 10 labels, 32-64 channels, 16-d latent, BCE + KL (MSE collapses to black)."""
    return {
        "in_channels": 1,
        "height": 28,
        "width": 28,
        "channels": [32, 64],
        "latent_dim": 16,
        "num_classes": 10,
        "recon_loss": "bce",
    }
