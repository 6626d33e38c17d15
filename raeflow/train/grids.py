"""Image grids as PNG: one band of images per row (originals / noisy / reconstructions / samples).

Used for the per-epoch grids of a training run (`<out>/grids/epoch-0003.png`) and by
`raeflow sample`. Ray-free; writes through fsspec, so local paths and buckets both work.
"""

from __future__ import annotations

import io

import fsspec
import numpy as np
import torch
from PIL import Image

PAD = 2
"""Pixels of background between images and around the grid."""
BACKGROUND = 64
"""Grey level of the padding (dark, so white digits and bright photos both stand out)."""


def grid_image(rows: list[torch.Tensor], *, min_cell: int = 32) -> Image.Image:
    """Tile rows of `(N, C, H, W)` images in [0, 1] (N may differ per row) into one PIL image.

    Small images (MNIST, 8x8 digits) are enlarged by an integer factor to at least `min_cell`
    pixels so the grid is readable.
    """
    if not rows:
        raise ValueError("a grid needs at least one row of images")
    height, width = rows[0].shape[2], rows[0].shape[3]
    scale = max(1, -(-min_cell // min(height, width)))
    cell_h, cell_w = height * scale, width * scale
    num_cols = max(row.shape[0] for row in rows)
    canvas = np.full(
        (PAD + len(rows) * (cell_h + PAD), PAD + num_cols * (cell_w + PAD), 3), BACKGROUND, dtype=np.uint8
    )
    for r, row in enumerate(rows):
        pixels = (row.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8)  # (N, C, H, W)
        if pixels.shape[1] == 1:  # grey rows share the RGB canvas
            pixels = pixels.expand(-1, 3, -1, -1)
        pixels = pixels.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)  # (N, 3, h, w)
        for c in range(pixels.shape[0]):
            top, left = PAD + r * (cell_h + PAD), PAD + c * (cell_w + PAD)
            canvas[top : top + cell_h, left : left + cell_w] = pixels[c].permute(1, 2, 0).numpy()
    return Image.fromarray(canvas)


def write_grid(rows: list[torch.Tensor], uri: str, *, storage_options: dict | None = None) -> str:
    """Write `grid_image(rows)` as a PNG to `uri` (local path or bucket); return the URI."""
    buffer = io.BytesIO()
    grid_image(rows).save(buffer, format="PNG")
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return uri
