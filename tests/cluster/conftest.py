"""A real Ray head for the cluster tests: `ray start --head` with token authentication on.

The head gets its own temp dir, its own token file (through RAY_AUTH_TOKEN_PATH, so the shared
~/.ray/auth_token other Rays on this machine use is never read or written) and explicit ports
outside Ray's default worker port range (10002-19999) that other local Rays use. It is stopped by
terminating its process group: `ray stop` would kill every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY_WORKER_PORTS = range(10002, 20000)
CLIENT_SETTINGS = (
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_AUTH_MODE",
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
)
"""Variables that pick a Ray cluster or its token: the tests set them explicitly."""
HEAD_PORT_OPTIONS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
)


def free_port() -> int:
    """A free TCP port on loopback outside Ray's default worker port range."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RAY_WORKER_PORTS:
            return port


@dataclass
class Head:
    """A running head: its Jobs API address and the environments clients run with."""

    address: str
    token_file: Path
    empty_home: Path
    log: Path

    def auth_env(self, token: str | None = "file") -> dict[str, str | None]:
        """Auth settings of a client: the head's token (`file`), none (None), or the given token.

        Values of None unset the variable (as `click.testing.CliRunner(env=...)` reads them).
        """
        env: dict[str, str | None] = {
            "RAY_AUTH_TOKEN": None,
            "RAY_AUTH_TOKEN_PATH": None,
            "RAY_AUTH_MODE": None,
        }
        env["RAY_ADDRESS"] = env["RAY_API_SERVER_ADDRESS"] = None
        if token == "file":
            env["RAY_AUTH_TOKEN_PATH"] = str(self.token_file)
        elif token is None:
            env["HOME"] = str(self.empty_home)  # no ~/.ray/auth_token to fall back on
        else:
            env["RAY_AUTH_TOKEN"] = token
        return env

    def env(self, token: str | None = "file") -> dict[str, str]:
        """The whole environment of a client subprocess (see `auth_env`), with this venv on PATH."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER"))
        }
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update({k: v for k, v in self.auth_env(token).items() if v is not None})
        return env

    def auth_header(self) -> dict[str, str]:
        """The header that authenticates a raw HTTP request to this head."""
        return {"Authorization": f"Bearer {self.token_file.read_text()}"}

    @staticmethod
    def unused_address() -> str:
        """A Jobs API address where nothing listens."""
        return f"http://127.0.0.1:{free_port()}"


def _stop(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop the head: SIGTERM to `ray start` (it shuts its processes down in order), then SIGKILL
    whatever is left of its process group (raylet, GCS, dashboard, workers)."""
    process.terminate()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        process.poll()
        time.sleep(0.5)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """One token-auth Ray head (2 CPUs) for the module; its dashboard/Jobs API on 127.0.0.1."""
    root = Path(tempfile.mkdtemp(prefix="rf-head-", dir="/tmp"))  # short: Ray's socket paths are limited
    token_file = root / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    (root / "home").mkdir()
    ports = {option: free_port() for option in HEAD_PORT_OPTIONS}
    command = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1"]
    command += ["--dashboard-host=127.0.0.1"]
    command += [f"{option}={port}" for option, port in ports.items()]
    command += ["--num-cpus=2", f"--temp-dir={root / 'ray'}", "--disable-usage-stats", "--block"]
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER"))
    }
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token")
    env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    log = root / "head.log"
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=root
        )
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    auth = {"Authorization": f"Bearer {token_file.read_text()}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"ray start --head exited early:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{address}/api/jobs/", headers=auth, timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the head's Jobs API did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield Head(address=address, token_file=token_file, empty_home=root / "home", log=log)
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)
