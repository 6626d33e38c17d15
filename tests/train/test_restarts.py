"""How `raeflow train` treats a failed Ray Train run, without a cluster: a lost node restarts from the
latest checkpoint (up to --max-node-losses), a failed worker only with --max-failures, a restart that
finds no room within --node-wait ends in one line, and metrics.jsonl keeps each epoch once.

The trainer itself is replaced by a stand-in whose `fit` raises the errors Ray Train raises; the
multi-node runs that produce them for real are in tests/faults/test_preempted_training.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import ray.train
from ray.exceptions import RayActorError
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError, WorkerHealthCheckFailedError

from raeflow.errors import ConfigError, JobError
from raeflow.train import trainer
from raeflow.train.checkpoints import CHECKPOINTS_DIR
from raeflow.train.config import TrainConfig
from raeflow.train.metrics_log import MetricsLog
from raeflow.train.restarts import (
    SNAPSHOT_FILE,
    START_TIMEOUT_ENV,
    Restarts,
    checkpoint_epoch,
    classify,
    failure_line,
)

NODE_DIED = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: RayTrainWorker\n"
    "\tip: 10.0.0.7\nThe actor died because its node has died. Node Id: 4f2a\n"
    "\tthe actor's node was terminated unexpectedly: health check failed"
)
PROCESS_DIED = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: RayTrainWorker\n"
    "\tip: 10.0.0.7\nWorker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits"
)


def _worker_group_error(rank_1_error: str) -> ray.train.WorkerGroupError:
    """What `fit` raises when rank 1's poll found its actor dead and rank 0 lost its peer."""
    dead = WorkerHealthCheckFailedError(
        "A worker health check failed.", failure=RayActorError("ffff", rank_1_error)
    )
    peer = RuntimeError("[gloo] Connection closed by peer [10.0.0.7]:1234")
    return ray.train.WorkerGroupError("Training failed", {0: peer, 1: dead})


