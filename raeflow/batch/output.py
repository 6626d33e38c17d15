"""The output folder of a batch job: atomic writes, keys that cannot escape it, leftover cleanup.

Every file a job writes goes through `OutputDir.put`, which makes it appear whole or not at all:
on a local disk it is written to a temporary name next to the target and renamed; on an object
store it is one PUT (or one multipart upload, which also appears only when complete). A rerun
calls `remove_leftovers` to delete temporary files an interrupted run left behind. `OutputDir.create`
writes a file only where none is (the job's lease, `raeflow.batch.lease`).

A full disk (or an exceeded quota) while writing is an `OSError` naming the file it was writing
under the folder (`no_space` finds it behind the wrappers Ray puts around a worker's exception),
and the temporary file is gone: the job says so in one line (`no_space_error`), and a rerun once
space is freed resumes it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from raeflow.errors import JobError

TEMP_MARK = ".raeflow-tmp-"
"""Part of every temporary file name; anything carrying it is a leftover of an interrupted write."""
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""A full disk and an exceeded disk quota: the errors a rerun after freeing space gets past."""


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
                with self._naming_no_space(relpath), self.fs.open(temp, "wb") as handle:
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
            with self._naming_no_space(relpath), open(temp, "wb") as handle:
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

    @contextmanager
    def _naming_no_space(self, relpath: str) -> Iterator[None]:
        """Re-raise a full disk's error (raised by a write, or the close that flushes) naming `relpath`
        under the folder instead of its temporary name, so the job's one line can say what it wrote."""
        try:
            yield
        except OSError as err:
            if err.errno not in NO_SPACE_ERRNOS:
                raise
            raise OSError(err.errno, os.strerror(err.errno), self.url(relpath)) from err

    def no_space_error(self, found: NoSpace, finished: str = "") -> JobError:
        """The one line of a job stopped by a full disk: where, what it was writing, how to go on."""
        inside = found.path.startswith(self.uri + "/")
        where = found.path if found.path and not inside else f"--out {self.uri}"
        notes = ["disk quota exceeded"] if found.quota else []
        if inside:
            notes.append(f"writing {found.path[len(self.uri) + 1 :]}")
        elif not found.path:
            notes.append("or on a disk a worker writes to: the error named no file")
        detail = f" ({'; '.join(notes)})" if notes else ""
        done = f"; {finished}" if finished else ""
        return JobError(
            f"no space left on {where}{detail}{done}; free space and rerun: finished shards are kept"
        )

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


@dataclass(frozen=True)
class NoSpace:
    """A write that failed because its disk was full (or the user's quota used up)."""

    quota: bool
    """Whether it was the user's disk quota (EDQUOT) rather than the disk itself (ENOSPC)."""
    path: str
    """The file it was writing (the URI under the output folder for `OutputDir` writes), or ''."""


_ERRNO_TEXT = re.compile(r"\[Errno (\d+)\] [^:\n]+?(?:: '([^'\n]*)')?$", re.MULTILINE)
"""How an `OSError` reads in a worker's traceback (the only trace of it Ray Data's wrappers keep)."""


def no_space(err: BaseException) -> NoSpace | None:
    """The full disk behind `err`, if that is what it is: `err` itself, the exceptions it was raised
    from, the cause a Ray task error carries, or an `OSError` quoted in a worker's traceback (Ray
    Data wraps an actor's exception in one whose cause does not survive the trip to the driver)."""
    for exc in exception_chain(err):
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:  # None on Ray's dual-class copies
            return NoSpace(exc.errno == errno.EDQUOT, str(exc.filename or ""))
        if "traceback_str" in exc.__dict__ or type(exc).__name__.startswith("RayTaskError"):
            quoted = _quoted_no_space(str(exc))
            if quoted is not None:
                return quoted
    return None


def exception_chain(err: BaseException) -> Iterator[BaseException]:
    """`err`, what it was raised from (or during), and the cause a Ray task error carries, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        yield exc
        todo += [exc.__cause__, None if exc.__suppress_context__ else exc.__context__]
        cause = exc.__dict__.get("cause")  # Ray's RayTaskError (and its dual-class instances)
        if isinstance(cause, BaseException):
            todo.append(cause)


def _quoted_no_space(text: str) -> NoSpace | None:
    """The last full disk quoted in `text`: in a chained traceback, `OutputDir`'s error naming the
    file comes after the system's, which names the temporary file."""
    quoted = [
        NoSpace(int(m.group(1)) == errno.EDQUOT, m.group(2) or "")
        for m in _ERRNO_TEXT.finditer(text)
        if int(m.group(1)) in NO_SPACE_ERRNOS
    ]
    return quoted[-1] if quoted else None


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
