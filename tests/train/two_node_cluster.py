"""A two-node Ray cluster on this machine, for the multi-node training test (run as a script).

Prints the cluster's address on the first line, keeps the cluster up until stdin closes, then
shuts it down. Each node has 2 CPUs and its own custom resource (`node_a`, `node_b`).

    python tests/train/two_node_cluster.py
"""

from __future__ import annotations

import sys

from ray.cluster_utils import Cluster


def main() -> None:
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 2, "resources": {"node_a": 1}, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, resources={"node_b": 1})
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
