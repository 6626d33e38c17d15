"""cluster.yaml passes the cluster launcher's own checks, keeps token auth on and exposes no port.

The checks are Ray's: `prepare_config` (what `ray up` does first: merge the AWS defaults, fill the
node types' limits) followed by `validate_config` (the JSON schema shipped in the ray package and
the launcher's consistency rules). Nothing here talks to AWS.
"""

from __future__ import annotations

import copy
import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """Run the config through the checks `ray up` runs before it contacts the cloud."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture()
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_validation(config: dict[str, Any]) -> None:
    prepared = ray_up_checks(config)
    types = prepared["available_node_types"]
    assert prepared["head_node_type"] in types
    workers = {name: spec for name, spec in types.items() if name != prepared["head_node_type"]}
    assert {spec["node_config"]["InstanceType"] for spec in workers.values()} >= {"g5.xlarge", "g5.12xlarge"}
    for spec in workers.values():
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= prepared["max_workers"]


@pytest.mark.parametrize(
    "breakage",
    ["no head node type", "head type not defined", "unknown field", "min above global max"],
)
def test_broken_copies_fail_rays_validation(config: dict[str, Any], breakage: str) -> None:
    broken = copy.deepcopy(config)
    if breakage == "no head node type":
        del broken["head_node_type"]
    elif breakage == "head type not defined":
        del broken["available_node_types"][broken["head_node_type"]]
    elif breakage == "unknown field":
        broken["available_node_types"]["gpu.small"]["gpus_please"] = 4
    else:
        broken["available_node_types"]["gpu.small"]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(Exception) as raised:
        ray_up_checks(broken)
    assert type(raised.value).__name__ in {"ValueError", "ValidationError"}


def test_every_node_starts_ray_with_token_auth_and_gets_the_token(config: dict[str, Any]) -> None:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [cmd for cmd in config[key] if "ray start" in cmd]
        assert starts and all("RAY_AUTH_MODE=token" in cmd for cmd in starts), key
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert not any("RAY_AUTH_MODE=disabled" in cmd for cmd in yaml.safe_dump(config).splitlines())


def test_nothing_exposes_the_dashboard_or_the_cluster_ports(config: dict[str, Any]) -> None:
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in yaml.safe_dump(config)
    assert "security_group" not in config["provider"]
    for spec in config["available_node_types"].values():
        assert "SecurityGroupIds" not in spec["node_config"]
        assert "NetworkInterfaces" not in spec["node_config"]


def rsync_excludes(pattern: str, relative_path: str) -> bool:
    """Whether an rsync `--exclude PATTERN` drops `relative_path` (the subset of rsync's rules used here)."""
    parts = relative_path.split("/")
    if pattern.startswith("/"):
        return fnmatch.fnmatch(parts[0], pattern[1:])
    name = pattern.removeprefix("**/")
    return any(fnmatch.fnmatch(part, name) for part in parts)


def test_every_node_installs_raeflow_with_the_pinned_constraints(config: dict[str, Any]) -> None:
    install = [cmd for cmd in config["setup_commands"] if "pip install" in cmd and "raeflow" in cmd]
    assert install and "-c ~/raeflow/constraints.txt" in install[-1]
    assert config["file_mounts"]["~/raeflow"] == "."
    shipped = [str(path.relative_to(REPO)) for path in REPO.glob("raeflow/**/*.py")]
    shipped += ["jobs/embed.py", "pyproject.toml", "constraints.txt"]
    for pattern in config["rsync_exclude"]:
        assert not [path for path in shipped if rsync_excludes(pattern, path)], pattern
    for left_behind in (".venv/bin/python", ".git/HEAD", "raeflow/__pycache__/cli.cpython-311.pyc"):
        assert any(rsync_excludes(pattern, left_behind) for pattern in config["rsync_exclude"]), left_behind


def test_decoding_has_cpu_only_spot_workers_that_the_read_tasks_prefer(config: dict[str, Any]) -> None:
    from raeflow.batch.runner import DECODE_LABEL

    prepared = ray_up_checks(config)
    types = prepared["available_node_types"]
    key, value = DECODE_LABEL
    decoders = [spec for spec in types.values() if spec.get("labels", {}).get(key) == value]
    assert decoders, "no worker type carries the label the read tasks prefer"
    for spec in decoders:
        assert not spec["node_config"]["InstanceType"].startswith(("g", "p"))  # CPU only
        assert spec["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
        assert spec["max_workers"] >= 1
    gpu_types = [spec for spec in types.values() if spec["node_config"]["InstanceType"].startswith("g5.x")]
    assert gpu_types and all(spec.get("labels", {}).get(key) != value for spec in gpu_types)
    assert (
        sum(spec["max_workers"] for name, spec in types.items() if name != prepared["head_node_type"])
        <= (prepared["max_workers"])
    )
