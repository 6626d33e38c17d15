"""A tree of image files: key = path relative to the root without its extension.

Two files that differ only in extension (`a.jpg`, `a.png`) would share a key: such files keep their
extension in the key (`a.jpg`, `a.png`) so no image is silently dropped; every other key has none.

Shards are runs of the sorted file list cut by work, not by a fixed count: a shard ends before the
file that would take it past `bytes_per_shard` bytes of encoded files (32 MiB by default) or past
`files_per_shard` files (1000), whichever comes first; a file larger than the budget is a shard of
its own. Sizes come with the listing (no request per file), so the same files give the same shards,
named by their positions (`files 0-11`). A file that changes size can move the boundaries after it:
a rerun into a half-finished `--out` then stops with an error instead of mixing two cuts.

Why 32 MiB: a shard is the grain of parallelism and of resume (an interrupted job redoes its
unfinished shards), so it should be minutes of one core's work at most, and the slowest job per byte
is denoising photos at full size. A JPEG photo holds 0.1-0.3 bytes per pixel, so 32 MiB is 110-335
megapixels: 2-7 minutes of one core at the 0.8 megapixels/s measured for `builtin:denoise-grey`,
7-22 minutes at the 0.25 of `builtin:denoise-rgb` (one core of this machine, AMX, bf16, 512x512
inputs, load average 4-5: perhaps twice as fast when quiet). A folder of 300 phone photos of 3 MB
is then 28 shards instead of one. A smaller budget would cut RGB denoising finer but multiply the
part files of `embed` (one or more per shard: 32 MiB of such photos is already a part of 11 rows)
and the manifest's records. Within a job of few shards, the blocks of each shard spread over the
actors (`raeflow.batch.runner`; a denoise block is one to a few photos), so one or two shards still
keep as many cores busy as they have blocks. Folders of small files reach the
1000-file cap first (1000 JPEGs of 32 KB), as before. `denoise` and `report` cut at
`FULL_SIZE_BYTES_PER_SHARD` (4 MiB) instead: they run the model on whole photos.

Labels follow torchvision's ImageFolder convention: when every image sits below a first-level
subfolder of the root (`cats/x.jpg`, `dogs/y.jpg`, `dogs/puppies/z.jpg`), the subfolder names are
the classes and label = the class's position in the sorted list of names (`cats` -> 0, `dogs` -> 1).
Subfolders without images are no class. A flat folder, a folder with a single subfolder (one
class says nothing), or one with images directly in the root beside subfolders has no labels
(raeflow never drops images to make a layout fit). The mapping is
`FolderSource.label_names` and appears in `describe()`, so it is printed in summaries and reports.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source, range_rows
from raeflow.data.sources.location import (
    filesystem,
    glob_root,
    is_glob,
    list_file_sizes,
    read_files,
    require_exists,
    to_uri,
)
from raeflow.errors import SourceError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""File names (lower-cased) a folder source reads; other files are ignored."""
FILES_PER_SHARD = 1000
"""Default largest number of files in one shard."""
BYTES_PER_SHARD = 32 * 1024 * 1024
"""Default budget of encoded bytes in one shard (a larger file is a shard of its own); see above."""
FULL_SIZE_BYTES_PER_SHARD = 4 * 1024 * 1024
"""The budget of jobs that run the model on every photo at its full size (`raeflow denoise`, and
`raeflow report`, which may hold a denoiser): 4 MiB of JPEG is 14-40 megapixels, one to three
minutes of one core at the shipped denoisers' speed, so a folder of a few hundred photos spreads
over every core and an interrupted run redoes minutes, not the folder. Each image is its own output
file (denoise) or a few rows (report), so a finer cut costs no tiny part files."""
NAMES_SHOWN = 20
"""`describe()` lists at most this many class names."""


