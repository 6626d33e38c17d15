"""WebDataset `.tar` shards: one shard per tar, read as a stream (never seeked, never unpacked).

WebDataset's convention: a member `dir/abc.seg.jpg` belongs to the sample `__key__ = dir/abc`
under the field `seg.jpg` (the key ends at the first dot of the file name), and a sample's members
are adjacent in the tar. The image is the first field of `IMAGE_FIELDS` present; the label is
the integer in `.cls`, else an integer `label` in `.json`.

A tar's sample count is only known by reading it, except from the `_index.json` that `raeflow
shard` writes beside its tars (`count_rows`, for progress displays).

Rejected rows (empty `image`, an `error`): a sample without an image field, a key that is an
absolute path or has a `..` part (it would escape an output folder), a key seen before in the same
tar (kept unique as `<key>#<n>`), and the sample a truncated or corrupt tar ends in.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source
from raeflow.data.sources.location import (
    filesystem,
    list_files,
    one_shard_per_file,
    require_exists,
)
from raeflow.errors import SourceError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
"""Fields that hold the image, in order of preference."""
_READ_FIELDS = frozenset(IMAGE_FIELDS) | {"cls", "json"}
"""Fields whose bytes are read; other members (captions, videos, ...) are skipped unread."""
SHARD_INDEX = "_index.json"
"""The index `raeflow shard` writes beside its shards (`raeflow.data.shard_writer`): name, rows, bytes."""
MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""A tar member's name as (key, field): the key is its folders and name up to the first dot (also
how `raeflow.batch.mirror` regroups a tar's members)."""


class WebDatasetSource(Source):
    """`.tar` shards under a folder, matching a glob, or one tar."""

    kind = "webdataset"
    has_labels = True  # where a sample has no `.cls`, its label is null
    uncounted = f"total unknown: no {SHARD_INDEX} from raeflow shard beside the tars"

    @classmethod
    def sniff(cls, fs: Any, path: str) -> bool:
        """A tar file, or a folder with tar files at its top."""
        if path.lower().endswith(TAR_SUFFIXES):
            return True
        return fs.isdir(path) and any(p.lower().endswith(TAR_SUFFIXES) for p in fs.ls(path, detail=False))

    def list_shards(self) -> list[Shard]:
        """One shard per tar file, sorted by path."""
        fs, path = filesystem(self.uri, self.storage_options)
        require_exists(fs, path, self.uri, "WebDataset .tar shards")
        files = list_files(fs, path, TAR_SUFFIXES)
        if not files:
            raise SourceError(f"no .tar shards under {self.uri}")
        return one_shard_per_file(fs, path, files)

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """Samples per tar from the `_index.json` beside it, for tars it lists with their present size
        (None for the others: a tar changed since, or not packed by `raeflow shard`)."""
        fs, _ = filesystem(self.uri, self.storage_options)
        known: dict[str, int] = {}
        for folder in sorted({posixpath.dirname(fs._strip_protocol(s.paths[0])) for s in shards}):
            known.update(_indexed_rows(fs, folder))
        return [known.get(fs._strip_protocol(shard.paths[0])) for shard in shards]

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        """The tar's samples in order, `batch_rows` at a time."""
        fs, _ = filesystem(self.uri, self.storage_options)
        uri = shard.paths[0]
        rows = _Rows(uri)
        for key, fields, error in _samples(fs, fs._strip_protocol(uri)):
            rows.add(key, fields, error)
            if len(rows) >= batch_rows:
                yield rows.table()
        if len(rows):
            yield rows.table()


def _indexed_rows(fs: Any, folder: str) -> dict[str, int]:
    """{tar path: samples} for the tars of `folder` that its `_index.json` lists with their present size."""
    try:
        index = json.loads(fs.cat_file(f"{folder}/{SHARD_INDEX}"))
        sizes = {e["name"]: e["size"] for e in fs.ls(folder, detail=True) if e.get("type") == "file"}
        entries = index["shards"] if index.get("format") == "webdataset" else []
        return {
            f"{folder}/{e['name']}": int(e["rows"])
            for e in entries
            if sizes.get(f"{folder}/{e['name']}") == e.get("bytes")
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no index (FileNotFoundError is an OSError), or not one `raeflow shard` wrote


def _samples(fs: Any, path: str) -> Iterator[tuple[str, dict[str, bytes], str | None]]:
    """(key, {field: bytes}, error) per sample, streaming through the tar."""
    key: str | None = None
    fields: dict[str, bytes] = {}
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = MEMBER_NAME.match(member.name)
                if match is None:
                    continue  # no extension: not part of any sample
                member_key, field = match.group(1), match.group(2).lower()
                if member_key != key:
                    if key is not None:
                        yield key, fields, None
                    key, fields = member_key, {}
                handle = tar.extractfile(member) if field in _READ_FIELDS else None
                fields[field] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as exc:
        where = key if key is not None else posixpath.basename(path)
        yield where, {}, f"truncated: tar breaks off in sample {where!r}: {type(exc).__name__}: {exc}"
        return
    if key is not None:
        yield key, fields, None


class _Rows:
    """Collects samples of one tar as `ROW_SCHEMA` rows."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.seen: dict[str, int] = {}
        self.keys: list[str] = []
        self.images: list[bytes] = []
        self.labels: list[int | None] = []
        self.errors: list[str | None] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, fields: dict[str, bytes], error: str | None) -> None:
        """Add one sample (or its error)."""
        count = self.seen.get(key, 0)
        self.seen[key] = count + 1
        if count:
            error = error or f"duplicate_key: {key!r} appears again in the tar"
            key = f"{key}#{count}"
        if error is None and (key.startswith("/") or ".." in key.split("/")):
            error = f"unsafe_key: {key!r} would escape the output folder"
        image = next((fields[f] for f in IMAGE_FIELDS if f in fields), None)
        if error is None and image is None:
            found = ", ".join(f".{f}" for f in sorted(fields)) or "none"
            error = f"not_an_image: sample has no image member (members: {found})"
        self.keys.append(key)
        self.images.append(b"" if error else image or b"")
        self.labels.append(_label(fields))
        self.errors.append(error)

    def table(self) -> pa.Table:
        """The collected rows, then start afresh."""
        count = len(self.keys)
        table = pa.table(
            {
                "key": self.keys,
                "source": [self.uri] * count,
                "image": self.images,
                "label": self.labels,
                "error": self.errors,
            },
            schema=ROW_SCHEMA,
        )
        self.keys, self.images, self.labels, self.errors = [], [], [], []
        return table


def _label(fields: dict[str, bytes]) -> int | None:
    """The integer in `.cls`, else an integer `label` in `.json`, else None."""
    try:
        if "cls" in fields:
            return int(fields["cls"].decode("utf-8").strip())
        if "json" in fields:
            label = json.loads(fields["json"]).get("label")
            return label if isinstance(label, int) and not isinstance(label, bool) else None
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return None
