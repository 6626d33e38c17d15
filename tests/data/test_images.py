"""Decoding of one image: formats, channels, modes, limits, and every way an image can be bad."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import skimage.data
from PIL import Image

from raeflow.data import images
from raeflow.data.images import ImageRejected, decode_image, encode_image, encode_raw, fit_to_contract


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real colour photograph, (96, 128, 3) uint8."""
    return np.ascontiguousarray(skimage.data.astronaut()[100:196, 150:278])


def pillow_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims `width x height` grey pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF"])
def test_lossless_formats_decode_to_the_exact_pixels(photo: np.ndarray, fmt: str) -> None:
    data = pillow_bytes(Image.fromarray(photo), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert np.array_equal(decode_image(data), photo)


def test_jpeg_decodes_close_to_the_original(photo: np.ndarray) -> None:
    decoded = decode_image(pillow_bytes(Image.fromarray(photo), "JPEG", quality=95))
    assert decoded.shape == photo.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - photo).mean() < 3


def test_raw_form_round_trips_grey_and_colour(photo: np.ndarray) -> None:
    grey = photo[:, :, 0]
    assert np.array_equal(decode_image(encode_raw(photo)), photo)
    assert np.array_equal(decode_image(encode_raw(grey)), grey[:, :, None])
    assert decode_image(encode_raw(grey), channels=3).shape == (96, 128, 3)


def test_raw_form_cut_short_is_truncated(photo: np.ndarray) -> None:
    with pytest.raises(ImageRejected) as info:
        decode_image(encode_raw(photo)[:-10])
    assert info.value.reason == "truncated"


def test_grey_stays_grey_and_converts_on_request(photo: np.ndarray) -> None:
    grey = Image.fromarray(photo).convert("L")
    data = pillow_bytes(grey, "PNG")
    assert decode_image(data).shape == (96, 128, 1)
    rgb = decode_image(data, channels=3)
    assert rgb.shape == (96, 128, 3) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
    # Colour -> grey matches Pillow's "L" conversion (same luma weights) to within rounding.
    from_colour = decode_image(pillow_bytes(Image.fromarray(photo), "PNG"), channels=1)
    assert np.abs(from_colour[:, :, 0].astype(int) - np.asarray(grey)).max() <= 1


def test_alpha_is_composited_over_white(photo: np.ndarray) -> None:
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:48, :, 3] = 0  # top half fully transparent
    rgba[48:, :, 3] = 128  # bottom half half transparent
    for fmt, opts in (("PNG", {}), ("WEBP", {"lossless": True})):
        decoded = decode_image(pillow_bytes(Image.fromarray(rgba), fmt, **opts))
        assert decoded.shape == (96, 128, 3)
        assert (decoded[:48] == 255).all()
        expected = (photo[48:].astype(int) * 128 + 255 * 127 + 127) // 255
        assert np.abs(decoded[48:].astype(int) - expected).max() <= 1


def test_palette_and_grey_alpha_pngs_decode(photo: np.ndarray) -> None:
    palette = Image.fromarray(photo).convert("P")
    assert np.array_equal(decode_image(pillow_bytes(palette, "PNG")), np.asarray(palette.convert("RGB")))
    grey_alpha = Image.fromarray(photo).convert("LA")
    assert decode_image(pillow_bytes(grey_alpha, "PNG")).shape == (96, 128, 1)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_are_scaled_to_8_bits(photo: np.ndarray, fmt: str) -> None:
    wide = photo[:, :, 1].astype(np.uint16) * 257  # 8-bit values spread over 0..65535
    decoded = decode_image(pillow_bytes(Image.fromarray(wide), fmt))
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded[:, :, 0], photo[:, :, 1])


def test_cmyk_jpeg_converts_to_rgb_like_pillow(photo: np.ndarray) -> None:
    data = pillow_bytes(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    decoded = decode_image(data)
    assert decoded.shape == (96, 128, 3)
    reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.abs(decoded.astype(int) - reference).max() <= 2


def test_float_tiff_is_an_unsupported_mode(photo: np.ndarray) -> None:
    data = pillow_bytes(Image.fromarray(photo[:, :, 0].astype(np.float32)), "TIFF")
    with pytest.raises(ImageRejected) as info:
        decode_image(data)
    assert info.value.reason == "unsupported_mode"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: b"", "empty"),
        (lambda p: b"just some text, not pixels", "not_an_image"),
        (lambda p: pillow_bytes(Image.fromarray(p), "JPEG")[:2000], "truncated"),
        (lambda p: pillow_bytes(Image.fromarray(p), "PNG")[:3000], "truncated"),
        (lambda p: pillow_bytes(Image.fromarray(p), "PNG")[:20], "truncated"),
        (lambda p: pillow_bytes(Image.fromarray(p[:1, :1]), "PNG"), "too_small"),
        (lambda p: png_claiming(100_000, 100_000), "too_many_pixels"),
    ],
)
def test_bad_images_are_rejected_with_their_reason(photo: np.ndarray, make, reason: str) -> None:
    with pytest.raises(ImageRejected) as info:
        decode_image(make(photo))
    assert info.value.reason == reason
    assert reason in images.REASONS
    assert str(info.value).startswith(reason)


