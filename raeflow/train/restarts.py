"""Why a Ray Train run failed, and whether `run_training` starts it again from its latest checkpoint.

raeflow hands Ray Train no retries of its own (`FailureConfig(max_failures=0, max_preemption_failures=0)`):
the driver runs the trainer again instead, as rerunning the command would, so it knows each restart
(the summary says it resumed, and after what), counts a lost node apart from a failed worker, and
bounds the wait for room for the workers afterwards:

- a worker whose node went away (taken away, preempted, its raylet dead): `--max-node-losses`; Ray's
  error says so when it already knows, otherwise `gone_node` asks the nodes;
- a worker that failed on a node that is still there (a crash, an error): `--max-failures`;
- anything else (the controller's own errors): not restarted.

A restarted trainer that cannot place its workers within `--node-wait` seconds (the nodes left are too
few and none came back) fails with one line saying so. The first start waits as long as Ray does
(an autoscaling cluster may take minutes to add GPU nodes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec
import ray
import ray.train
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from raeflow.train.checkpoints import CHECKPOINTS_DIR
from raeflow.train.config import TrainConfig

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
"""Ray Train's limit on placing a worker group, read by the controller that `fit` starts."""
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
"""Ray Train's record of a run's checkpoints; its presence in `<out>/checkpoints/` means resumable."""
NODE_GONE = ("its node has died", "node was terminated")
"""What Ray says of an actor that died with its node (`ray.exceptions.ActorDiedError`)."""
PROBE_TIMEOUT_S = 90.0
"""How long a node may take to run a tiny task before it counts as gone (`gone_node`): Ray's own
health checks give up on an unreachable node after about a minute."""


@dataclass(frozen=True)
class Failure:
    """One failed attempt: what kind of failure, and who in words."""

    kind: str
    """`node` (a worker's node went away), `worker` (a worker failed on a live node) or `other`."""
    what: str
    """`rank 1's node (10.0.0.3)`, `rank 1`, or the failure in one line."""


def failure_line(err: Exception) -> str:
    """What went wrong on which rank, in one line, from a Ray Train failure."""
    failures = getattr(err, "worker_failures", None) or {}
    parts = []
    for rank, failure in sorted(failures.items()):
        lines = [line.strip() for line in str(failure).splitlines() if line.strip()]
        telling = next(
            (line for line in lines if "Error" in line or "died" in line), lines[0] if lines else ""
        )
        parts.append(f"rank {rank}: {type(failure).__name__}: {telling[:160]}")
    if parts:
        parts.sort(key=lambda part: "died" not in part)  # the rank that died first, its peers' echoes after
        return "; ".join(parts)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


def _node_address(text: str) -> str:
    found = re.search(r"\bip: (\S+)", text)
    return f" ({found.group(1)})" if found else ""


def classify(err: Exception, line: str) -> Failure:
    """Sort a `ray.train.TrainingFailedError` (`line`: it in one line) into node / worker / other."""
    if isinstance(err, ray.train.PreemptionError):
        return Failure("node", "a preempted node")
    if isinstance(err, ray.train.ControllerError):
        return Failure("other", line)
    failures = getattr(err, "worker_failures", None) or {}
    for rank, failure in sorted(failures.items()):
        cause = getattr(failure, "health_check_failure", failure)  # a failed poll wraps the actor's death
        text = str(cause)
        if getattr(cause, "preempted", False) or any(words in text for words in NODE_GONE):
            return Failure("node", f"rank {rank}'s node{_node_address(text)}")
    if failures:
        died = [rank for rank, failure in sorted(failures.items()) if "died" in str(failure)]
        return Failure("worker", f"rank {(died or sorted(failures))[0]}")
    return Failure("other", line)


def alive_nodes() -> dict[str, str]:
    """The cluster's live nodes: node id -> address."""
    return {node["NodeID"]: node.get("NodeManagerAddress", "?") for node in ray.nodes() if node.get("Alive")}


@ray.remote(num_cpus=0)
def _answer() -> bool:
    return True