class FolderSource(Source):
    """Image files under a folder (or matching a glob), read in sorted order."""

    kind = "folder"

    def __init__(
        self,
        uri: str,
        *,
        storage_options: dict[str, Any] | None = None,
        files_per_shard: int = FILES_PER_SHARD,
        bytes_per_shard: int = BYTES_PER_SHARD,
    ) -> None:
        super().__init__(uri, storage_options=storage_options)
        if files_per_shard < 1:
            raise ValueError("files_per_shard must be at least 1")
        if bytes_per_shard < 1:
            raise ValueError("bytes_per_shard must be at least 1")
        self.files_per_shard = files_per_shard
        self.bytes_per_shard = bytes_per_shard
        self._listing: tuple[str, list[str], list[int]] | None = None
        self._label_names: tuple[str, ...] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Workers get their files from the shards: the (possibly huge) listing does not travel.
        return {**self.__dict__, "_listing": None}

    @property
    def label_names(self) -> list[str] | None:
        """Class names by label (label `i` is `label_names[i]`), or None for an unlabelled folder."""
        if self._listing is None and self._label_names is None:
            self._list()
        return None if self._label_names is None else list(self._label_names)

    @property
    def has_labels(self) -> bool:  # type: ignore[override]
        """Whether the folder is a tree of class subfolders (see the module docstring)."""
        return self.label_names is not None

    def describe(self) -> str:
        """One line: the kind, the URI and, for class subfolders, the label of each class name."""
        names = self.label_names
        if names is None:
            return f"{self.kind} source {self.uri} (no labels: no class subfolders)"
        shown = ", ".join(f"{i}={name}" for i, name in enumerate(names[:NAMES_SHOWN]))
        more = f", ... ({len(names) - NAMES_SHOWN} more)" if len(names) > NAMES_SHOWN else ""
        return f"{self.kind} source {self.uri} ({len(names)} classes from subfolder names: {shown}{more})"

    def _list(self) -> tuple[str, list[str], list[int]]:
        """The root, the sorted image files and their sizes (listed once per process), and the
        class names."""
        if self._listing is None:
            fs, path = filesystem(self.uri, self.storage_options)
            require_exists(fs, path, self.uri, "a folder of image files")
            listed = list_file_sizes(fs, path, IMAGE_SUFFIXES)
            files = [name for name, _ in listed]
            if not files:
                kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES)
                raise SourceError(f"no image files ({kinds}) under {self.uri}")
            if is_glob(path):
                root = glob_root(path)
            else:
                root = path if fs.isdir(path) else posixpath.dirname(path)
            self._listing = (root, files, [size for _, size in listed])
            names = class_names(root, files)
            self._label_names = None if names is None else tuple(names)
        return self._listing

    @classmethod
    def sniff(cls, fs: Any, path: str) -> bool:
        """A folder, or a single image file."""
        return fs.isdir(path) or path.lower().endswith(IMAGE_SUFFIXES)

    def list_shards(self) -> list[Shard]:
        """Runs of the sorted image files, each at most `files_per_shard` files and `bytes_per_shard`
        bytes (a larger file alone)."""
        fs, _ = filesystem(self.uri, self.storage_options)
        root, files, sizes = self._list()
        keys = folder_keys(root, files)
        labels = file_labels(root, files, self._label_names)
        shards = []
        for index, (start, stop) in enumerate(
            shard_bounds(sizes, self.files_per_shard, self.bytes_per_shard)
        ):
            shards.append(
                Shard(
                    index=index,
                    name=f"files {start}-{stop - 1}",
                    paths=tuple(to_uri(fs, p) for p in files[start:stop]),
                    start=start,
                    stop=stop,
                    extra={"keys": keys[start:stop], "labels": labels[start:stop]},
                )
            )
        return shards

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """One image per listed file of each shard."""
        return range_rows(shards)

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        """The shard's files as rows; a file that cannot be read is a row with an `error`."""
        fs, _ = filesystem(self.uri, self.storage_options)
        keys: list[str] = shard.extra["keys"]
        labels: list[int | None] = shard.extra.get("labels") or [None] * len(keys)
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
                    "label": pa.array(labels[start : start + batch_rows], pa.int64()),
                    "error": errors,
                },
                schema=ROW_SCHEMA,
            )


def shard_bounds(sizes: list[int], max_files: int, max_bytes: int) -> list[tuple[int, int]]:
    """`(start, stop)` of each run of files, in order: a run ends before the file that would take it
    past `max_files` files or `max_bytes` bytes; a file of more than `max_bytes` is a run of its own."""
    bounds = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_files or total + size > max_bytes):
            bounds.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        bounds.append((start, len(sizes)))
    return bounds


def folder_keys(root: str, files: list[str]) -> list[str]:
    """Keys of `files` under `root`: relative path without extension, unless that is ambiguous."""
    relative = _relative(root, files)
    stems = [posixpath.splitext(r)[0] for r in relative]
    stem_counts = Counter(stems)
    keys = [s if stem_counts[s] == 1 else r for s, r in zip(stems, relative, strict=True)]
    # A kept extension can equal another file's stem (`a.png` vs `a.png.jpg`): that one keeps its too.
    key_counts = Counter(keys)
    return [r if key_counts[k] > 1 else k for k, r in zip(keys, relative, strict=True)]


def _relative(root: str, files: list[str]) -> list[str]:
    return [posixpath.relpath(f, root) if root else f for f in files]


def class_names(root: str, files: list[str]) -> list[str] | None:
    """Sorted first-level subfolder names when every file sits in one and there are at least two,
    else None (unlabelled)."""
    parts = [r.split("/", 1) for r in _relative(root, files)]
    if not parts or any(len(p) == 1 or p[0] in ("", ".", "..") for p in parts):
        return None
    names = sorted({p[0] for p in parts})
    return names if len(names) >= 2 else None


def file_labels(root: str, files: list[str], names: tuple[str, ...] | list[str] | None) -> list[int | None]:
    """Label of each file: the position of its first-level folder in `names` (None when unlabelled)."""
    if names is None:
        return [None] * len(files)
    index = {name: i for i, name in enumerate(names)}
    return [index[r.split("/", 1)[0]] for r in _relative(root, files)]
