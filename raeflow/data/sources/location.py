"""Where a source's files are: one fsspec URI (local, file://, s3://, gs://, memory://), maybe a glob.

Importing this module also gives S3 access its retry settings (`STORE_RETRIES`, see
`set_store_retries`): every process that runs raeflow code reading or writing storage imports it
(through `raeflow.data.sources`), so the driver of every command, Ray Data's read tasks, the
predictor actors, the shard-finishing tasks and Ray Train's workers all get them, on a private Ray,
a joined cluster or in a submitted job alike. For the same reason it starts counting the store
requests that process retries (`raeflow.data.sources.retries`), which a job's summary shows.
"""

from __future__ import annotations

import asyncio
import configparser
import os
import posixpath
from collections.abc import MutableMapping
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from raeflow.data.sources.base import Shard
from raeflow.data.sources.retries import count_store_retries
from raeflow.errors import SourceError

GLOB_CHARS = "*?["
STORE_RETRIES = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "7"}
"""botocore's retry settings for S3 (s3fs's client), where the user has set none.

botocore's default (`legacy`, 5 attempts) loses about one call in 20,000 to a store that fails
15 % of requests (503 SlowDown, 500 InternalError, reset connections), and one lost call fails the
job. `standard` retries the same answers and connection errors with jittered backoff capped at
20 s, and its retry quota stops retrying a store that fails nearly every request. 7 attempts lose
about one call in a million there, while an endpoint where nothing listens is still reported
within a minute: the backoffs before the 7th attempt add up to at most 51 s (25 s on average).
s3fs retries SlowDown, cut bodies, closed connections and read timeouts again on top (5 tries).
docs/reliability.md has the faults this is tested against.
"""
_AWS_CONFIG_NAMES = {"AWS_RETRY_MODE": "retry_mode", "AWS_MAX_ATTEMPTS": "max_attempts"}
"""The name of each `STORE_RETRIES` setting in the AWS config file."""


