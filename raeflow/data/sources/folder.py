"""A tree of image files: key = path relative to the root without its extension.

Shards are fixed-size chunks of the sorted file list, so the shard list only changes where files
were added or removed. Two files that differ only in extension (`a.jpg`, `a.png`) would share a
key: such files keep their extension in the key (`a.jpg`, `a.png`) so no image is silently
dropped; every other key has none.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source
from raeflow.data.sources.location import (
    filesystem,
    glob_root,
    is_glob,
    list_files,
    read_files,
    require_exists,
    to_uri,
)
from raeflow.errors import SourceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""File names (lower-cased) a folder source reads; other files are ignored."""
FILES_PER_SHARD = 1000
"""Default number of files in one shard."""


class FolderSource(Source):
    """Image files under a folder (or matching a glob), read in sorted order."""

    kind = "folder"
    has_labels = False

    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, Any] | None = None,
        files_per_shard: int = FILES_PER_SHARD,
    ) -> None:
        super().__init__(uri, storage_options=storage_options)
        if files_per_shard < 1:
            raise ValueError("files_per_shard must be at least 1")
        self.files_per_shard = files_per_shard

    @classmethod
    def sniff(cls, fs: Any, path: str) -> bool:
        """A folder, or a single image file."""
        return fs.isdir(path) or path.lower().endswith(IMAGE_SUFFIXES)

    def list_shards(self) -> list[Shard]:
        """Chunks of `files_per_shard` files of the sorted list of image files."""
        fs, path = filesystem(self.uri, self.storage_options)
        require_exists(fs, path, self.uri, "a folder of image files")
        files = list_files(fs, path, IMAGE_SUFFIXES)
        if not files:
            kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
            raise SourceError(f"no image files ({kinds}) under {self.uri}")
        if is_glob(path):
            root = glob_root(path)
        else:
            root = path if fs.isdir(path) else posixpath.dirname(path)
        keys = folder_keys(root, files)
        shards = []
        for index, start in enumerate(range(0, len(files), self.files_per_shard)):
            stop = min(start + self.files_per_shard, len(files))
            shards.append(
                Shard(
                    index=index,
                    name=f"files {start}-{stop - 1}",
                    paths=tuple(to_uri(fs, p) for p in files[start:stop]),
                    start=start,
                    stop=stop,
                    extra={"keys": keys[start:stop]},
                )
            )
        return shards

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        """The shard's files as rows; a file that cannot be read is a row with an `error`."""
        fs, _ = filesystem(self.uri, self.storage_options)
        keys: list[str] = shard.extra["keys"]
        for start in range(0, len(shard.paths), batch_rows):
            uris = list(shard.paths[start : start + batch_rows])
            contents = read_files(fs, [fs._strip_protocol(u) for u in uris])
            images: list[bytes] = []
            errors: list[str | None] = []
            for data in contents:
                if isinstance(data, Exception):
                    images.append(b"")
                    errors.append(f"read_error: {type(data).__name__}: {data}")
                else:
                    images.append(data)
                    errors.append(None)
            yield pa.table(
                {
                    "key": keys[start : start + batch_rows],
                    "source": uris,
                    "image": images,
                    "label": pa.nulls(len(uris), pa.int64()),
                    "error": errors,
                },
                schema=ROW_SCHEMA,
            )


def folder_keys(root: str, files: list[str]) -> list[str]:
    """Keys of `files` under `root`: relative path without extension, unless that is ambiguous."""
    relative = [posixpath.relpath(f, root) if root else f for f in files]
    stems = [posixpath.splitext(r)[0] for r in relative]
    stem_counts = Counter(stems)
    keys = [s if stem_counts[s] == 1 else r for s, r in zip(stems, relative, strict=True)]
    # A kept extension can equal another file's stem (`a.png` vs `a.png.jpg`): that one keeps its too.
    key_counts = Counter(keys)
    return [r if key_counts[k] > 1 else k for k, r in zip(keys, relative, strict=True)]
