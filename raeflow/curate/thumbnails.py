"""Small thumbnails of the images behind table rows, read back from their sources, for offline pages.

    thumbs = read_thumbnails([("photos/0042", "s3://bucket/photos/0042.jpg"), ...])
    thumbs[("photos/0042", "s3://...")].src   # "data:image/jpeg;base64,..." or None, with a reason

Each row of an embedding table keeps its `key` and `source` (the image file, or the Parquet /
WebDataset shard it came from). A file is read whole; a shard is opened as a source and read
until its wanted keys are found. Decoding goes through `raeflow.data.images` (size checked from
the header before any decoding; a JPEG decoded at a reduced DCT scale), the result is encoded as a
small JPEG and carried as a data URI, so a page needs no network and no files beside it.

A source that cannot be read gives a placeholder with the reason, never an error. A store that
refuses or cannot be reached (no credentials, no such bucket, no answer) is found on the first
source read from it; its other sources are not tried and get the same reason.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from raeflow.batch.decoding import worker_memory
from raeflow.data import images
from raeflow.data.sources import open_source
from raeflow.data.sources.folder import IMAGE_SUFFIXES
from raeflow.data.sources.location import filesystem
from raeflow.data.sources.object_store import explain, is_object_store
from raeflow.errors import RaeflowError
from raeflow.progress import Progress

THUMBNAIL_SIDE = 160
"""Longest side of a thumbnail, in pixels (smaller images keep their size)."""
THUMBNAIL_QUALITY = 80
"""JPEG quality of a thumbnail: about 4-8 KB for a 160-pixel photo."""
READ_THREADS = 8
"""Sources read at once (network-bound); each holds one original image at a time."""

Item = tuple[str, str | None]
"""(key, source) of one table row."""


@dataclass(frozen=True)
class Thumbnail:
    """One image's thumbnail as a data URI, or the reason there is none."""

    src: str | None
    reason: str | None = None
    small: bool = False  # under 64 pixels a side: shown enlarged, pixels kept sharp


def thumbnail_of(data: bytes, side: int = THUMBNAIL_SIDE, max_bytes: int | None = None) -> Thumbnail:
    """The thumbnail of encoded image bytes (or raeflow's raw-pixel form), at most `side` pixels a side."""
    try:
        height, width = images.probe_image(data).upright_size
        scale = min(1.0, side / max(height, width))
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixels = images.decode_fitted(data, None, *target, max_bytes=max_bytes)  # (h, w, C), upright
    except images.ImageRejected as rejected:
        return Thumbnail(None, str(rejected))
    encoded = images.encode_image(pixels, "jpeg", quality=THUMBNAIL_QUALITY)
    return Thumbnail(
        "data:image/jpeg;base64," + base64.b64encode(encoded).decode("ascii"), small=max(target) < 64
    )


def read_thumbnails(
    items: Iterable[Item], *, side: int = THUMBNAIL_SIDE, label: str | None = None
) -> dict[Item, Thumbnail]:
    """The thumbnail of every (key, source) in `items`, read from its source; `label` shows progress."""
    wanted: dict[str, set[str]] = {}
    result: dict[Item, Thumbnail] = {}
    for key, source in items:
        if source:
            wanted.setdefault(source, set()).add(key)
        else:
            result[(key, source)] = Thumbnail(None, "no source: the table does not say where it came from")
    by_store: dict[str, list[str]] = {}
    for source in wanted:
        by_store.setdefault(_store(source), []).append(source)
    max_bytes = worker_memory(None, READ_THREADS)
    total = sum(len(keys) for keys in wanted.values())
    with (
        Progress(label or "thumbnails", total=total, quiet=label is None) as progress,
        ThreadPoolExecutor(READ_THREADS) as pool,
    ):

        def read(source: str) -> dict[str, Thumbnail]:
            found = _read_source(source, wanted[source], side, max_bytes)
            progress.advance(len(found))
            return found

        for sources in by_store.values():
            first = read(sources[0])  # alone: a store that refuses is known before its other sources
            refused = _store_refusal(first)
            found = [first] + (
                [dict.fromkeys(wanted[s], Thumbnail(None, refused)) for s in sources[1:]]
                if refused
                else list(pool.map(read, sources[1:]))
            )
            for source, thumbs in zip(sources, found, strict=True):
                result.update(((key, source), thumb) for key, thumb in thumbs.items())
    return result


