"""EXIF orientation: a photo stored sideways (as phones write them) decodes upright everywhere."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import skimage.data
from PIL import Image, ImageOps

from raeflow.data.images import decode_fitted, decode_image, fit_to_contract, probe_image


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real colour photograph, (96, 160, 3): wider than tall, so a quarter turn shows."""
    return np.ascontiguousarray(skimage.data.astronaut()[40:136, 150:310])


def tagged(pixels: np.ndarray, fmt: str, orientation: int) -> bytes:
    """`pixels` saved as `fmt` with an EXIF Orientation tag, as a camera writes it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(pixels).save(out, fmt, exif=exif, **options)
    return out.getvalue()


def upright_by_pillow(data: bytes) -> np.ndarray:
    """What an image viewer shows: Pillow's own decode with its `exif_transpose`."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_decodes_as_a_viewer_shows_it(photo: np.ndarray, orientation: int) -> None:
    data = tagged(photo, "JPEG", orientation)
    assert probe_image(data).orientation == orientation
    expected = upright_by_pillow(data)
    decoded = decode_image(data, channels=3)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected).mean() < 2
    assert decoded.flags.writeable and decoded.flags.c_contiguous


def test_a_phone_photo_with_orientation_6_comes_out_upright(photo: np.ndarray) -> None:
    # The camera stored the scene turned a quarter left and tagged 6 ("turn right to view").
    stored = np.ascontiguousarray(np.rot90(photo, k=1))  # (160, 96, 3)
    data = tagged(stored, "JPEG", 6)
    assert probe_image(data).upright_size == (96, 160)
    decoded = decode_image(data, channels=3)
    assert decoded.shape == photo.shape  # (96, 160, 3): upright, wider than tall
    assert np.abs(decoded.astype(int) - photo).mean() < 3
    fitted = decode_fitted(data, 3, 48, 80)
    assert np.abs(fitted.astype(int) - fit_to_contract(photo, 48, 80)).mean() < 4
    grey = decode_fitted(data, 1, 48, 80, mode="center_crop")
    assert grey.shape == (48, 80, 1)
    assert np.abs(grey[:, :, 0].astype(int) - photo.mean(axis=2)[::2, ::2]).mean() < 12


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_orientation_is_applied_to_other_formats(photo: np.ndarray, fmt: str) -> None:
    data = tagged(photo, fmt, 8)
    expected = upright_by_pillow(data)
    assert expected.shape == (160, 96, 3)
    assert np.array_equal(decode_image(data, channels=3), expected)
    assert decode_fitted(data, 3, 32, 20).shape == (32, 20, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["resize", "center_crop"])
def test_fitted_decode_matches_full_decode_then_fit(photo: np.ndarray, orientation: int, mode: str) -> None:
    big = np.asarray(Image.fromarray(photo).resize((640, 384), Image.Resampling.BICUBIC))
    data = tagged(big, "JPEG", orientation)
    reference = fit_to_contract(decode_image(data, channels=3), 40, 64, mode=mode)
    fitted = decode_fitted(data, 3, 40, 64, mode=mode)
    assert fitted.shape == reference.shape == (40, 64, 3)
    assert np.abs(fitted.astype(int) - reference).mean() < 4


def test_a_broken_exif_block_leaves_the_image_usable(photo: np.ndarray) -> None:
    from raeflow.data.image_header import exif_orientation

    data = tagged(photo, "JPEG", 6)
    start = data.index(b"Exif\0\0") + 6
    broken = data[: start + 4] + b"\xff\xff\xff\x7f" + data[start + 8 :]  # IFD0 offset far past the end
    assert exif_orientation(broken[start:]) == 1
    assert decode_image(broken, channels=3).shape == photo.shape


def test_training_batches_see_the_upright_image(photo: np.ndarray) -> None:
    from raeflow.train.batches import DecodeForTraining

    data = tagged(np.ascontiguousarray(np.rot90(photo, k=1)), "JPEG", 6)
    decode = DecodeForTraining(split="train", channels=3, height=48, width=80, val_fraction=0.0)
    batch = decode(pa.table({"key": ["phone"], "image": [data]}))
    assert batch["image"].shape == (1, 3, 48, 80)
    expected = fit_to_contract(photo, 48, 80).transpose(2, 0, 1)
    assert np.abs(batch["image"][0].astype(int) - expected).mean() < 4
