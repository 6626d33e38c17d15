"""What an image's embedding is: the one rule `raeflow embed` and `raeflow report --tsne` both follow.

    rule = embedding_rule("builtin:denoise-rgb", model.input_contract, 48)
    rule.size, rule.dim, rule.pooled   # None (each image at its own size), 48, True

- A fixed-size model embeds each image resized to its input size: `embed(x)` is its code
  flattened (a VAE's posterior mean).
- A fully convolutional model (input size "any") has a code that grows with the image; its
  `embed(x)` averages that code over space, so every image gets a vector of the same length
  (`embedding_dim`, stored in bundle.json). Each image is embedded at its own size, unless an
  image size is given (`embed --image-size HxW`): then every image is resized to it first, which
  is much faster on large photos and gives the same vector length.

A fully convolutional model without a fixed `embedding_dim` (a code that is not pooled) has no
embedding both commands can use; it is refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raeflow.errors import ConfigError


@dataclass(frozen=True)
class EmbeddingRule:
    """How one model's embeddings are made: at which size, how long, pooled over space or not."""

    dim: int
    """Length of one image's embedding."""
    size: tuple[int, int] | None
    """Height and width every image is resized to before `embed`; None: each image at its own size."""
    pooled: bool
    """The model is fully convolutional and its code is averaged over space."""

    def notice(self, model: str, *, purpose: str = "", resize_hint: bool = True) -> str | None:
        """The one line a job prints before it pools a fully convolutional code (None otherwise).

        `purpose` starts the explanation ("for the t-SNE map "); `resize_hint` adds that
        --image-size would resize first (commands that have that option).
        """
        if not self.pooled:
            return None
        lead = (
            f"{model} is fully convolutional: {purpose}each image's code is averaged over space "
            f"({self.dim} values)"
        )
        if self.size is not None:
            return f"{lead} after resizing it to {self.size[0]}x{self.size[1]}"
        hint = "; --image-size HxW resizes first and is faster on large photos" if resize_hint else ""
        return f"{lead} at the image's own size{hint}"


def embedding_rule(
    model: str,
    contract: Mapping[str, Any],
    embedding_dim: int | None,
    image_size: tuple[int, int] | None = None,
) -> EmbeddingRule:
    """The rule for the model `model` (named in messages) with this input `contract` and `embedding_dim`.

    `embedding_dim` is the model's (or bundle.json's) vector length, None when it has none.
    `image_size` is the size asked for (`--image-size`), if any; a fixed-size model must already
    have been checked to take it (`Bundle.check_input`).
    """
    height, width = contract["height"], contract["width"]
    fully_convolutional = "any" in (height, width)
    if not fully_convolutional:
        if embedding_dim is None:  # every fixed-size model has one; a bundle without it is damaged
            raise ConfigError(f"model {model} gives no embedding length (bundle.json has no embedding_dim)")
        size = image_size or (int(height), int(width))
        return EmbeddingRule(dim=int(embedding_dim), size=size, pooled=False)
    if embedding_dim is None:
        raise ConfigError(
            f"model {model} is fully convolutional and its code is not averaged over space, so its "
            "codes grow with the image and have no common length; use a model whose embed() pools"
        )
    return EmbeddingRule(dim=int(embedding_dim), size=image_size, pooled=True)


def model_embedding_dim(model: Any) -> int | None:
    """`model.embedding_dim`, or None when the model cannot say (its code's length follows the image)."""
    try:
        return int(model.embedding_dim)
    except (TypeError, ValueError):
        return None
