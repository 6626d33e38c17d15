"""Find the token of a Ray cluster that has token authentication on, the way Ray's own tools do.

Ray (>= 2.52) looks for the token in this order: the `RAY_AUTH_TOKEN` variable, the file named by
`RAY_AUTH_TOKEN_PATH` (an unreadable or empty file is an error, not a fall-through), then
`~/.ray/auth_token`. The head sends `401` for a request without a token and `403` for a wrong one.

Unlike Ray's CLI, raeflow sends a token it finds even when `RAY_AUTH_MODE=token` is not set in
the client's environment: a head without authentication ignores it, a head with it needs it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from raeflow.errors import ConfigError

TOKEN_VARIABLE = "RAY_AUTH_TOKEN"
"""Environment variable holding the token itself."""
TOKEN_PATH_VARIABLE = "RAY_AUTH_TOKEN_PATH"
"""Environment variable naming a file that holds the token."""
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"
"""Where `ray get-auth-token --generate` and a token-auth head write the token, under $HOME."""

HOW_TO_GET_A_TOKEN = (
    f"set {TOKEN_VARIABLE}, point {TOKEN_PATH_VARIABLE} at a token file, or copy the head's "
    "~/.ray/auth_token to this machine (`ray get-auth-token` on the head prints it)"
)


@dataclass(frozen=True)
class ClusterToken:
    """A token for a Ray cluster and where it was found."""

    value: str
    """The token itself (a secret: never printed)."""
    origin: str
    """Where it came from, for messages: `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH=...`, `~/.ray/auth_token`."""

    def http_headers(self) -> dict[str, str]:
        """The header that authenticates a request to the dashboard and the Jobs API."""
        return {"Authorization": f"Bearer {self.value}"}


def find_token(environ: Mapping[str, str] | None = None, home: Path | None = None) -> ClusterToken | None:
    """The token Ray's tools would use (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), or None.

    Raises `ConfigError` when RAY_AUTH_TOKEN_PATH names a file that is missing, unreadable or empty.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(TOKEN_VARIABLE, "").strip()
    if value:
        return ClusterToken(value, TOKEN_VARIABLE)
    path_setting = environ.get(TOKEN_PATH_VARIABLE, "")
    if path_setting:
        path = Path(path_setting).expanduser()
        origin = f"{TOKEN_PATH_VARIABLE}={path}"
        try:
            value = path.read_text().strip()
        except OSError as err:
            raise ConfigError(f"{origin} cannot be read ({err.strerror}): fix the path or unset it") from None
        if not value:
            raise ConfigError(f"{origin} is empty: put the cluster's token in it or unset it")
        return ClusterToken(value, origin)
    default_path = (Path.home() if home is None else home) / DEFAULT_TOKEN_FILE
    try:
        value = default_path.read_text().strip()
    except OSError:
        return None
    return ClusterToken(value, "~/.ray/auth_token") if value else None
