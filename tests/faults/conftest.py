"""Fixtures for the fault scenarios: a flaky object store in front of the suite's moto server, and
the raeflow program run through it.

The program runs in a subprocess whose `AWS_ENDPOINT_URL` is the proxy, so the command, the
private Ray it starts and every worker of that Ray reach the store only through the faults. The
test process itself keeps the direct endpoint: inputs are put and outputs checked without faults.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.proxy import FaultyStore

RETRY_SETTINGS = ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
"""botocore's retry variables: left out of the program's environment, so what it uses is raeflow's own."""


@pytest.fixture(scope="module")
def flaky_store(s3_server: str) -> Iterator[FaultyStore]:
    """The issue's store: 10 % of requests answered 503 SlowDown / 500 InternalError, 5 % reset in
    the middle of a body; a test arms the one 30 s stall itself (`FaultyStore.stall`)."""
    store = FaultyStore(s3_server, error_rate=0.10, reset_rate=0.05, seed=20)
    yield store
    store.close()


def program_env(store_url: str, home: Path) -> dict[str, str]:
    """The environment of a raeflow program that reaches S3 through `store_url`, with no retry
    settings of its own: no botocore variables, no fsspec config, an empty AWS config file."""
    empty = home / "aws-config"
    empty.write_text("")
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in RETRY_SETTINGS and not name.startswith("FSSPEC")
    }
    env.update(AWS_ENDPOINT_URL=store_url, AWS_CONFIG_FILE=str(empty), FSSPEC_CONFIG_DIR=str(home))
    return env


Run = Callable[[list[str]], tuple[subprocess.CompletedProcess[str], Counter[str]]]


@pytest.fixture()
def through_store(flaky_store: FaultyStore, tmp_path: Path) -> Run:
    """Run `raeflow ARGS...` through the flaky store; returns the finished process and what the store
    did to its requests (`FaultyStore.counts` for this run only)."""

    def run(args: list[str]) -> tuple[subprocess.CompletedProcess[str], Counter[str]]:
        before = flaky_store.counts.copy()
        done = subprocess.run(
            [sys.executable, "-m", "raeflow.cli", *args],
            env=program_env(flaky_store.url, tmp_path),
            capture_output=True,
            text=True,
            timeout=600,
        )
        return done, flaky_store.counts - before

    return run
