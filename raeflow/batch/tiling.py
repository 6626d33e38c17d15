"""Run a fully convolutional model on an image of any size: padded to the model's stride, and
split into overlapping tiles when the image is too large for one pass.

Neighbouring tiles share `overlap` pixels; each tile's output is weighted by a window that ramps
linearly from the tile's edge, and the weighted sum is divided by the summed weights, so outputs
fade into each other instead of meeting at a visible seam.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

ImageFn = Callable[[torch.Tensor], torch.Tensor]
"""A model pass: `(B, C, H, W) -> (B, C, H, W)`, values in [0, 1]."""


def padded_apply(fn: ImageFn, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """`fn(x)` for any H, W: pad bottom/right (edge pixels repeated) to a multiple, run, crop back."""
    _, _, height, width = x.shape  # (B, C, H, W)
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")  # (B, C, H + pad_h, W + pad_w)
    return fn(x)[..., :height, :width]  # (B, C, H, W)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of side `tile` covering `size` pixels, neighbours sharing >= `overlap`."""
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)  # the last tile ends exactly at the border
    return starts


def blend_window(tile_h: int, tile_w: int, overlap: int) -> torch.Tensor:
    """Weights `(tile_h, tile_w)`: 1 inside, ramping down linearly over `overlap` pixels at each edge."""

    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        edge = torch.minimum(i + 1, n - i) / (overlap + 1)
        return edge.clamp(max=1.0)

    return ramp(tile_h)[:, None] * ramp(tile_w)[None, :]


def tiled_apply(
    fn: ImageFn, x: torch.Tensor, *, tile: int, overlap: int, multiple: int = 1, tiles_per_pass: int = 4
) -> torch.Tensor:
    """`fn` over one image `(1, C, H, W)` in overlapping `tile` x `tile` pieces, blended; `(1, C, H, W)`."""
    _, channels, full_h, full_w = x.shape
    # Pad the whole image as a one-pass run would, so tiles on the bottom/right border see the same pixels.
    x = F.pad(x, (0, -full_w % multiple, 0, -full_h % multiple), mode="replicate")  # (1, C, H', W')
    _, _, height, width = x.shape
    tile = max(multiple, tile - tile % multiple)
    tile_h, tile_w = min(tile, height), min(tile, width)
    tops, lefts = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    boxes = [(top, left) for top in tops for left in lefts]
    window = blend_window(tile_h, tile_w, overlap).to(x.device)  # (th, tw)
    total = torch.zeros((channels, height, width), dtype=torch.float32, device=x.device)
    weight = torch.zeros((height, width), dtype=torch.float32, device=x.device)
    for first in range(0, len(boxes), tiles_per_pass):
        group = boxes[first : first + tiles_per_pass]
        pieces = torch.cat([x[..., t : t + tile_h, s : s + tile_w] for t, s in group])  # (n, C, th, tw)
        outputs = padded_apply(fn, pieces, multiple).float()  # (n, C, th, tw)
        for (top, left), output in zip(group, outputs, strict=True):
            total[:, top : top + tile_h, left : left + tile_w] += output * window
            weight[top : top + tile_h, left : left + tile_w] += window
    return (total / weight).unsqueeze(0)[..., :full_h, :full_w]  # (1, C, H, W)
