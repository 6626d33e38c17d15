"""A Ray cluster on this machine with a head that runs no work and worker nodes that do, for the node
loss scenarios (run as a script, in its own process, so the test session's Ray is left alone).

Prints the cluster's address on the first line, then obeys stdin, one command a line, answering each
with one line:
- `remove NODE_ID`: takes that worker node away at once, as a spot preemption does (its raylet and
  every process on it killed), and answers `removed`; the head is never removed (`refused`);
- `add`: adds one more worker node like the others and answers `added` once it is up.
End of input shuts the cluster down.

The head has no CPUs, so training workers and data tasks run on the worker nodes only; the driver
and Ray Train's controller stay on the head.

    python tests/faults/worker_nodes.py [--workers 2] [--cpus 3]
"""

from __future__ import annotations

import argparse
import sys

from ray.cluster_utils import Cluster


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2, help="worker nodes to start with")
    parser.add_argument("--cpus", type=int, default=3, help="CPUs of each worker node")
    args = parser.parse_args()
    cluster = Cluster(
        initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    nodes = {}
    for _ in range(args.workers):
        node = cluster.add_node(num_cpus=args.cpus)
        nodes[node.node_id] = node
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    try:
        for line in sys.stdin:
            command, _, node_id = line.strip().partition(" ")
            if command == "remove" and node_id in nodes:
                cluster.remove_node(nodes.pop(node_id), allow_graceful=False)
                print("removed", flush=True)
            elif command == "remove":
                print("refused", flush=True)
            elif command == "add":
                node = cluster.add_node(num_cpus=args.cpus)
                nodes[node.node_id] = node
                cluster.wait_for_nodes()
                print("added", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
