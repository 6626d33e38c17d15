"""Run a fully convolutional model on an image of any size: padded to the model's stride, and
split into overlapping tiles when the image is too large for one pass.

Neighbouring tiles share `overlap` pixels; each tile's output is weighted by a window that ramps
linearly from the tile's edge, and the weighted sum is divided by the summed weights, so outputs
fade into each other instead of meeting at a visible seam.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
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


def fitted_tile(size: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The side of the fewest tiles of at most `tile` pixels that cover `size` pixels with neighbours
    sharing `overlap`, made as even as possible (a multiple of `multiple`; `size` and `tile` are).

    Square tiles of the largest side waste work on an image a little larger than one tile: a
    1,382 x 1,036 photo in 1,024-pixel tiles took four tiles of 1,024 x 1,024 (2.9 times its
    pixels); fitted, its four tiles are 712 x 536 (1.07 times).
    """
    if size <= tile:
        return size
    count = math.ceil((size - overlap) / (tile - overlap))
    side = math.ceil((size + (count - 1) * overlap) / count)
    return min(tile, side + -side % multiple)


def blend_window(tile_h: int, tile_w: int, overlap: int) -> torch.Tensor:
    """Weights `(tile_h, tile_w)`: 1 inside, ramping down linearly over `overlap` pixels at each edge."""

    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float32)
        edge = torch.minimum(i + 1, n - i) / (overlap + 1)
        return edge.clamp(max=1.0)

    return ramp(tile_h)[:, None] * ramp(tile_w)[None, :]


def tiled_apply_uint8(
    fn: ImageFn, image: np.ndarray, *, tile: int, overlap: int, multiple: int = 1, tiles_per_pass: int = 4
) -> np.ndarray:
    """`fn` over one `uint8` (or `uint16`) image `(H, W, C)` in blended tiles, straight to a result of
    the same type and shape.

    Pixels become floats one
    batch of tiles at a time, and the blend accumulators cover one row of tiles, whose finished rows
    go to the output as soon as no later tile touches them. Beyond the input and output images it
    holds about `C x tile x W` floats (a 24-megapixel RGB photo at tile 1024: ~75 MB, not ~1.5 GB).
    """
    full_h, full_w, channels = image.shape
    top_value = float(np.iinfo(image.dtype).max)
    padded = image
    if full_h % multiple or full_w % multiple:  # pad as a one-pass run would (edge pixels repeated)
        padded = np.pad(image, ((0, -full_h % multiple), (0, -full_w % multiple), (0, 0)), mode="edge")
    height, width = padded.shape[:2]
    tile = max(multiple, tile - tile % multiple)
    tile_h, tile_w = fitted_tile(height, tile, overlap, multiple), fitted_tile(width, tile, overlap, multiple)
    tops, lefts = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    window = blend_window(tile_h, tile_w, overlap)  # (th, tw)
    total = torch.zeros((channels, tile_h, width), dtype=torch.float32)  # rows anchor .. anchor + th
    weight = torch.zeros((tile_h, width), dtype=torch.float32)
    out = np.empty((full_h, full_w, channels), dtype=image.dtype)
    anchor = 0

    def emit(rows: int) -> None:  # rows anchor .. anchor + rows are final
        stop = min(anchor + rows, full_h)
        if stop > anchor:
            done = (total[:, : stop - anchor] / weight[: stop - anchor]).clamp(0, 1)  # (C, r, W')
            scaled = done.mul(top_value).round().permute(1, 2, 0)[:, :full_w]  # (r, W, C)
            out[anchor:stop] = scaled.numpy().astype(image.dtype)

    for top in tops:
        if top > anchor:  # rows above this tile row are finished: write them, slide the window down
            shift = top - anchor
            emit(shift)
            total = torch.cat([total[:, shift:], torch.zeros((channels, shift, width))], dim=1)
            weight = torch.cat([weight[shift:], torch.zeros((shift, width))], dim=0)
            anchor = top
        band = padded[top : top + tile_h]  # (th, W', C) uint8
        for first in range(0, len(lefts), tiles_per_pass):
            group = lefts[first : first + tiles_per_pass]
            pieces = np.stack([band[:, s : s + tile_w] for s in group])  # (n, th, tw, C)
            x = (
                torch.from_numpy(pieces.astype(np.float32)).permute(0, 3, 1, 2).div_(top_value)
            )  # (n, C, th, tw)
            outputs = fn(x).float().cpu()  # (n, C, th, tw)
            for left, output in zip(group, outputs, strict=True):
                total[:, :, left : left + tile_w] += output * window
                weight[:, left : left + tile_w] += window
    emit(tile_h)
    return out
