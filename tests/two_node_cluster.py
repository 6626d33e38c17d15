"""A two-node Ray cluster on this machine for the multi-node training and batch-job tests (run as a
script).

Prints the cluster's address on the first line, then obeys stdin: `remove` takes the worker node
away at once (a spot preemption) and prints `removed`, `add` adds a new worker node and prints
`added`; end of input shuts the cluster down.
Each node has `--cpus` CPUs (default 3: after one node is lost, the other still fits a batch job's
two predictor actors and a read task) and its own custom resource (`node_a`, `node_b`).
With `--gpu-worker` the cluster looks like cluster.yaml's: the head is a CPU-only decode node
(label raeflow.io/role=decode) and the worker declares one GPU (none is there: a job's `--gpu`
actors are placed on it and run their model on the CPU).

    python tests/two_node_cluster.py [--cpus N] [--gpu-worker]
"""

from __future__ import annotations

import argparse
import sys

from ray.cluster_utils import Cluster


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", type=int, default=3, help="CPUs of each node")
    parser.add_argument("--gpu-worker", action="store_true", help="decode-labelled head, worker with a GPU")
    args = parser.parse_args()
    cpus = args.cpus
    head_args = {"num_cpus": cpus, "resources": {"node_a": 1}, "include_dashboard": False}
    worker_args = {"num_cpus": cpus, "resources": {"node_b": 1}}
    if args.gpu_worker:
        head_args["labels"] = {"raeflow.io/role": "decode"}
        worker_args["num_gpus"] = 1
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head_args)
    worker = cluster.add_node(**worker_args)
    cluster.wait_for_nodes()
    print(cluster.address, flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "remove":
                cluster.remove_node(worker, allow_graceful=False)
                print("removed", flush=True)
            elif line.strip() == "add":
                worker = cluster.add_node(**worker_args)
                cluster.wait_for_nodes()
                print("added", flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
