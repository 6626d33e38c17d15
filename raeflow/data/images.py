"""One image in, one image out: decoding, channel handling, raw pixels, resizing, encoding.

Every decoder returns a NumPy `uint8` array `(H, W, C)`, C in {1, 3}. Anything unusable raises
`ImageRejected` and nothing else, so a batch job can count a bad image and carry on.

Choices made here (also in docs/data.md):
- JPEG and WebP decode through torchvision (libjpeg-turbo, libwebp); PNG, BMP, TIFF, GIF and
  anything else Pillow knows decode through Pillow (first frame only). Not PNG through
  torchvision: its libpng error path crashes the process on some corrupt files ("bad adaptive
  filter value"), and one bad file must never take down a worker.
- Transparency is composited over white, the way a viewer shows the image; alpha is never
  returned as a channel.
- 16-bit images (PNG, TIFF) are scaled to 8 bits (grey: `round(v * 255 / 65535)`; colour: the
  high byte, as Pillow reads it); 32-bit integer and float images are rejected as `unsupported_mode`.
- Colour to grey uses the ITU-R 601-2 luma weights (as Pillow's "L" conversion); CMYK is
  converted to RGB.
- The size is read from the header before decoding; more than `max_pixels` is `too_many_pixels`,
  a side shorter than `min_side` is `too_small`, and an image whose decoding would take more
  memory than `max_bytes` (`decode_memory`) is `too_large_for_memory`.
- The EXIF Orientation tag is applied (a phone photo stored sideways comes out upright), so every
  output written from the pixels is upright and carries no tag.
- `decode_fitted` (fixed-size models) decodes a JPEG with libjpeg-turbo's DCT scaling (simplejpeg)
  at the smallest power-of-two reduction that still covers the target, then resizes once:
  `bench/decode.py` (CPU time, one core) measures 2.9x the images/s of a full decode + resize on
  320-640 px colour photos and 3.8x on 1-4 megapixel ones (1.1-1.3x Pillow's `draft`, which does
  the same through Pillow), at a mean difference of about 2 grey levels.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np

from raeflow.data.image_header import (
    RAW_HEADER,
    RAW_MAGIC,
    HeaderError,
    ImageHeader,
    pillow_orientation,
    read_header,
)

# torchvision 0.29 warns on every call that its decoders will move to TorchCodec; they still work
# and are what this module measures fastest, so say it once in the docs instead of per image.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image decoded (height x width), checked from the header: 64 megapixels."""
DEFAULT_MIN_SIDE = 2
"""Shortest accepted side in pixels: a 1-pixel-wide image is no image to learn from."""
REASONS = (
    "empty",
    "truncated",
    "not_an_image",
    "too_many_pixels",
    "too_small",
    "unsupported_mode",
    "read_error",
    "too_large_for_memory",
)
"""The stable slugs of `ImageRejected.reason`."""
DECODE_BYTES_PER_SAMPLE = 4
"""Peak memory of decoding, per stored sample (pixel x channel x byte of depth): the decoder's
buffer, the array made from it and one converted copy. Measured (peak RSS, 2-9 megapixel files):
1.1-1.5 for grey and colour PNG, about 1.5 for JPEG beyond torchvision's first-call cost."""
DECODE_BYTES_PER_SAMPLE_ALPHA = 12
"""The same for images with transparency, composited over white in 32-bit integers: measured up
to 9.4 (a transparent 1,500 x 1,500 RGBA PNG decoded to RGB, 37.5 bytes per pixel)."""
ENCODE_FORMATS = ("png", "jpeg", "webp")
"""Formats `encode_image` writes."""
FIT_MODES = ("resize", "center_crop")
"""How `fit_to_contract` and `decode_fitted` reach a fixed size."""


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is one of `REASONS`, `detail` says more."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def probe_image(data: bytes) -> ImageHeader:
    """Format, size and channels of an encoded image, without decoding it."""
    if not data:
        raise ImageRejected("empty", "no bytes")
    try:
        return read_header(data)
    except HeaderError as exc:
        raise ImageRejected(exc.reason, exc.detail) from None
    except Exception as exc:  # a header parser tripping on hostile bytes must not stop a job
        raise ImageRejected("read_error", f"header: {type(exc).__name__}: {exc}") from None


def decode_image(
    data: bytes,
    channels: int | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Decode encoded bytes (or the raw-pixel form) to `uint8 (H, W, C)`, upright (EXIF orientation
    applied); C = `channels` if given, else 1 for grey images and 3 for everything else.

    `max_bytes`: the memory the caller can give the decoding (`decode_memory`); None: no check."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, not {channels!r}")
    header = _checked_header(data, max_pixels, min_side, max_bytes)
    return to_channels(_decode_upright(data, header, channels), channels)


