"""Where a job reads and writes, compared as resolved URIs (not as the strings a user typed).

`data/`, `./data`, `/home/me/data` and `file:///home/me/data` are one input, so a rerun from
another folder or with an absolute path is the same job; and an output folder inside the input
would be read back as input by the next job, so it is refused.
"""

from __future__ import annotations

import os
import re

from raeflow.errors import ConfigError

_GLOB = re.compile(r"[*?\[]")


def resolved_uri(uri: str) -> str:
    """`uri` in one canonical form: local paths absolute (symlinks resolved), no trailing slash."""
    if uri.startswith("builtin:"):
        return uri
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if "://" in uri:
        return uri.rstrip("/")
    return os.path.realpath(os.path.expanduser(uri))


def _folder_of(uri: str) -> str:
    """The folder a (possibly globbed) input URI reads from."""
    match = _GLOB.search(uri)
    if match is None:
        return uri
    return uri[: match.start()].rsplit("/", 1)[0]


def check_out_outside_data(data: str, out: str) -> None:
    """Raise `ConfigError` when the output folder `out` is (inside) the input `data`."""
    if data.startswith("builtin:"):
        return
    source = resolved_uri(_folder_of(data))
    target = resolved_uri(out)
    if target == source or target.startswith(source.rstrip("/") + "/"):
        raise ConfigError(
            f"--out {out} is inside --data {data}: the next job would read the outputs as inputs; "
            "write to a folder outside the input"
        )
