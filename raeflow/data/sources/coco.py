"""COCO: image folders plus optional `annotations/instances_<split>.json`; key = the file name's stem.

The source URI is the COCO root, or one split folder inside it:

    <root>/train2017/000000000009.jpg ...                    -> key `000000000009`
    <root>/val2017/...
    <root>/annotations/instances_train2017.json              (optional; gives the labels)
    <root>/annotations/instances_val2017.json

Every sub-folder of the root other than `annotations/` is a split folder. An image's label is the
`category_id` (COCO's own ids, 1..90) of its largest annotation by area, ties going to the lowest
annotation id; images with no annotation, or in a split without an instances file (test2017,
unlabeled2017), have a null label. Keys are the file names without extension, as COCO's image ids
are unique across splits; two files with the same stem are refused.

The instances json is read once, on the driver, as a stream (`coco_annotations`), and each shard
carries only the labels of its own images in `Shard.extra`, so workers never open the json.

    raeflow shard s3://bucket/coco/ --source-format coco --out s3://bucket/coco-shards/
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
from fsspec import AbstractFileSystem

from raeflow.data.sources.base import Shard, Source
from raeflow.data.sources.coco_annotations import read_labels
from raeflow.data.sources.location import filesystem, read_files, to_uri
from raeflow.data.sources.published import row_ranges, row_table
from raeflow.errors import SourceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
ANNOTATIONS = "annotations"
_SPLIT_NAME = re.compile(r"^(train|val|test|unlabeled)\d{4}$")


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


class CocoSource(Source):
    """Images of a COCO root (or split folder), labelled from the instances json where present."""

    kind = "coco"
    has_labels = True
    shard_images = 1_000
    """Images per shard."""

    def __init__(
        self, uri: str, *, storage_options: dict[str, Any] | None = None, shard_images: int | None = None
    ) -> None:
        super().__init__(uri, storage_options=storage_options)
        if shard_images is not None:
            self.shard_images = shard_images

    @classmethod
    def sniff(cls, fs: AbstractFileSystem, path: str) -> bool:
        """True for a folder with `annotations/instances_*.json`, or a `val2017`-like folder beside one."""
        folder = path.rstrip("/")
        if fs.glob(f"{folder}/{ANNOTATIONS}/instances_*.json"):
            return True
        parent = folder.rsplit("/", 1)[0] if "/" in folder else ""
        return bool(_SPLIT_NAME.match(_name(folder))) and bool(fs.glob(f"{parent}/{ANNOTATIONS}/*.json"))

    def _splits(self, fs: AbstractFileSystem, root: str) -> tuple[str, list[tuple[str, list[str]]]]:
        """The annotations folder and (split, sorted image paths) of every split folder."""
        entries = fs.ls(root, detail=True)
        images = sorted(e["name"] for e in entries if e["type"] == "file" and _is_image(e["name"]))
        if images:  # the URI is one split folder: annotations sit beside it
            parent = root.rsplit("/", 1)[0] if "/" in root else ""
            return f"{parent}/{ANNOTATIONS}", [(_name(root), images)]
        folders = sorted(
            e["name"] for e in entries if e["type"] == "directory" and _name(e["name"]) != ANNOTATIONS
        )
        splits = []
        for folder in folders:
            files = sorted(p for p in fs.ls(folder, detail=False) if _is_image(p))
            if files:
                splits.append((_name(folder), files))
        return f"{root}/{ANNOTATIONS}", splits

    def _labels(self, fs: AbstractFileSystem, annotations: str, split: str) -> dict[str, int]:
        path = f"{annotations}/instances_{split}.json"
        if not fs.isfile(path):
            return {}
        with fs.open(path, "rt", encoding="utf-8") as stream:
            return read_labels(stream, name=to_uri(fs, path))

    def list_shards(self) -> list[Shard]:
        fs, root = filesystem(self.uri, self.storage_options)
        if not fs.isdir(root):
            raise SourceError(self._missing())
        annotations, splits = self._splits(fs, root)
        if not splits:
            raise SourceError(self._missing())
        shards: list[Shard] = []
        seen: dict[str, str] = {}
        for split, files in splits:
            labels = self._labels(fs, annotations, split)
            for path in files:
                key = _stem(_name(path))
                if key in seen:
                    raise SourceError(
                        f"two COCO images share the key {key!r}: {to_uri(fs, seen[key])} and "
                        f"{to_uri(fs, path)}; keep one, or read the folders as --format folder"
                    )
                seen[key] = path
            for start, stop in row_ranges(len(files), self.shard_images):
                chunk = files[start:stop]
                chunk_labels = {_name(p): labels[_name(p)] for p in chunk if _name(p) in labels}
                shards.append(
                    Shard(
                        index=len(shards),
                        name=f"{split}[{start}:{stop}]",
                        paths=tuple(to_uri(fs, p) for p in chunk),
                        extra={"split": split, "labels": chunk_labels},
                    )
                )
        return shards

    def _missing(self) -> str:
        return (
            f"no COCO images under {self.uri}: expected split folders such as train2017/ and val2017/ "
            "of .jpg files, with annotations/instances_<split>.json beside them for labels (as "
            "published on cocodataset.org); put them there (raeflow never downloads)"
        )

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """One image per file of each shard."""
        return [len(shard.paths) for shard in shards]

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        labels: dict[str, int] = shard.extra.get("labels", {})
        for first in range(0, len(shard.paths), batch_rows):
            uris = shard.paths[first : first + batch_rows]
            fs, _ = filesystem(uris[0], self.storage_options)
            found = read_files(fs, [fs._strip_protocol(uri) for uri in uris])
            images = [data if isinstance(data, bytes) else b"" for data in found]
            errors = [None if isinstance(data, bytes) else f"read_error: {data!r}" for data in found]
            names = [_name(uri) for uri in uris]
            yield row_table(
                [_stem(n) for n in names], list(uris), images, [labels.get(n) for n in names], errors
            )