def _config(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(data="builtin:digits", model="conv", out=str(tmp_path), workers=2, **overrides)


def test_a_worker_that_died_with_its_node_is_a_node_loss_and_a_crash_is_not() -> None:
    node = _worker_group_error(NODE_DIED)
    assert classify(node, failure_line(node)).kind == "node"
    assert classify(node, failure_line(node)).what == "rank 1's node (10.0.0.7)"
    crash = _worker_group_error(PROCESS_DIED)
    assert (classify(crash, failure_line(crash)).kind, classify(crash, failure_line(crash)).what) == (
        "worker",
        "rank 1",
    )
    controller = ray.train.ControllerError(RuntimeError("state actor unreachable"))
    assert classify(controller, failure_line(controller)).kind == "other"


def test_budgets_count_node_losses_and_worker_failures_apart(tmp_path: Path) -> None:
    node = classify(_worker_group_error(NODE_DIED), "")
    crash = classify(_worker_group_error(PROCESS_DIED), "")
    restarts = Restarts(_config(tmp_path, max_node_losses=1))
    assert restarts.allows(node) and not restarts.allows(crash)  # --max-failures 0 by default
    restarts.record(node, epoch=2, resume_epoch=1)
    assert not restarts.allows(node)
    assert restarts.lines == [
        "resumed after losing rank 1's node (10.0.0.7) in epoch 2, from the checkpoint after epoch 1"
    ]
    forever = Restarts(_config(tmp_path, max_node_losses=-1, max_failures=1))
    for _ in range(20):
        assert forever.allows(node)
        forever.record(node, epoch=3, resume_epoch=2)
    assert forever.allows(crash)
    forever.record(crash, epoch=4, resume_epoch=0)
    assert not forever.allows(crash)
    assert forever.lines[-1] == "resumed after rank 1 failed in epoch 4, from the start (no checkpoint)"


def test_new_settings_are_checked_and_offered_by_the_cli() -> None:
    from raeflow.commands.train import train_command

    with pytest.raises(ConfigError, match="--max-node-losses"):
        TrainConfig(data="d", model="conv", out="o", max_node_losses=-2).validate()
    with pytest.raises(ConfigError, match="--node-wait"):
        TrainConfig(data="d", model="conv", out="o", node_wait=0).validate()
    args = ["--data", "d", "--model", "conv", "--out", "o", "--max-node-losses", "-1", "--node-wait", "30"]
    params = train_command.make_context("train", args).params
    assert (params["max_node_losses"], params["node_wait"]) == (-1, 30.0)


def test_checkpoint_epoch_reads_what_ray_train_registered(tmp_path: Path) -> None:
    assert checkpoint_epoch(str(tmp_path)) == 0
    (tmp_path / CHECKPOINTS_DIR).mkdir()
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint-epoch-0003"}}
    (tmp_path / CHECKPOINTS_DIR / SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    assert checkpoint_epoch(str(tmp_path)) == 3


class _FakeTrainer:
    """Stands in for TorchTrainer: each `fit` pops the next outcome (an error to raise, or a callable
    standing for the epochs this attempt trains)."""

    def __init__(self, outcomes: list, seen: list) -> None:
        self.outcomes, self.seen = outcomes, seen

    def fit(self) -> None:
        self.seen.append(os.environ.get(START_TIMEOUT_ENV))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        outcome()


def _fit(
    tmp_path: Path, outcomes: list, monkeypatch, gone: str | None = None, **overrides
) -> tuple[list[str], list, list[str]]:
    """Run `trainer._fit_with_restarts` over fake trainers (`gone`: what `gone_node` finds after a
    failure); returns its lines, each attempt's `restarted` flag and start timeout, and what the
    console showed."""
    seen: list = []
    made: list[bool] = []
    monkeypatch.setattr(trainer, "alive_nodes", lambda: {"4f2a91c3e0": "10.0.0.7", "head": "10.0.0.1"})
    monkeypatch.setattr(trainer, "gone_node", lambda before: gone)

    def make(config, source, plan, cpus, *, restarted):
        made.append(restarted)
        return _FakeTrainer(outcomes, seen)

    monkeypatch.setattr(trainer, "_make_trainer", make)
    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    shown: list[str] = []
    config = _config(tmp_path, epochs=3, node_wait=45, **overrides)
    with trainer._EpochPrinter(MetricsLog(config.out), shown.append) as printer:
        lines = trainer._fit_with_restarts(config, None, None, printer)  # type: ignore[arg-type]
    return lines, list(zip(made, seen, strict=True)), shown


def _epochs(log: MetricsLog, *epochs: int, restored: int = 0) -> None:
    for epoch in epochs:
        record = {"epoch": epoch, "epochs": 3, "restored_from_epoch": restored, "train_loss": 0.1}
        log.append({**record, "val_loss": 0.1, "val_psnr": 20.0, "val_ssim": 0.5, "images_per_s": 100})


def test_a_lost_node_restarts_from_the_checkpoint_and_each_epoch_is_kept_once(
    tmp_path: Path, monkeypatch
) -> None:
    log = MetricsLog(str(tmp_path))
    (tmp_path / CHECKPOINTS_DIR).mkdir()
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint-epoch-0001"}}
    (tmp_path / CHECKPOINTS_DIR / SNAPSHOT_FILE).write_text(json.dumps(snapshot))

    def first_attempt() -> None:  # epochs 1 and 2 written, epoch 2's checkpoint never registered
        _epochs(log, 1, 2)
        raise _worker_group_error(NODE_DIED)

    def second_attempt() -> None:  # what loop.train_worker does on a restart from epoch 1
        log.keep_epochs_up_to(1)
        _epochs(log, 2, 3, restored=1)

    lines, attempts, shown = _fit(tmp_path, [first_attempt, second_attempt], monkeypatch)
    assert lines == [
        "resumed after losing rank 1's node (10.0.0.7) in epoch 3, from the checkpoint after epoch 1"
    ]
    assert attempts == [(False, None), (True, "45")]  # only the restart is bounded by --node-wait
    assert os.environ.get(START_TIMEOUT_ENV) is None  # and the setting does not outlive it
    assert [r["epoch"] for r in log.read()] == [1, 2, 3]
    assert [r["restored_from_epoch"] for r in log.read()] == [0, 1, 1]
    notice = [line for line in shown if line.startswith("lost rank 1's node")]
    assert notice == [
        "lost rank 1's node (10.0.0.7) in epoch 3; continuing from the checkpoint after epoch 1 once "
        "2 worker(s) fit (waiting up to 45 s)"
    ]
    assert [line.split()[1] for line in shown if line.startswith("epoch")] == ["1/3", "2/3", "2/3", "3/3"]


def test_a_restart_that_finds_no_room_fails_in_one_line(tmp_path: Path, monkeypatch) -> None:
    timeout = ray.train.ControllerError(WorkerGroupStartupTimeoutError(2))
    with pytest.raises(JobError) as failed:
        _fit(tmp_path, [_worker_group_error(NODE_DIED), timeout], monkeypatch, cpus_per_worker=1.0)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(
        "after losing rank 1's node (10.0.0.7) in epoch 1, from the start (no checkpoint)"
    )
    assert "no room for 2 worker(s) (1 CPU each) appeared within 45 s (--node-wait)" in message
    assert "rerun the same command" in message


def test_node_losses_past_the_budget_and_crashes_without_retries_fail_in_one_line(
    tmp_path, monkeypatch
) -> None:
    lost = [_worker_group_error(NODE_DIED), _worker_group_error(NODE_DIED)]
    with pytest.raises(JobError, match=r"^training failed \(.*\); rerun .*raise --max-node-losses"):
        _fit(tmp_path, lost, monkeypatch, max_node_losses=1)
    with pytest.raises(JobError, match=r"^training failed \(rank 1: .*raise --max-failures to retry"):
        _fit(tmp_path, [_worker_group_error(PROCESS_DIED)], monkeypatch)


def test_metrics_written_through_a_separate_file_survive_a_writer_that_dies(
    tmp_path: Path, monkeypatch
) -> None:
    log = MetricsLog(str(tmp_path))
    _epochs(log, 1, 2)

    def killed(*args) -> None:
        raise SystemExit("the node went away")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(SystemExit):
        _epochs(log, 3)
    assert [r["epoch"] for r in log.read()] == [1, 2]  # the previous file, whole


def test_a_worker_failure_while_its_node_stops_answering_is_a_node_loss(tmp_path: Path, monkeypatch) -> None:
    """Ray may report the dead worker before it gives up on the node: the driver asks the nodes."""
    outcomes = [_worker_group_error(PROCESS_DIED), lambda: None]
    lines, attempts, _ = _fit(tmp_path, outcomes, monkeypatch, gone="node 4f2a91c3 (10.0.0.7)")
    assert lines == [
        "resumed after losing node 4f2a91c3 (10.0.0.7) in epoch 1, from the start (no checkpoint)"
    ]
    assert [restarted for restarted, _ in attempts] == [False, True]


@pytest.mark.slow
def test_gone_node_names_a_node_ray_no_longer_lists(ray_session) -> None:
    from raeflow.train.restarts import alive_nodes, gone_node

    here = alive_nodes()
    assert gone_node(here, timeout=30) is None  # the session's one node answers (and is the driver's)
    missing = {"0" * 56: "10.9.9.9", **here}  # a node id Ray never had, as a node that vanished
    assert gone_node(missing, timeout=30) == f"node {'0' * 8} (10.9.9.9)"