def set_store_retries(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set `STORE_RETRIES` in the environment where neither it nor the AWS config file (any
    profile) sets them; returns what was set.

    botocore reads these variables whenever s3fs makes a client, and processes started from this
    one inherit them. The environment, not s3fs's `config_kwargs`: an explicit client config would
    override what a user sets in `AWS_MAX_ATTEMPTS` or `~/.aws/config`, and these stay the user's.
    """
    environ = os.environ if environ is None else environ
    in_config_file = _aws_config_names(environ)
    applied = {}
    for name, value in STORE_RETRIES.items():
        if name not in environ and _AWS_CONFIG_NAMES[name] not in in_config_file:
            environ[name] = applied[name] = value
    return applied


def _aws_config_names(environ: MutableMapping[str, str]) -> set[str]:
    """The setting names the AWS config file holds in any of its profiles (none if it is unreadable)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(os.path.expanduser(environ.get("AWS_CONFIG_FILE", "~/.aws/config")))
    except (configparser.Error, OSError, UnicodeDecodeError):
        return set()
    return {name for section in parser.sections() for name in parser[section]}


set_store_retries()
count_store_retries()


def is_glob(uri: str) -> bool:
    """Whether the URI is a pattern (`/data/*.parquet`, `s3://b/shards/*.tar`)."""
    return any(ch in uri for ch in GLOB_CHARS)


def filesystem(
    uri: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem serving `uri` and the path within it (no protocol, no trailing slash)."""
    try:
        fs, path = url_to_fs(uri, **(storage_options or {}))
    except (ImportError, ValueError, OSError) as exc:  # unknown protocol, missing driver (gcsfs, ...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SourceError(f"cannot open {uri}: {first_line}") from exc
    return fs, path.rstrip("/") or path


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path of `fs` as a full URI; local files stay plain absolute paths."""
    if "file" in _protocols(fs) or "local" in _protocols(fs):
        return path
    return fs.unstrip_protocol(path)


def glob_root(path: str) -> str:
    """The directory part of a glob before its first pattern character (keys are relative to it)."""
    cut = min(path.find(ch) for ch in GLOB_CHARS if ch in path)
    return path[:cut].rsplit("/", 1)[0]


def list_files(fs: fsspec.AbstractFileSystem, path: str, suffixes: tuple[str, ...]) -> list[str]:
    """Sorted files under a directory, a single file, or matching a glob, whose lower-cased name
    ends with one of `suffixes`."""
    return sorted(p for p in _found(fs, path) if p.lower().endswith(suffixes))


def list_file_sizes(
    fs: fsspec.AbstractFileSystem, path: str, suffixes: tuple[str, ...]
) -> list[tuple[str, int]]:
    """`list_files` with each file's size in bytes (0 where the store reports none). A folder or a
    glob costs no request per file: `find` and `glob` list sizes along with names."""
    found = _found(fs, path)
    if found == {path: {}}:  # a single file: the one place the listing said nothing about it
        found[path] = fs.info(path)
    return sorted(
        (p, int(info.get("size") or 0)) for p, info in found.items() if p.lower().endswith(suffixes)
    )


def _found(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, dict[str, Any]]:
    """Every file under a directory, or matching a glob, with what the listing says of it (`size`,
    ...); a single file with nothing said."""
    if is_glob(path):
        found: dict[str, dict[str, Any]] = {}
        for match, info in fs.glob(path, detail=True).items():
            found.update(fs.find(match, detail=True) if info.get("type") == "directory" else {match: info})
        return found
    if fs.isdir(path):
        # Like pyarrow datasets, skip `_`/`.` entries: raeflow's own `_rejected/`, `_manifest/`
        # beside the shards it wrote, `.ipynb_checkpoints/`, ...
        root = path.rstrip("/") + "/"
        return {
            p: info
            for p, info in fs.find(path, detail=True).items()
            if not any(c.startswith(("_", ".")) for c in p[len(root) :].split("/"))
        }
    return {path: {}}


def one_shard_per_file(fs: fsspec.AbstractFileSystem, path: str, files: list[str]) -> list[Shard]:
    """Shards of a source whose files are its shards (Parquet files, tars), named relative to its root."""
    if is_glob(path):
        root = glob_root(path)
    else:
        root = path if fs.isdir(path) else posixpath.dirname(path)
    return [
        Shard(index=i, name=posixpath.relpath(p, root) if root else p, paths=(to_uri(fs, p),))
        for i, p in enumerate(files)
    ]


def require_exists(fs: fsspec.AbstractFileSystem, path: str, uri: str, expected: str) -> None:
    """Raise `SourceError` saying what was expected where, when nothing is at `path` (or the store
    behind it refuses: `object_store.explain`)."""
    try:
        found = bool(fs.glob(path)) if is_glob(path) else fs.exists(path)
    except Exception as err:  # noqa: BLE001 - a store's refusal is one line; anything else is raised as it was
        from raeflow.data.sources.object_store import explain

        error = explain(uri, err)
        if error is None:
            raise
        raise error from None
    if not found and is_glob(path):
        raise SourceError(f"nothing matches {uri}; expected {expected} there")
    if not found:
        raise SourceError(f"no such file or folder: {uri}; expected {expected} there")


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def read_files(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[bytes | Exception]:
    """The bytes of each path (no protocol), or the error that reading it raised; remote
    filesystems fetch them concurrently. Paths are taken literally, never as globs."""
    if getattr(fs, "async_impl", False):
        from fsspec.asyn import sync

        async def fetch_all() -> list[bytes | BaseException]:
            return await asyncio.gather(*(fs._cat_file(p) for p in paths), return_exceptions=True)

        results = sync(fs.loop, fetch_all)
        return [r if isinstance(r, bytes | Exception) else RuntimeError(repr(r)) for r in results]
    contents: list[bytes | Exception] = []
    for p in paths:
        try:
            contents.append(fs.cat_file(p))
        except OSError as exc:
            contents.append(exc)
    return contents