def test_pixel_limit_is_checked_before_decoding_and_configurable(photo: np.ndarray) -> None:
    data = pillow_bytes(Image.fromarray(photo), "PNG")
    with pytest.raises(ImageRejected, match="too_many_pixels"):
        decode_image(data, max_pixels=96 * 128 - 1)
    assert decode_image(data, max_pixels=96 * 128).shape == (96, 128, 3)
    # A 10-gigapixel claim in 100 bytes is refused from the header, in no time and no memory.
    with pytest.raises(ImageRejected, match="too_many_pixels"):
        decode_image(png_claiming(100_000, 100_000), max_pixels=10**12 // 10**3)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_encode_image_writes_what_decode_reads(photo: np.ndarray, fmt: str) -> None:
    decoded = decode_image(encode_image(photo, fmt, quality=100))
    if fmt == "jpeg":
        assert np.abs(decoded.astype(int) - photo).mean() < 2
    else:  # PNG, and WebP at quality 100, are lossless
        assert np.array_equal(decoded, photo)
    grey = decode_image(encode_image(photo[:, :, :1], fmt))
    if fmt == "webp":  # WebP has no grey mode: three equal channels come back
        assert grey.shape == (96, 128, 3) and np.array_equal(grey[:, :, 0], grey[:, :, 2])
    else:
        assert grey.shape == (96, 128, 1)


def test_fit_to_contract_resizes_or_crops_only_when_asked(photo: np.ndarray) -> None:
    assert fit_to_contract(photo, 96, 128) is photo
    assert fit_to_contract(photo, 32, 32).shape == (32, 32, 3)
    cropped = fit_to_contract(photo, 96, 96, mode="center_crop")
    assert np.array_equal(cropped, photo[:, 16:112])
    assert fit_to_contract(photo[:, :, :1], 48, 20, mode="center_crop").shape == (48, 20, 1)
    with pytest.raises(ValueError):
        fit_to_contract(photo, 8, 8, mode="stretch")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_corrupted_bytes_never_raise_anything_but_image_rejected(photo: np.ndarray, fmt: str) -> None:
    good = pillow_bytes(Image.fromarray(photo), fmt)
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(60):
        data = bytearray(good)
        if rng.random() < 0.5:
            del data[int(rng.integers(1, len(data))) :]  # cut anywhere
        for _ in range(int(rng.integers(1, 8))):  # flip bytes, header included
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        try:
            pixels = decode_image(bytes(data), channels=3)
        except ImageRejected as rejected:
            assert rejected.reason in images.REASONS
            outcomes.add(rejected.reason)
        else:
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
            outcomes.add("decoded")
    assert len(outcomes) >= 2  # the mutations did reach both outcomes


@pytest.mark.parametrize("fmt", ["raw", "png", "jpeg", "webp", "bmp"])
@pytest.mark.parametrize("channels", [None, 1, 3])
def test_decoded_pixels_are_writable_and_contiguous(
    photo: np.ndarray, fmt: str, channels: int | None
) -> None:
    data = encode_raw(photo) if fmt == "raw" else pillow_bytes(Image.fromarray(photo), fmt.upper())
    pixels = decode_image(data, channels=channels)
    assert pixels.flags.writeable and pixels.flags.c_contiguous
    pixels += 1  # in place, as noise does


@pytest.mark.parametrize("channels", [None, 1, 3])
@pytest.mark.parametrize("stored", ["RGB", "L"])
def test_fitted_jpeg_is_a_reduced_decode_close_to_full_decode_then_resize(
    photo: np.ndarray, channels: int | None, stored: str
) -> None:
    big = Image.fromarray(photo).resize((640, 480), Image.Resampling.BICUBIC).convert(stored)
    data = pillow_bytes(big, "JPEG", quality=90)
    fitted = images.decode_fitted(data, channels, 64, 64)
    reference = fit_to_contract(decode_image(data, channels=channels), 64, 64)
    assert fitted.shape == reference.shape == (64, 64, channels or (1 if stored == "L" else 3))
    assert np.abs(fitted.astype(int) - reference).mean() < 4
    assert fitted.flags.writeable and fitted.flags.c_contiguous


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: pillow_bytes(Image.fromarray(p), "JPEG")[:2000], "truncated"),
        (lambda p: pillow_bytes(Image.fromarray(p), "JPEG")[:300], "truncated"),
        (lambda p: pillow_bytes(Image.fromarray(p[:1, :5]), "JPEG"), "too_small"),
        (lambda p: png_claiming(100_000, 100_000), "too_many_pixels"),
        (lambda p: b"\xff\xd8\xff" + b"\x00" * 50, "read_error"),
    ],
)
def test_fitted_decode_rejects_like_the_full_decode(photo: np.ndarray, make, reason: str) -> None:
    with pytest.raises(ImageRejected) as info:
        images.decode_fitted(make(photo), 3, 32, 32)
    assert info.value.reason == reason


def test_fitted_decode_checks_the_pixel_limit_from_the_header(photo: np.ndarray) -> None:
    data = pillow_bytes(Image.fromarray(photo), "JPEG")
    with pytest.raises(ImageRejected, match="too_many_pixels"):
        images.decode_fitted(data, 3, 32, 32, max_pixels=96 * 128 - 1)
    assert images.decode_fitted(data, 3, 32, 32, max_pixels=96 * 128).shape == (32, 32, 3)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P"])
@pytest.mark.parametrize("channels", [None, 1, 3])
def test_decode_fitted_gives_channel_axes_to_grey_alpha_palette_pngs(mode: str, channels: int | None) -> None:
    """Grey PNGs decode without a channel axis and alpha ones with two or four: fitting needs (H, W, C)."""
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, (30, 40), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").convert(mode).save(buffer, "PNG")
    fitted = images.decode_fitted(buffer.getvalue(), channels, 28, 28)
    expected = channels or (1 if mode in ("L", "LA") else 3)
    assert fitted.shape == (28, 28, expected) and fitted.dtype == np.uint8
