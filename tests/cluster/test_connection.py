"""One connection rule for every command, a bounded wait, and a console with raeflow's lines only.

Commands run as the user runs them (subprocesses) while a `ray start --head` runs on loopback and
while other raeflow commands run: each starts a private local Ray unless --address / RAY_ADDRESS
names a cluster, so none of them joins the head or a stale `ray_current_cluster`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from raeflow.models import create_model, save_bundle

pytestmark = pytest.mark.slow

RAY_LINE = re.compile(
    r"\bINFO\b|\bWARNING\b|streaming_executor|core_worker|Execution plan|logging_progress|tqdm|"
    r"Started a local Ray instance|\(pid=|Running: |rpc_client"
)
"""What Ray's own console output looks like; none of it may reach a user without --verbose."""


def raeflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "raeflow.cli", *args]


def ray_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if RAY_LINE.search(line)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    model = create_model("conv", in_channels=1, height=8, width=8, channels=[4, 4])
    return str(save_bundle(model, tmp_path_factory.mktemp("bundle") / "model"))


@pytest.fixture()
def stale_temp_dir() -> str:
    """A Ray temp dir whose `ray_current_cluster` names a head that was killed, not stopped."""
    root = Path(tempfile.mkdtemp(prefix="rf-stale-", dir="/tmp"))  # short: Ray's socket paths are limited
    (root / "ray_current_cluster").write_text("127.0.0.1:1\n")
    yield str(root)
    shutil.rmtree(root, ignore_errors=True)


def test_commands_run_beside_a_head_a_stale_cluster_file_and_each_other(
    head, bundle: str, stale_temp_dir: str, tmp_path: Path
) -> None:
    # The head's temp dir holds its ray_current_cluster: a bare ray.init() there joins the head.
    beside_head = head.env() | {"RAY_TMPDIR": str(head.log.parent / "ray")}
    stale = head.env() | {"RAY_TMPDIR": stale_temp_dir}
    runs = {
        "train": (
            raeflow(
                "train", "--data", "builtin:digits", "--model", "conv", "--image-size", "8", "--epochs", "1"
            )
            + ["--limit", "200", "--out", str(tmp_path / "train")],
            beside_head,
        ),
        "embed": (
            raeflow("embed", "--data", "builtin:digits", "--model", bundle, "--out", str(tmp_path / "emb")),
            beside_head,
        ),
        "report": (
            raeflow(
                "report",
                "--data",
                "builtin:digits",
                "--model",
                bundle,
                "--limit",
                "300",
                "--out",
                str(tmp_path / "rep"),
            ),
            stale,
        ),
    }
    started = {
        name: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (cmd, env) in runs.items()
    }
    done = {name: (p, *p.communicate(timeout=900)) for name, p in started.items()}
    for name, (process, out, err) in done.items():
        assert process.returncode == 0, f"{name}:\n{out[-2000:]}\n{err[-3000:]}"
        assert ray_lines(out + err) == [], f"{name} printed Ray's lines:\n{err[-3000:]}"
    assert (tmp_path / "train" / "model" / "bundle.json").is_file()
    assert (tmp_path / "emb" / "_SUCCESS").is_file()
    assert (tmp_path / "rep" / "report.html").is_file()
    assert "embed: 1,797 images in, 1,797 out" in done["embed"][1]


