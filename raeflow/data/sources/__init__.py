"""Image sources: find the kind of an input URI and open it.

Each kind lives in its own module and is imported only when used, so a kind whose module (or
optional dependency) is missing never breaks the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source
from raeflow.data.sources.location import filesystem, is_glob, list_files, require_exists
from raeflow.errors import ConfigError, SourceError

KINDS: dict[str, str] = {
    "folder": "raeflow.data.sources.folder:FolderSource",
    "parquet": "raeflow.data.sources.parquet:ParquetSource",
    "webdataset": "raeflow.data.sources.webdataset:WebDatasetSource",
    "builtin": "raeflow.data.sources.builtin:BuiltinSource",
    "mnist": "raeflow.data.sources.mnist:MnistSource",
    "cifar10": "raeflow.data.sources.cifar10:Cifar10Source",
    "stl10": "raeflow.data.sources.stl10:Stl10Source",
    "coco": "raeflow.data.sources.coco:CocoSource",
}
"""Source kind -> `module:Class`, imported lazily."""
SNIFF_ORDER = ("mnist", "cifar10", "stl10", "coco", "webdataset", "parquet", "folder")
"""Detection asks the published dataset layouts first, the generic kinds last (folder accepts any folder)."""
EXPECTED = "a folder of images, .parquet files, .tar WebDataset shards, an MNIST/CIFAR-10/STL-10/COCO layout"

__all__ = ["KINDS", "ROW_SCHEMA", "Shard", "Source", "detect_kind", "open_source", "source_class"]


def source_class(kind: str) -> type[Source]:
    """The Source class of a kind; `SourceError` when the kind is unknown or its module is missing."""
    if kind not in KINDS:
        raise ConfigError(f"unknown source format {kind!r}; formats: {', '.join(KINDS)}")
    module_name, class_name = KINDS[kind].split(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise SourceError(f"source format {kind!r} is not available in this install: {exc}") from exc


def detect_kind(uri: str, *, storage_options: dict[str, Any] | None = None) -> str:
    """The kind of source at `uri`, from its scheme and what is there."""
    if uri.startswith("builtin:"):
        return "builtin"
    fs, path = filesystem(uri, storage_options)
    require_exists(fs, path, uri, EXPECTED)
    if is_glob(path):
        # A pattern names files directly: their suffix says the kind.
        files = list_files(fs, path, (".tar", ".tar.gz", ".tgz", ".parquet"))
        if files and all(f.lower().endswith(".parquet") for f in files):
            return "parquet"
        if files and not any(f.lower().endswith(".parquet") for f in files):
            return "webdataset"
        return "folder"
    for kind in SNIFF_ORDER:
        try:
            cls = source_class(kind)
        except SourceError:
            continue  # a kind whose module is not installed cannot be what is there
        try:
            if cls.sniff(fs, path):
                return kind
        except OSError:
            continue
    return "folder"


def open_source(
    uri: str,
    format: str | None = None,
    *,
    image_column: str | None = None,
    storage_options: dict[str, Any] | None = None,
    bytes_per_shard: int | None = None,
) -> Source:
    """Open the source at `uri`; `format` (a kind name, or None/"auto") skips detection.

    `bytes_per_shard` cuts a folder's shards finer than its default (jobs that run the model on
    every image at full size, see `folder.FULL_SIZE_BYTES_PER_SHARD`); other kinds keep their files.
    """
    kind = detect_kind(uri, storage_options=storage_options) if format in (None, "auto") else format
    if kind == "builtin" and not uri.startswith("builtin:"):
        uri = f"builtin:{uri}"
    cls = source_class(kind)
    if image_column is not None:
        if kind != "parquet":
            raise ConfigError(f"--image-column applies to parquet sources, not to a {kind} source ({uri})")
        return cls(uri, storage_options=storage_options, image_column=image_column)  # type: ignore[call-arg]
    if bytes_per_shard is not None and kind == "folder":
        return cls(uri, storage_options=storage_options, bytes_per_shard=bytes_per_shard)  # type: ignore[call-arg]
    return cls(uri, storage_options=storage_options)
