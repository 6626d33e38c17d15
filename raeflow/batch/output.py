"""The output folder of a batch job: atomic writes, keys that cannot escape it, leftover cleanup.

Every file a job writes goes through `OutputDir.put`, which makes it appear whole or not at all:
on a local disk it is written to a temporary name next to the target and renamed; on an object
store it is one PUT (or one multipart upload, which also appears only when complete). A rerun
calls `remove_leftovers` to delete temporary files an interrupted run left behind. `OutputDir.create`
writes a file only where none is (the job's lease, `raeflow.batch.lease`).
"""

from __future__ import annotations

import errno
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

TEMP_MARK = ".raeflow-tmp-"
"""Part of every temporary file name; anything carrying it is a leftover of an interrupted write."""


class UnsafeKey(ValueError):
    """A relative output path that would land outside the output folder (`../`, absolute)."""


def safe_relpath(relpath: str) -> str:
    """Normalise a relative output path, or raise `UnsafeKey` if it would escape the folder."""
    if not relpath or "\\" in relpath or "\x00" in relpath:
        raise UnsafeKey(f"unsafe_key: {relpath!r} is empty or has a backslash or NUL")
    if relpath.startswith("/") or (len(relpath) > 1 and relpath[1] == ":"):
        raise UnsafeKey(f"unsafe_key: {relpath!r} is an absolute path")
    parts = relpath.split("/")
    if any(part in ("..", ".", "") for part in parts):
        raise UnsafeKey(f"unsafe_key: {relpath!r} has '..', '.' or empty path parts")
    if TEMP_MARK in relpath:
        raise UnsafeKey(f"unsafe_key: {relpath!r} contains the reserved marker {TEMP_MARK!r}")
    return relpath


class OutputDir:
    """A folder (local path or fsspec URI) that a batch job writes into, and nowhere else."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        if "://" not in uri:  # a local path: absolute, so workers (whose cwd differs) write here too
            uri = os.path.abspath(os.path.expanduser(uri))
        self.uri = uri.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, relpath: str) -> str:
        """The filesystem path of `relpath` inside the folder (checked with `safe_relpath`)."""
        return posixpath.join(self.root, safe_relpath(relpath))

    def url(self, relpath: str = "") -> str:
        """The URI a user would type for `relpath` inside the folder."""
        return f"{self.uri}/{relpath}" if relpath else self.uri

    def put(self, relpath: str, data: bytes) -> str:
        """Write `data` to `relpath` so that it appears whole or not at all; returns its URI."""
        with self.open_atomic(relpath) as handle:
            handle.write(data)
        return self.url(relpath)

    @contextmanager
    def open_atomic(self, relpath: str) -> Iterator[IO[bytes]]:
        """A binary file handle whose content becomes visible at `relpath` only when the block ends."""
        target = self.path(relpath)
        parent = posixpath.dirname(target)
        if self.is_local:
            self.fs.makedirs(parent, exist_ok=True)
            temp = posixpath.join(parent, f"{TEMP_MARK}{uuid.uuid4().hex}-{posixpath.basename(target)}")
            try:
                with self.fs.open(temp, "wb") as handle:
                    yield handle
                self.fs.mv(temp, target)  # os.replace: atomic on one filesystem
            except BaseException:
                if self.fs.exists(temp):
                    self.fs.rm(temp)
                raise
        else:
            # Object stores: the object appears only when the (single or multipart) upload completes.
            with self.fs.open(target, "wb") as handle:
                yield handle

    def create(self, relpath: str, data: bytes) -> bool:
        """Write `data` to `relpath` only if nothing is there, whole or not at all; returns whether it wrote.

        Of several writers at the same instant exactly one writes where `creates_exclusively`: a
        local disk (a hard link from a temporary file, which fails when the name exists) and S3 (a
        PUT with `If-None-Match: *`). Other stores look, then write.
        """
        target = self.path(relpath)
        if not self.is_local:
            try:
                self.fs.pipe_file(target, data, mode="create")
            except FileExistsError:
                return False
            except OSError as err:
                if _condition_refused(err):  # a conditional PUT in flight for the same key
                    return False
                raise
            return True
        parent = posixpath.dirname(target)
        self.fs.makedirs(parent, exist_ok=True)
        temp = posixpath.join(parent, f"{TEMP_MARK}{uuid.uuid4().hex}-{posixpath.basename(target)}")
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            os.link(temp, target)  # fails when `target` exists; readers never see half a file
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return _create_excl(target, data)  # a filesystem without hard links (FAT, some FUSE mounts)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return True

    @property
    def creates_exclusively(self) -> bool:
        """Whether `create` can never write twice (local disks, S3); elsewhere two writers may both write."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        return self.is_local or "s3" in protocols

    def exists(self, relpath: str) -> bool:
        """Whether `relpath` exists."""
        return bool(self.fs.exists(self.path(relpath)))

    def read(self, relpath: str) -> bytes:
        """The bytes of `relpath`."""
        return bytes(self.fs.cat_file(self.path(relpath)))

    def list(self, reldir: str) -> list[str]:
        """Names of the files directly inside `reldir` now (empty if it does not exist)."""
        folder = self.path(reldir) if reldir else self.root
        self.fs.invalidate_cache(
            folder
        )  # s3fs answers from earlier listings; another job may have written since
        try:
            entries = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in entries)

    def remove(self, relpath: str) -> None:
        """Delete `relpath` if it exists."""
        target = self.path(relpath)
        if self.fs.exists(target):
            self.fs.rm(target)

    def remove_tree(self, relpath: str) -> None:
        """Delete the file or folder `relpath` if it exists."""
        target = self.path(relpath)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)

    def is_file(self) -> bool:
        """Whether the folder's own URI names an existing file (a mistyped --out)."""
        try:
            return bool(self.fs.isfile(self.root))
        except (FileNotFoundError, OSError):
            return False

    def remove_leftovers(self) -> int:
        """Delete temporary files of interrupted writes anywhere under the folder; returns how many."""
        if not self.is_local or not self.fs.exists(self.root):
            return 0  # object stores never show a partial upload
        leftovers = [p for p in self.fs.find(self.root) if TEMP_MARK in posixpath.basename(p)]
        for path in leftovers:
            self.fs.rm(path)
        return len(leftovers)


def _create_excl(path: str, data: bytes) -> bool:
    """`OutputDir.create` where hard links are missing: O_EXCL, so the file is briefly empty."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def _condition_refused(err: OSError) -> bool:
    """Whether an object store refused a conditional write: 412 PreconditionFailed without the
    condition named (which s3fs turns into FileExistsError), or 409 ConditionalRequestConflict."""
    response = getattr(err.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")