def test_verbose_shows_rays_lines(bundle: str, tmp_path: Path) -> None:
    args = raeflow("embed", "--data", "builtin:digits", "--model", bundle, "--out", str(tmp_path / "emb"))
    done = subprocess.run([*args, "--verbose"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ray_lines(done.stderr), done.stderr[-3000:]


@pytest.fixture()
def ray_temp_dir() -> str:
    """A Ray temp dir (`RAY_TMPDIR`) of the commands under test alone: their Ray's session folder and
    sockets live there, so its GCS and raylet are told apart from any other Ray on the machine."""
    root = tempfile.mkdtemp(prefix="rf-own-", dir="/tmp")  # short: Ray's socket paths are limited
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _ray_nodes(temp_dir: str) -> set[int]:
    """Processes of Ray's node binaries (GCS servers, raylets) whose command line names `temp_dir`
    (their `--session-dir`, socket paths): the nodes of commands run with `RAY_TMPDIR=temp_dir`."""
    mark = temp_dir.rstrip("/").encode() + b"/"
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else [b""]
        except OSError:
            continue
        if args[0].endswith((b"/gcs_server", b"/raylet")) and any(mark in arg for arg in args[1:]):
            found.add(int(entry.name))
    return found


def _left_behind(temp_dir: str, pid: int) -> list[str]:
    """Ray node processes of the commands run with `RAY_TMPDIR=temp_dir` still running, and temporary
    files of process `pid`. Another user's Ray, started meanwhile, is not theirs and not counted."""
    deadline = time.monotonic() + 20  # a node that is being stopped may take a moment to go
    while _ray_nodes(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    nodes = [f"ray node {p}" for p in sorted(_ray_nodes(temp_dir))]
    return nodes + sorted(str(p) for p in Path(tempfile.gettempdir()).glob(f"raeflow-{pid}-*"))


def test_commands_leave_no_ray_and_no_temp_files_after_success_mistakes_and_sigterm(
    bundle: str, tmp_path: Path, ray_temp_dir: str
) -> None:
    # A command starts its private Ray while it loads; whatever happens next, that Ray goes with it.
    own = {**os.environ, "RAY_TMPDIR": ray_temp_dir}
    embed = raeflow("embed", "--data", "builtin:digits", "--model", bundle, "--quiet")
    done = subprocess.Popen(
        [*embed, "--out", str(tmp_path / "emb")], stdout=subprocess.PIPE, text=True, env=own
    )
    out, _ = done.communicate(timeout=900)
    assert done.returncode == 0 and "1,797 images in" in out
    assert _left_behind(ray_temp_dir, done.pid) == []

    # A damaged bundle is found after Ray began to start: one line, exit 2, nothing left.
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    (damaged / "bundle.json").write_text("{")
    mistake = subprocess.Popen(
        [
            *raeflow("denoise", "--data", "builtin:digits", "--model", str(damaged)),
            "--out",
            str(tmp_path / "dn"),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=own,
    )
    _, err = mistake.communicate(timeout=300)
    assert mistake.returncode == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "dn").exists()
    assert _left_behind(ray_temp_dir, mistake.pid) == []

    # SIGTERM while the job runs: the command stops its Ray on the way out.
    job = subprocess.Popen(
        [*raeflow("report", "--data", "builtin:digits", "--model", bundle), "--out", str(tmp_path / "rep")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=own,
    )
    deadline = time.monotonic() + 300
    while (
        not (tmp_path / "rep" / "_manifest").exists() and job.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert job.poll() is None, "the report finished before it could be stopped"
    assert _ray_nodes(ray_temp_dir), "the running command's own GCS and raylet are not found"
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=120) != 0
    assert _left_behind(ray_temp_dir, job.pid) == []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_a_one_line_error_at_once(bundle: str, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    address = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    args = raeflow(
        "embed", "--data", "builtin:digits", "--model", bundle, "--out", str(out), "--address", address
    )
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot reach a Ray cluster at {address}"), done.stderr
    assert ray_lines(done.stderr) == []
    assert time.monotonic() - began < 120  # interpreter start on a busy machine, then at once
    assert not out.exists() or not any(out.rglob("*")), sorted(
        out.rglob("*")
    )  # nothing before the connection


def test_an_address_that_never_answers_is_an_error_within_the_bound(tmp_path: Path) -> None:
    # Something listens but never speaks Ray: Ray itself would retry for ever.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    threading.Thread(target=accept, daemon=True).start()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    args = raeflow("train", "--data", "builtin:digits", "--model", "conv", "--image-size", "8")
    args += ["--out", str(tmp_path / "run"), "--address", address]
    env = {**os.environ, "RAEFLOW_CONNECT_TIMEOUT_S": "5"}
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    finally:
        stop.set()
        listener.close()
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"error: the Ray cluster at {address} did not accept this driver within 5 s: is that the cluster's "
        "GCS address (HOST:6379 by default) and the same Ray version?"
    ]
    assert not (tmp_path / "run" / "model").exists()
