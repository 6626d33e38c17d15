"""Decoding within a memory budget: `max_bytes` refuses an image from its header, before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raeflow.data import images


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def test_decode_memory_counts_samples_depth_and_transparency() -> None:
    grey = images.probe_image(_png(np.zeros((100, 200), np.uint8)))
    rgb = images.probe_image(_png(np.zeros((100, 200, 3), np.uint8)))
    rgba = images.probe_image(_png(np.zeros((100, 200, 4), np.uint8)))
    grey16 = images.probe_image(_png(np.zeros((100, 200), np.uint16)))
    assert images.decode_memory(grey) == 100 * 200 * 4
    assert images.decode_memory(rgb) == 100 * 200 * 3 * 4
    assert images.decode_memory(rgba) == 100 * 200 * 4 * 12  # composited over white in 32-bit integers
    assert images.decode_memory(grey16) == 100 * 200 * 2 * 4


@pytest.mark.parametrize("fitted", [False, True])
def test_an_image_over_the_budget_is_rejected_and_one_under_it_decodes(fitted: bool) -> None:
    data = _png(np.full((300, 400, 3), 128, np.uint8))
    need = images.decode_memory(images.probe_image(data))

    def decode(max_bytes: int) -> np.ndarray:
        if fitted:
            return images.decode_fitted(data, 3, 32, 32, max_bytes=max_bytes)
        return images.decode_image(data, max_bytes=max_bytes)

    with pytest.raises(images.ImageRejected) as rejected:
        decode(need - 1)
    assert rejected.value.reason == "too_large_for_memory"
    assert "decoding 400x300 takes about 0.00 GiB" in str(rejected.value)
    assert decode(need).shape[2] == 3
    assert "too_large_for_memory" in images.REASONS