_REFUSED = "store: "
"""Prefix of a reason that holds for every source of one store (`explain` knew the error)."""


def _store(source: str) -> str:
    """The store a source lives in: `s3://bucket` for a bucket, else its scheme (local files: `file`)."""
    if is_object_store(source):
        parts = urlsplit(source)
        return f"{parts.scheme}://{parts.netloc}"
    return source.partition("://")[0] if "://" in source else "file"


def _store_refusal(found: dict[str, Thumbnail]) -> str | None:
    reasons = {thumb.reason for thumb in found.values()}
    refused = next((r for r in reasons if r and r.startswith(_REFUSED)), None)
    return refused


def _read_source(source: str, keys: set[str], side: int, max_bytes: int) -> dict[str, Thumbnail]:
    """Thumbnails of `keys` from one source: an image file, or a shard read until they are found."""
    try:
        if not source.startswith("builtin:"):
            fs, path = filesystem(source)
            if source.lower().endswith(IMAGE_SUFFIXES):  # a folder source's file: the image itself
                return dict.fromkeys(keys, thumbnail_of(fs.cat_file(path), side, max_bytes))
            fs.info(path)  # a store's refusal or a missing shard, as the store raised it
        return _from_shard(source, keys, side, max_bytes)
    except Exception as err:  # noqa: BLE001 - whatever a read raised becomes the placeholder's reason
        return dict.fromkeys(keys, Thumbnail(None, _reason(source, err)))


def _from_shard(source: str, keys: set[str], side: int, max_bytes: int) -> dict[str, Thumbnail]:
    opened = open_source(source)
    found: dict[str, Thumbnail] = {}
    for shard in opened.list_shards():
        for batch in opened.read_shard(shard, batch_rows=64):
            rows = zip(*(batch.column(c).to_pylist() for c in ("key", "image", "error")), strict=True)
            for key, data, error in rows:
                if key in keys and key not in found:
                    found[key] = Thumbnail(None, error) if error else thumbnail_of(data, side, max_bytes)
            if len(found) == len(keys):
                return found
    missing = Thumbnail(None, f"not_found: {source} holds no image of this key")
    return {key: found.get(key, missing) for key in keys}


def _reason(source: str, err: BaseException) -> str:
    explained = explain(source, err)
    if explained is not None:
        return _REFUSED + str(explained)
    if isinstance(err, FileNotFoundError):
        return f"not_found: {source} does not exist"
    if isinstance(err, RaeflowError):
        return str(err)
    lines = str(err).strip().splitlines()
    return f"read_error: {type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


THUMBNAIL_STYLE = """
.thumbs{display:flex;flex-wrap:wrap;gap:10px;margin:.3em 0 1.2em}
figure{margin:0;width:164px;font-size:12px;overflow-wrap:anywhere}
figure .box{width:160px;height:160px;display:flex;align-items:center;justify-content:center;
background:#f3f3f3;border:2px solid #ddd}
figure img{max-width:160px;max-height:160px}
figure img.small{width:128px;height:auto;image-rendering:pixelated}
figure .missing{color:#a33;padding:6px;font-size:11px}figure.keep .box{border-color:#2a7}
figure.keep figcaption b{color:#185}figcaption .src{color:#777}
"""
"""The style of a row of thumbnails (`figure_html`), shared by every page that shows them."""


def figure_html(thumb: Thumbnail | None, caption: str, *, css_class: str = "", alt: str = "") -> str:
    """One `<figure>`: the thumbnail (or a placeholder saying why there is none) and `caption` (HTML)."""
    if thumb is not None and thumb.src:
        small = ' class="small"' if thumb.small else ""
        picture = f'<img{small} loading="lazy" alt="{html.escape(alt)}" src="{thumb.src}">'
    else:
        why = thumb.reason if thumb is not None and thumb.reason else "no thumbnail"
        picture = f'<div class="missing">no thumbnail: {html.escape(why)}</div>'
    kind = f' class="{css_class}"' if css_class else ""
    return f'<figure{kind}><div class="box">{picture}</div><figcaption>{caption}</figcaption></figure>'