def gone_node(before: dict[str, str], timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """A node of `before` (the live nodes when the attempt started) that is gone now, in words.

    Ray may not have marked it dead yet: a worker dies with its raylet at once, but Ray takes seconds
    to a minute of failed health checks to give up on the node. So each other node is asked to run a
    tiny task: a live one answers in a moment, a dead or unreachable one does not within `timeout`.
    """
    here = ray.get_runtime_context().get_node_id()
    now = alive_nodes()
    marked = [node for node in before if node not in now and node != here]
    if marked:
        return f"node {marked[0][:8]} ({before[marked[0]]})"
    probes = {
        _answer.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(): node
        for node in before
        if node != here
    }
    if not probes:
        return None
    ready, waiting = ray.wait(list(probes), num_returns=len(probes), timeout=timeout)
    for ref in waiting:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    answered = set()
    for ref in ready:
        with contextlib.suppress(Exception):  # a task on a node Ray marked dead fails
            ray.get(ref)
            answered.add(probes[ref])
    silent = [node for node in probes.values() if node not in answered]
    return f"node {silent[0][:8]} ({before[silent[0]]})" if silent else None


def is_start_timeout(err: Exception) -> bool:
    """Whether Ray Train gave up placing the workers (no room for them within the start timeout)."""
    cause = getattr(err, "controller_failure", None)
    return type(cause).__name__ == "WorkerGroupStartupTimeoutError"


def checkpoint_epoch(out: str) -> int:
    """The epoch of the latest checkpoint Ray Train registered under `out` (0: none yet)."""
    fs, path = fsspec.core.url_to_fs(f"{out.rstrip('/')}/{CHECKPOINTS_DIR}/{SNAPSHOT_FILE}")
    with contextlib.suppress(FileNotFoundError):
        latest = json.loads(fs.cat_file(path)).get("latest_checkpoint_result") or {}
        found = re.search(r"epoch-(\d+)$", latest.get("checkpoint_dir_name") or "")
        return int(found.group(1)) if found else 0
    return 0


@contextlib.contextmanager
def start_timeout(seconds: float | None) -> Iterator[None]:
    """Ray Train's worker-group start timeout set to `seconds` while the context lasts (None: as is)."""
    if seconds is None:
        yield
        return
    before = os.environ.get(START_TIMEOUT_ENV)
    os.environ[START_TIMEOUT_ENV] = str(seconds)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(START_TIMEOUT_ENV, None)
        else:
            os.environ[START_TIMEOUT_ENV] = before


@dataclass
class Restarts:
    """The restarts of one `raeflow train` command: the budgets left and a line for each."""

    config: TrainConfig
    lines: list[str] = field(default_factory=list)
    """`resumed after losing rank 1's node (10.0.0.3) in epoch 2, from the checkpoint after epoch 1`."""
    used: dict[str, int] = field(default_factory=lambda: {"node": 0, "worker": 0})

    def allows(self, failure: Failure) -> bool:
        """Whether this failure's budget (--max-node-losses, --max-failures; -1: no limit) has room."""
        limit = {"node": self.config.max_node_losses, "worker": self.config.max_failures}.get(failure.kind)
        return limit is not None and (limit == -1 or self.used[failure.kind] < limit)

    def record(self, failure: Failure, epoch: int, resume_epoch: int) -> str:
        """Count a restart; returns the line to show now (the summary's line is kept in `lines`)."""
        self.used[failure.kind] += 1
        lost = f"losing {failure.what}" if failure.kind == "node" else f"{failure.what} failed"
        start = f"the checkpoint after epoch {resume_epoch}" if resume_epoch else "the start (no checkpoint)"
        self.lines.append(f"resumed after {lost} in epoch {epoch}, from {start}")
        event = f"lost {failure.what}" if failure.kind == "node" else f"{failure.what} failed"
        return (
            f"{event} in epoch {epoch}; continuing from {start} once {self.config.workers} worker(s) "
            f"fit (waiting up to {self.config.node_wait:g} s)"
        )

    def no_room(self, cpus: float) -> str:
        """The error when a restarted trainer found no room for its workers (`cpus` CPUs each) in time."""
        each = f"{cpus:g} CPU{'s' if cpus != 1 else ''}" + (" and 1 GPU" if self.config.gpu else "")
        return (
            f"{self.lines[-1].replace('resumed after', 'after')}: no room for {self.config.workers} "
            f"worker(s) ({each} each) appeared within {self.config.node_wait:g} s (--node-wait); add a "
            "node or lower --workers, then rerun the same command to continue from its latest checkpoint"
        )
