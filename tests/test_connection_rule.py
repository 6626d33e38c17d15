"""The connection rule's decisions that need no second Ray: which address, which refusal, GPUs."""

from __future__ import annotations

import socket

import pytest

from raeflow.connection import check_reachable, require_gpus, resolve_address
from raeflow.errors import ClusterError


def test_address_then_ray_address_else_a_private_local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None
    assert resolve_address("local") is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address(None) == "10.0.0.5:6379"
    assert resolve_address("10.0.0.9:6379") == "10.0.0.9:6379"


def test_unreachable_or_wrong_addresses_are_refused_without_starting_ray(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    check_reachable(None)  # a private local Ray: nothing to reach
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    with pytest.raises(ClusterError, match=f"cannot reach a Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ClusterError, match="is a web address"):
        check_reachable("http://127.0.0.1:8265")
    with pytest.raises(ClusterError, match="must look like HOST:PORT"):
        check_reachable("headnode")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(ClusterError, match="cannot reach"):
        check_reachable(None)


def test_gpu_on_a_private_ray_without_gpus_is_refused_at_once(ray_session: None) -> None:
    import ray

    if ray.cluster_resources().get("GPU", 0):
        pytest.skip("this machine's test Ray has GPUs")
    with pytest.raises(ClusterError, match="no autoscaler to add any; drop --gpu"):
        require_gpus(1)
