"""How every raeflow command reaches Ray: one rule, one function.

The rule: `--address` (or `$RAY_ADDRESS`) joins that cluster; otherwise the command starts a
private local Ray of its own, even when another Ray (a `ray start` head, a second raeflow
command, a stale `/tmp/ray/ray_current_cluster`) is on the machine.
"""

from __future__ import annotations

import os


def connect_ray(address: str | None = None, *, num_cpus: int | None = None, verbose: bool = False) -> None:
    """Join the Ray at `address` (else `$RAY_ADDRESS`), or start a private local one; no-op when connected.

    `num_cpus` sizes a private local Ray only (a cluster that is joined keeps its own resources).
    `verbose` lets Ray's own log lines reach the console; otherwise they stay in Ray's log folder.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=verbose)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=verbose)
    ray.data.DataContext.get_current().enable_progress_bars = False


def require_gpus(num_gpus: int = 1) -> None:
    """Raise a one-line error at once when the connected Ray has no GPU and cannot get one."""
    import ray

    from raeflow.errors import ConfigError

    if ray.cluster_resources().get("GPU", 0) < num_gpus:
        raise ConfigError(f"--gpu asks for {num_gpus} GPU(s) but the Ray cluster has none; drop --gpu")