def decode_fitted(
    data: bytes,
    channels: int | None,
    height: int,
    width: int,
    *,
    mode: str = "resize",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> np.ndarray:
    """Decode straight to a fixed model size: `uint8 (height, width, C)`, upright; raises `ImageRejected`.

    The one entry point for fixed-size models (batch jobs, training). A JPEG is decoded at the
    smallest DCT scale (1/2, 1/4, 1/8, ...) that still covers the target, so a 640x480 photo for a
    64x64 model costs a 160x120 decode, then one resize. Other formats decode whole, then resize.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, not {channels!r}")
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {', '.join(FIT_MODES)}, not {mode!r}")
    header = _checked_header(data, max_pixels, DEFAULT_MIN_SIDE, max_bytes)
    pixels = None
    if header.format == "jpeg" and header.channels in (1, 3) and header.bit_depth == 8:
        pixels = _decode_jpeg_reduced(data, header, channels, _cover_size(header, height, width, mode))
    if pixels is None:  # other formats, and JPEGs libjpeg-turbo is strict about
        pixels = _decode_upright(data, header, channels)  # (H, W[, C])
    if pixels.ndim == 2 or pixels.shape[2] in (2, 4):  # grey without a channel axis, or alpha
        pixels = to_channels(pixels)  # (H, W, 1|3): alpha over white, grey kept grey
    fitted = fit_to_contract(pixels, height, width, mode=mode)  # (height, width, C)
    return to_channels(fitted, channels)


def gib(num_bytes: float) -> str:
    """Bytes as `1.25 GiB` (`0.05 GiB` for small amounts), for messages."""
    return f"{num_bytes / 2**30:.2f} GiB"


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels stored under EXIF `orientation` (1..8), turned upright as a viewer shows them
    (a view where possible: callers copy)."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.swapaxes(0, 1)
    if orientation == 6:
        return pixels.swapaxes(0, 1)[:, ::-1]  # stored turned a quarter left: turn right
    if orientation == 7:
        return pixels.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return pixels.swapaxes(0, 1)[::-1]
    return pixels


def decode_memory(header: ImageHeader) -> int:
    """Bytes decoding this image takes at its peak, from its header (`DECODE_BYTES_PER_SAMPLE`)."""
    alpha = header.palette or header.channels in (2, 4)
    channels = 4 if header.palette else header.channels
    per_sample = DECODE_BYTES_PER_SAMPLE_ALPHA if alpha else DECODE_BYTES_PER_SAMPLE
    return header.height * header.width * channels * -(-header.bit_depth // 8) * per_sample


def _checked_header(data: bytes, max_pixels: int, min_side: int, max_bytes: int | None = None) -> ImageHeader:
    """The header, once the size, depth and memory limits hold; raises `ImageRejected` before any decoding."""
    header = probe_image(data)
    if header.height * header.width > max_pixels:
        raise ImageRejected(
            "too_many_pixels", f"{header.width}x{header.height} is more than {max_pixels:,} pixels"
        )
    if max_bytes is not None and (need := decode_memory(header)) > max_bytes:
        raise ImageRejected(
            "too_large_for_memory",
            f"decoding {header.width}x{header.height} takes about {gib(need)}, more than the "
            f"{gib(max_bytes)} a worker has",
        )
    if min(header.height, header.width) < min_side:
        raise ImageRejected("too_small", f"{header.width}x{header.height} has a side under {min_side} pixels")
    if header.bit_depth > 16:
        raise ImageRejected(
            "unsupported_mode", f"{header.bit_depth}-bit {header.format} ({header.pillow_mode})"
        )
    return header


def _decode_upright(data: bytes, header: ImageHeader, channels: int | None) -> np.ndarray:
    """Full-size pixels `(H, W[, C])` with the EXIF orientation applied; raises `ImageRejected`."""
    try:
        if header.format == "raw":
            return _decode_raw(data, header)
        if header.format in ("jpeg", "webp"):
            return orient(_decode_torchvision(data, header, channels), header.orientation)
        pixels, orientation = _decode_pillow(data, channels)
        return orient(pixels, orientation)
    except ImageRejected:
        raise
    except Exception as exc:  # decoders raise RuntimeError, OSError, ValueError, MemoryError...
        # torchvision prefixes its messages with the C++ source location: keep only the words.
        detail = re.sub(r"^.*\.cpp:\d+, ", "", str(exc))
        raise ImageRejected(_failure_reason(data, header, exc), detail) from None


def _cover_size(header: ImageHeader, height: int, width: int, mode: str) -> tuple[int, int]:
    """The smallest (height, width), in the image's stored orientation, that `fit_to_contract`
    can make the target from without enlarging: the target itself, or for `center_crop` the
    scaled image that covers it."""
    upright_h, upright_w = header.upright_size
    need_h, need_w = height, width
    if mode == "center_crop":
        scale = max(height / upright_h, width / upright_w)
        need_h, need_w = max(height, round(upright_h * scale)), max(width, round(upright_w * scale))
    return (need_w, need_h) if header.transposed else (need_h, need_w)


def _decode_jpeg_reduced(
    data: bytes, header: ImageHeader, channels: int | None, at_least: tuple[int, int]
) -> np.ndarray | None:
    """A JPEG decoded by libjpeg-turbo at the smallest power-of-two DCT scale whose size is at least
    `at_least` (stored orientation), upright; None when libjpeg-turbo refuses the file (corrupt
    data, a truncated scan, a warning): the full decoder then decides, as for any other image."""
    import simplejpeg

    # Power-of-two scales only: libjpeg-turbo has SIMD inverse DCTs for 1/2 and 1/4, and its other
    # M/8 scales (3/8, 5/8, ...) measured slower here than the next larger power of two.
    need_h, need_w = at_least
    factor = 8
    while factor > 1 and (
        _ceil_div(header.height, factor) < need_h or _ceil_div(header.width, factor) < need_w
    ):
        factor //= 2
    grey = header.channels == 1 or channels == 1  # libjpeg's grey output is the luma plane itself
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            colorspace="GRAY" if grey else "RGB",
            min_height=_ceil_div(header.height, factor),
            min_width=_ceil_div(header.width, factor),
        )  # (h, w, C)
    except ValueError:
        return None
    return orient(pixels, header.orientation)


def to_channels(pixels: np.ndarray, channels: int | None = None) -> np.ndarray:
    """`(H, W[, C])` uint8 with C in 1..4 -> `(H, W, channels)`; alpha composited over white,
    grey kept as grey when `channels` is None."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] in (2, 4):
        pixels = _composite_over_white(pixels)
    have = pixels.shape[2]
    if channels is None or channels == have:
        # Callers may change pixels in place (noise): views of read-only bytes get copied.
        return np.ascontiguousarray(pixels) if pixels.flags.writeable else pixels.copy()
    if channels == 3:  # grey -> RGB
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    # RGB -> grey with the ITU-R 601-2 luma weights in 8-bit fixed point (77, 150, 29)/256:
    # within 1 of Pillow's "L", and the sums fit in uint16, which halves the memory traffic.
    rgb = pixels.astype(np.uint16)
    grey = rgb[..., 0] * 77
    grey += rgb[..., 1] * 150
    grey += rgb[..., 2] * 29
    grey += 128
    return (grey >> 8).astype(np.uint8)[:, :, None]


def encode_raw(pixels: np.ndarray) -> bytes:
    """Wrap a `uint8 (H, W)` or `(H, W, C)` array (C in 1..4) as bytes every decoder here reads."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"raw pixels must be uint8, not {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or not 1 <= pixels.shape[2] <= 4:
        raise ValueError(f"raw pixels must be (H, W) or (H, W, C<=4), not {pixels.shape}")
    height, width, channels = pixels.shape
    return RAW_HEADER.pack(RAW_MAGIC, height, width, channels) + np.ascontiguousarray(pixels).tobytes()


def encode_image(pixels: np.ndarray, fmt: str = "png", *, quality: int = 95) -> bytes:
    """Encode `uint8 (H, W[, C])` (C in {1, 3}) as PNG, JPEG or WebP (`quality` 100 = lossless WebP)."""
    from PIL import Image

    fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
    if fmt not in ENCODE_FORMATS:
        raise ValueError(f"cannot encode {fmt!r}; formats: {', '.join(ENCODE_FORMATS)}")
    image = Image.fromarray(pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
    out = io.BytesIO()
    if fmt == "png":
        image.save(out, "PNG", compress_level=1)
    elif fmt == "jpeg":
        image.save(out, "JPEG", quality=quality)
    else:
        image.save(out, "WEBP", quality=quality, lossless=quality >= 100)
    return out.getvalue()


def fit_to_contract(pixels: np.ndarray, height: int, width: int, mode: str = "resize") -> np.ndarray:
    """`(H, W, C)` -> `(height, width, C)`: `resize` stretches to the size, `center_crop` scales so
    the image covers the size (keeping its aspect) and cuts the centre out. Same size: unchanged."""
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be 'resize' or 'center_crop', not {mode!r}")
    h, w, c = pixels.shape
    if (h, w) == (height, width):
        return pixels
    if mode == "resize":
        return _resize(pixels, height, width)
    scale = max(height / h, width / w)
    scaled_h, scaled_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (scaled_h, scaled_w) != (h, w):
        pixels = _resize(pixels, scaled_h, scaled_w)
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    return np.ascontiguousarray(pixels[top : top + height, left : left + width])


def _resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    channels = pixels.shape[2]
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return resized.reshape(height, width, channels)


def _ceil_div(size: int, factor: int) -> int:
    """libjpeg's size of a `size`-pixel side decoded at 1/`factor`."""
    return -(-size // factor)


def _decode_raw(data: bytes, header: ImageHeader) -> np.ndarray:
    expected = RAW_HEADER.size + header.height * header.width * header.channels
    if len(data) != expected:
        reason = "truncated" if len(data) < expected else "read_error"
        raise ImageRejected(reason, f"raw pixels: {len(data)} bytes where {expected} were expected")
    if not 1 <= header.channels <= 4:
        raise ImageRejected("unsupported_mode", f"raw pixels with {header.channels} channels")
    flat = np.frombuffer(data, dtype=np.uint8, offset=RAW_HEADER.size)
    return flat.reshape(header.height, header.width, header.channels)


def _decode_torchvision(data: bytes, header: ImageHeader, channels: int | None) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    if header.format == "jpeg":
        # libjpeg's grey output is the luma plane itself: cheaper than decoding colour first.
        grey = header.channels == 1 or (channels == 1 and header.channels == 3)
        mode = ImageReadMode.GRAY if grey else ImageReadMode.RGB
    else:  # WebP: RGB or RGBA as stored, alpha handled in `to_channels`
        mode = ImageReadMode.UNCHANGED
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    decoded = tv_decode(encoded, mode=mode)  # (C, H, W)
    return decoded.permute(1, 2, 0).numpy()  # (H, W, C)


_PILLOW_CONVERT = {"1": "L", "P": "RGBA", "PA": "RGBA", "La": "LA", "RGBa": "RGBA", "CMYK": "RGB"}
_PILLOW_CONVERT |= {"YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB"}


def _decode_pillow(data: bytes, channels: int | None) -> tuple[np.ndarray, int]:
    """Pixels as stored, and the EXIF orientation to apply to them."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as opened:
            opened.seek(0)
            opened.load()
            # Read after loading: Pillow turns some formats (TIFF) upright while loading and then
            # drops the tag, so what is left is exactly what remains to apply.
            orientation = pillow_orientation(opened)
            if opened.mode.startswith("I;16"):
                wide = np.asarray(opened).astype(np.uint32)  # (H, W) 16-bit
                return ((wide * 255 + 32767) // 65535).astype(np.uint8), orientation
            image: Image.Image = opened
            if image.mode in _PILLOW_CONVERT:
                image = image.convert(_PILLOW_CONVERT[image.mode])
            elif image.mode not in ("L", "LA", "RGB", "RGBA"):
                raise ImageRejected("unsupported_mode", f"Pillow mode {image.mode}")
            # Without alpha, Pillow converts grey <-> RGB in C (the same 601 luma as `to_channels`).
            wanted = {1: "L", 3: "RGB"}.get(channels or 0)
            if wanted and image.mode in ("L", "RGB") and image.mode != wanted:
                image = image.convert(wanted)
            return np.asarray(image), orientation


def _composite_over_white(pixels: np.ndarray) -> np.ndarray:
    """`(H, W, C+1)` with alpha last -> `(H, W, C)` as seen on a white page."""
    alpha = pixels[..., -1:]
    colour = pixels[..., :-1]
    if alpha.min() == 255:
        return colour
    a = alpha.astype(np.uint32)
    blended = (colour.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return blended.astype(np.uint8)


def _failure_reason(data: bytes, header: ImageHeader, exc: Exception) -> str:
    """`truncated` when the file visibly ends early, else `read_error`."""
    if type(exc).__name__ == "DecompressionBombError":  # Pillow's own limit, when above ours
        return "too_many_pixels"
    tail = data[-64:]
    if header.format == "png" and b"IEND" not in tail:
        return "truncated"
    if header.format == "jpeg" and b"\xff\xd9" not in data[-4096:]:
        return "truncated"
    if isinstance(exc, OSError) and "truncated" in str(exc):
        return "truncated"
    if "truncated" in str(exc).lower() or "incomplete" in str(exc).lower():
        return "truncated"
    return "read_error"
