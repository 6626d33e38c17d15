"""Two `raeflow embed` commands on one --out: one runs, the other is refused in one line naming it,
and the output holds every key once; a lease left by a killed job is taken over, with a line.

Local --out: both jobs join the test session's Ray (two jobs, one cluster). S3 --out: each job
starts its own private Ray (two clusters, one bucket). The lease logic itself is tested without
Ray in tests/batch/test_lease.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from raeflow.batch.lease import LEASE_FILE, STALE_ENV
from raeflow.batch.runner import CRASH_HOOK
from raeflow.models import create_model, save_bundle
from tests.batch.inputs import write_digit_parquet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained 1x28x28 conv autoencoder."""
    return save_bundle(create_model("conv", channels=[4, 4]), str(tmp_path_factory.mktemp("conv") / "model"))


@pytest.fixture(params=["local", "s3"])
def where(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture()
def out(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return str(tmp_path / "emb") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/emb"


@pytest.fixture()
def cluster_args(where: str, request: pytest.FixtureRequest) -> list[str]:
    """Local: join the session's Ray. S3: none, so each command starts a Ray of its own."""
    if where == "s3":
        return []
    request.getfixturevalue("ray_session")
    import ray

    return ["--address", ray.get_runtime_context().gcs_address]


@pytest.fixture()
def inputs(tmp_path: Path, mnist_digits) -> tuple[str, list[str]]:
    """Six Parquet files of 40 digits: the input folder and its keys in order."""
    digits, labels = mnist_digits
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=6, rows=40)
    return str(tmp_path / "in"), keys


def _embed(raeflow_cli: list[str], data: str, bundle: str, out: str, cluster_args: list[str]) -> list[str]:
    return [*raeflow_cli, "embed", "--data", data, "--model", bundle, "--out", out, "--quiet", *cluster_args]


def _start(command: list[str], **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env}
    )


def _fs(out: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()  # s3fs keeps listings of earlier calls
    return fs, root.rstrip("/")


def _lease(out: str) -> dict | None:
    fs, root = _fs(out)
    try:
        return json.loads(fs.cat_file(f"{root}/{LEASE_FILE}"))
    except FileNotFoundError:
        return None


def _wait_for_lease(out: str, job: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        held = _lease(out)
        if held is not None:
            return held
        time.sleep(0.1)
    raise AssertionError(f"the job took no lease (exit code {job.poll()})")


def _assert_every_key_once(out: str, keys: list[str]) -> None:
    fs, root = _fs(out)
    names = sorted(path[len(root) + 1 :] for path in fs.find(root))
    assert "_SUCCESS" in names and LEASE_FILE not in names
    assert not [name for name in names if ".raeflow-tmp-" in name]
    embedded: list[str] = []
    for name in (n for n in names if n.startswith("part-")):
        with fs.open(f"{root}/{name}", "rb") as handle:
            embedded += pq.read_table(handle).column("key").to_pylist()
    assert embedded == keys  # every key once, in input order


def _refusal(stderr: str, out: str) -> str:
    """The refused job's one line; it must name the folder."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: --out {out} is being written by embed job "), lines[0]
    return lines[0]


def test_two_embeds_started_at_once_one_runs_the_other_is_refused(
    raeflow_cli, bundle, inputs, out, cluster_args
) -> None:
    data, keys = inputs
    command = _embed(raeflow_cli, data, bundle, out, cluster_args)
    jobs = [_start(command), _start(command)]
    said = [job.communicate(timeout=600) for job in jobs]
    codes = [job.returncode for job in jobs]
    assert sorted(codes) == [0, 2], said
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    line = _refusal(said[loser][1], out)
    assert f" on {socket.gethostname()} (pid {jobs[winner].pid}), started " in line
    assert f"{len(keys)} images in, {len(keys)} out, 0 rejected" in said[winner][0]
    _assert_every_key_once(out, keys)


def test_an_embed_started_beside_a_running_one_is_refused_and_takes_nothing(
    raeflow_cli, bundle, inputs, out, cluster_args
) -> None:
    data, keys = inputs
    command = _embed(raeflow_cli, data, bundle, out, cluster_args)
    running = _start(command)
    try:
        held = _wait_for_lease(out, running)
        running.send_signal(signal.SIGSTOP)  # hold it mid-job, lease taken, while the second one starts
        second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        running.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    line = _refusal(second.stderr, out)
    assert f"embed job {held['job']} on {socket.gethostname()} (pid {running.pid}), started " in line
    assert "wait for it to end or write to another --out" in line
    _, stderr = running.communicate(timeout=600)
    assert running.returncode == 0, stderr[-3000:]
    _assert_every_key_once(out, keys)


@pytest.mark.parametrize("machine", ["this", "another"])
def test_the_lease_of_a_killed_embed_is_taken_over_with_a_line(
    raeflow_cli, bundle, inputs, out, cluster_args, machine
) -> None:
    data, keys = inputs
    command = _embed(raeflow_cli, data, bundle, out, cluster_args)
    killed = _start(command, **{CRASH_HOOK: "2"})
    _, stderr = killed.communicate(timeout=600)
    assert killed.returncode == 3, stderr[-3000:]  # died while committing its third shard
    left = _lease(out)
    assert left is not None and left["pid"] == killed.pid  # nothing ran to remove it
    takeover_env: dict[str, str] = {}
    if machine == "this":
        reason = f"its process {left['pid']} on this machine is gone"
        holder = f"embed job {left['job']} on {socket.gethostname()} (pid {left['pid']})"
    else:
        # The same lease as if that driver had run on another machine (another cluster's head):
        # nothing here can tell whether it runs, so only the lease's age lets the next job in.
        fs, root = _fs(out)
        fs.pipe_file(
            f"{root}/{LEASE_FILE}", json.dumps({**left, "host": "node-b", "machine": "other"}).encode()
        )
        moved = time.monotonic()
        refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2
        assert f"embed job {left['job']} on node-b (pid {left['pid']})" in _refusal(refused.stderr, out)
        time.sleep(max(0.0, 6 - (time.monotonic() - moved)))
        takeover_env = {STALE_ENV: "5"}
        reason = "its lease was last renewed "
        holder = f"embed job {left['job']} on node-b (pid {left['pid']})"
    rerun = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **takeover_env})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    said = [line for line in rerun.stderr.splitlines() if "took over" in line]
    assert len(said) == 1, rerun.stderr  # printed even with --quiet
    assert said[0].startswith(f"[embed] took over --out {out} from {holder}, started "), said[0]
    assert reason in said[0] and said[0].endswith(
        "so it was killed or lost; its unfinished shards are redone"
    )
    assert "2 already done" in rerun.stdout
    _assert_every_key_once(out, keys)


def test_an_embed_stopped_with_ctrl_c_leaves_no_lease(raeflow_cli, bundle, inputs, tmp_path, request) -> None:
    request.getfixturevalue("ray_session")
    import ray

    data, keys = inputs
    out = str(tmp_path / "emb")
    command = _embed(raeflow_cli, data, bundle, out, ["--address", ray.get_runtime_context().gcs_address])
    job = _start(command)
    _wait_for_lease(out, job)
    job.send_signal(signal.SIGINT)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 130, stderr[-3000:]  # stopped within 0.1 s of taking the lease, mid-job
    assert _lease(out) is None
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "took over" not in rerun.stderr, rerun.stderr[-3000:]
    _assert_every_key_once(out, keys)
