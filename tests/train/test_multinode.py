"""Training across two Ray nodes: one worker per node, both train, the bundle works.

The cluster (`ray.cluster_utils.Cluster`, two nodes on this machine) runs in its own process and
`raeflow train --address` in another, so the test session's shared Ray is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raeflow.models import load_bundle

CLUSTER_SCRIPT = Path(__file__).parent.parent / "two_node_cluster.py"


@pytest.mark.slow
def test_two_workers_on_two_nodes_train_one_model(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    cluster = subprocess.Popen(
        [sys.executable, str(CLUSTER_SCRIPT), "--cpus", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        address = cluster.stdout.readline().strip()
        assert address, "the two-node cluster did not start"
        out = tmp_path / "run"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "raeflow.cli",
                "train",
                "--address",
                address,
                "--data",
                "builtin:mnist",
                "--model",
                "conv",
                "--out",
                str(out),
                "--workers",
                "2",
                "--placement",
                "strict_spread",
                "--limit",
                "400",
                "--batch-size",
                "32",
                "--epochs",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
    finally:
        cluster.stdin.close()
        cluster.wait(timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "epoch 2/2" in done.stdout and f"model bundle: {out}/model" in done.stdout

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert record["workers"] == 2
        assert len(set(record["node_ids"])) == 2, "both workers ran on the same node"
        assert all(count > 0 for count in record["rank_train_images"]), "a rank trained on nothing"
        assert sum(record["rank_train_images"]) == record["train_images"]

    bundle = load_bundle(str(out / "model"))
    assert bundle.meta["training"]["workers"] == 2
    digits = torch.rand(4, 1, 28, 28)
    assert bundle.model(digits)["recon"].shape == digits.shape
