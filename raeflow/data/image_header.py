"""What an encoded image is, from its first bytes: format, size, channels, bit depth.

Read before any pixel is decoded, so that a decompression bomb (a few kilobytes that claim
100,000 x 100,000 pixels) is refused without allocating anything. PNG and JPEG headers are
parsed here directly (they are most of the data and this is on the hot path); other formats go
through Pillow's lazy `Image.open`, which also reads only the header.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

RAW_MAGIC = b"\x89RAW"
"""First bytes of raeflow's raw-pixel form (see `images.encode_raw`); no image format starts so."""
RAW_HEADER = struct.Struct("<4sIIB")
"""magic, height, width, channels; the uint8 pixels follow in (H, W, C) order."""

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, 0xD8} | set(range(0xD0, 0xD8))


class HeaderError(ValueError):
    """The header cannot be read; `reason` is an `ImageRejected` slug."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageHeader:
    """Facts about an encoded image known without decoding it."""

    format: str
    """`jpeg`, `png`, `webp`, `gif`, `bmp`, `tiff`, `raw`, or Pillow's name for anything else."""
    height: int
    width: int
    channels: int
    """Channels as stored: 1 grey, 2 grey+alpha, 3 colour, 4 colour+alpha (or CMYK for JPEG)."""
    bit_depth: int = 8
    """Bits per sample (16 for 16-bit PNG/TIFF)."""
    palette: bool = False
    """PNG colour type 3 (indexed colours)."""
    pillow_mode: str | None = None
    """Pillow's mode, for formats whose header Pillow read."""
    orientation: int = 1
    """EXIF Orientation (1 upright .. 8); `height` and `width` are as stored, before it is applied."""

    @property
    def transposed(self) -> bool:
        """Whether applying `orientation` swaps height and width (EXIF 5 to 8: a quarter turn)."""
        return self.orientation >= 5

    @property
    def upright_size(self) -> tuple[int, int]:
        """(height, width) of the decoded image, which is turned upright: what a model sees."""
        return (self.width, self.height) if self.transposed else (self.height, self.width)


def sniff_format(data: bytes) -> str | None:
    """The format named by the magic bytes, or None when they match no known image format."""
    if data.startswith(RAW_MAGIC):
        return "raw"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def read_header(data: bytes) -> ImageHeader:
    """The header of an encoded image; raises `HeaderError` when there is none to read."""
    fmt = sniff_format(data)
    if fmt == "raw":
        return _raw_header(data)
    if fmt == "png":
        return _png_header(data)
    if fmt == "jpeg":
        return _jpeg_header(data)
    return _pillow_header(data, fmt)


def _raw_header(data: bytes) -> ImageHeader:
    if len(data) < RAW_HEADER.size:
        raise HeaderError("truncated", "raw pixel header cut short")
    _, height, width, channels = RAW_HEADER.unpack_from(data)
    return ImageHeader("raw", height, width, channels)


def _png_header(data: bytes) -> ImageHeader:
    # Signature (8) + IHDR length (4) + "IHDR" (4) + width, height (8) + depth, colour type (2).
    if len(data) < 26:
        raise HeaderError("truncated", "PNG header cut short")
    if data[12:16] != b"IHDR":
        raise HeaderError("read_error", "PNG without IHDR chunk")
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour_type)
    if channels is None:
        raise HeaderError("read_error", f"PNG colour type {colour_type} is invalid")
    return ImageHeader("png", height, width, channels, bit_depth=depth, palette=colour_type == 3)


def _jpeg_header(data: bytes) -> ImageHeader:
    pos, size, orientation = 2, len(data), 1
    while pos < size:
        if data[pos] != 0xFF:
            raise HeaderError("read_error", f"JPEG marker expected at byte {pos}")
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker in _JPEG_NO_LENGTH:
            continue
        if pos + 2 > size:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if marker in _JPEG_SOF:
            if pos + 8 > size:
                break
            depth, height, width, channels = struct.unpack_from(">BHHB", data, pos + 2)
            if height == 0:
                raise HeaderError("read_error", "JPEG whose height is set later (DNL marker)")
            return ImageHeader("jpeg", height, width, channels, bit_depth=depth, orientation=orientation)
        if marker == 0xDA:
            raise HeaderError("read_error", "JPEG scan data before any frame header")
        if marker == 0xE1 and data[pos + 2 : pos + 8] == b"Exif\0\0":  # APP1: EXIF before the frame
            orientation = exif_orientation(data[pos + 8 : pos + length])
        pos += length
    raise HeaderError("truncated", "JPEG ends before its frame header")


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of an EXIF block (a TIFF structure), 1 when absent or invalid.

    Only IFD0 is read: the tag lives there, and a damaged block must never reject an image.
    """
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
            tag, kind = struct.unpack_from(order + "HH", tiff, entry)
            if tag == 0x0112 and kind == 3:  # SHORT, stored in the first two bytes of the value
                (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _pillow_header(data: bytes, fmt: str | None) -> ImageHeader:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                mode = img.mode
                name = (img.format or fmt or "unknown").lower()
                # Pillow turns TIFFs upright itself (size included): nothing left to apply.
                orientation = 1 if name == "tiff" else pillow_orientation(img)
    except UnidentifiedImageError as exc:
        if fmt is None:
            raise HeaderError("not_an_image", "no known image format") from exc
        raise HeaderError("truncated", f"{fmt} header cannot be read") from exc
    except Image.DecompressionBombError as exc:
        raise HeaderError("too_many_pixels", str(exc)) from exc
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise HeaderError("truncated" if fmt else "not_an_image", f"{type(exc).__name__}: {exc}") from exc
    channels = {"1": 1, "L": 1, "P": 4, "LA": 2, "La": 2, "PA": 4, "RGBA": 4, "RGBa": 4, "CMYK": 4}.get(
        mode, 3
    )
    if mode.startswith("I") or mode == "F":
        channels = 1
    depth = 16 if mode.startswith("I;16") else 32 if mode in ("I", "F") else 8
    return ImageHeader(
        name, height, width, channels, bit_depth=depth, pillow_mode=mode, orientation=orientation
    )


def pillow_orientation(img: Any) -> int:
    """EXIF Orientation of an opened Pillow image (WebP, TIFF, ...), 1 when it has none."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # EXIF is metadata: a broken block must never reject the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
