"""The lease that keeps two jobs off one output folder, on a local folder and on S3 (moto); no Ray.

The jobs here are threads and child processes holding `Lease`s, as `run_batch_job` does; the
commands themselves are run against each other in tests/faults/test_two_jobs.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from raeflow.batch import lease as lease_module
from raeflow.batch.lease import LEASE_FILE, Holder, Lease
from raeflow.batch.manifest import Manifest, ShardRecord
from raeflow.batch.output import OutputDir
from raeflow.errors import JobError


@pytest.fixture(autouse=True)
def quick_confirm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-backs after a take-over wait 0.3 s instead of 2 s (the racing writers here are threads)."""
    monkeypatch.setattr(lease_module, "CONFIRM_SECONDS", 0.3)


@pytest.fixture(params=["local", "s3"])
def out(request: pytest.FixtureRequest, tmp_path: Path) -> OutputDir:
    if request.param == "local":
        return OutputDir(str(tmp_path / "out"))
    return OutputDir(f"{request.getfixturevalue('s3_bucket')}/out")


def _lease_on(out: OutputDir) -> dict | None:
    """The lease file as a user would read it."""
    try:
        return json.loads(out.read(LEASE_FILE))
    except FileNotFoundError:
        return None


def _other_host_lease(out: OutputDir, *, heartbeat: float) -> Holder:
    """What a job on another machine (e.g. another cluster's head) leaves in the folder."""
    holder = Holder(
        job="b0b0b0b0b0b0", kind="embed", out=out.url(), host="node-b", pid=4242,
        started=heartbeat - 600, heartbeat=heartbeat, machine="another-machine",
    )  # fmt: skip
    out.put(LEASE_FILE, holder.encode())
    return holder


def test_a_second_job_is_refused_in_one_line_naming_the_first(out: OutputDir) -> None:
    first = Lease(out, "embed")
    assert first.acquire() is None
    written = _lease_on(out)
    assert written is not None and written["pid"] == os.getpid() and written["host"] == socket.gethostname()
    try:
        second = Lease(out, "embed")
        for attempt in (second.check, second.acquire):
            with pytest.raises(JobError) as refused:
                attempt()
            said = str(refused.value)
            assert "\n" not in said
            assert said.startswith(f"--out {out.url()} is being written by embed job {written['job']} on ")
            assert f"{socket.gethostname()} (pid {os.getpid()}), started 20" in said
            assert "wait for it to end or write to another --out" in said
        assert _lease_on(out) == written  # the refused job touched nothing
    finally:
        first.release()
    assert _lease_on(out) is None
    second = Lease(out, "embed")
    assert second.acquire() is None  # free again once the first ended
    second.release()


def _race(leases: list[Lease]) -> tuple[list[Lease], list[str]]:
    """Start every lease's job at the same instant (threads); the ones running, the refusals."""
    start = threading.Barrier(len(leases))
    refusals: list[str] = []

    def run(lease: Lease) -> None:
        start.wait()
        try:
            lease.acquire()
        except JobError as err:
            refusals.append(str(err))

    threads = [threading.Thread(target=run, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return [lease for lease in leases if lease.holder is not None], refusals


@pytest.mark.parametrize("num_jobs", [2, 4])
def test_jobs_starting_at_the_same_instant_leave_one_running(out: OutputDir, num_jobs: int) -> None:
    for _ in range(3):
        running, refusals = _race([Lease(out, "embed") for _ in range(num_jobs)])
        assert len(running) == 1 and len(refusals) == num_jobs - 1, refusals
        winner = running[0].holder
        assert winner is not None and _lease_on(out)["job"] == winner.job  # type: ignore[index]
        assert all(f"embed job {winner.job} " in said for said in refusals)
        running[0].release()


def test_a_lease_renewed_by_a_running_job_is_never_taken_over(out: OutputDir) -> None:
    running = Lease(out, "denoise", stale=0.6)  # renewed every 0.15 s
    running.acquire()
    try:
        time.sleep(1.5)  # more than twice the stale time
        renewed = _lease_on(out)
        assert renewed is not None and renewed["beats"] >= 3
        with pytest.raises(JobError, match="is being written by denoise job"):
            Lease(out, "denoise", stale=0.6).acquire()
        running.ensure_held()
    finally:
        running.release()


def test_a_lease_not_renewed_for_the_stale_time_is_taken_over_with_a_line(out: OutputDir) -> None:
    _other_host_lease(out, heartbeat=time.time())
    late = Lease(out, "embed", stale=1.0)
    with pytest.raises(JobError, match=r"embed job b0b0b0b0b0b0 on node-b \(pid 4242\)"):
        late.check()  # renewed just now: that job may still run
    time.sleep(1.5)  # (S3's modification times have whole seconds)
    late.check()
    line = late.acquire()
    try:
        assert line is not None and "\n" not in line
        assert line.startswith(
            f"took over --out {out.url()} from embed job b0b0b0b0b0b0 on node-b (pid 4242)"
        )
        assert "its lease was last renewed 1 s ago" in line or "its lease was last renewed 2 s ago" in line
        assert _lease_on(out)["job"] == late.holder.job  # type: ignore[index,union-attr]
    finally:
        late.release()


def test_a_lease_whose_heartbeat_is_old_but_file_is_new_is_not_taken_over(out: OutputDir) -> None:
    # A holder whose clock runs behind writes old heartbeats; the store's time of the write still counts.
    _other_host_lease(out, heartbeat=time.time() - 3600)
    with pytest.raises(JobError, match="lease renewed"):
        Lease(out, "embed", stale=60).acquire()


def test_a_lease_that_cannot_be_read_is_judged_by_its_age(out: OutputDir) -> None:
    out.put(LEASE_FILE, b'{"job": "half a le')  # a store without whole writes, a hand edit
    late = Lease(out, "report", stale=1.0)
    with pytest.raises(JobError, match=f"is being written by a job whose {LEASE_FILE} cannot be read"):
        late.check()
    time.sleep(1.5)
    line = late.acquire()
    assert line is not None and line.startswith(f"took over --out {out.url()} from a job whose {LEASE_FILE}")
    late.release()


def test_a_lease_left_by_a_killed_process_on_this_machine_is_taken_over_at_once(out: OutputDir) -> None:
    take_and_die = (
        "import os, sys; from raeflow.batch.lease import Lease; from raeflow.batch.output import OutputDir; "
        "Lease(OutputDir(sys.argv[1]), 'embed').acquire(); os._exit(9)"
    )
    killed = subprocess.Popen(
        [sys.executable, "-c", take_and_die, out.url()], stderr=subprocess.PIPE, text=True
    )
    _, said = killed.communicate(timeout=60)
    assert killed.returncode == 9, said
    left = _lease_on(out)
    assert left is not None and left["pid"] == killed.pid
    rerun = Lease(out, "embed")  # the default stale time: only the process being gone lets it in now
    line = rerun.acquire()
    try:
        assert line is not None
        assert f"from embed job {left['job']} on {socket.gethostname()} (pid {killed.pid})" in line
        assert f"its process {killed.pid} on this machine is gone" in line
    finally:
        rerun.release()


def test_a_job_that_lost_its_lease_stops_committing(out: OutputDir) -> None:
    stalled = Lease(out, "embed")
    stalled.acquire()
    manifest = Manifest(out, stalled)
    record = ShardRecord(shard=0, name="a", rows_in=1, rows_out=1, rows_rejected=0, seconds=0.1)
    manifest.write_record(record, np.zeros(1, dtype=np.uint64))  # held: committed
    # Its renewals stalled past the stale time; a job on another machine took the folder over.
    taker = _other_host_lease(out, heartbeat=time.time())
    stalled.renew()
    with pytest.raises(JobError) as stopped:
        manifest.write_record(dataclasses.replace(record, shard=1), np.zeros(1, dtype=np.uint64))
    assert str(stopped.value).startswith(
        f"--out {out.url()} was taken over by {taker.describe()} while this job ran"
    )
    with pytest.raises(JobError, match="was taken over"):
        manifest.mark_success({})
    assert sorted(manifest.finished()) == [0] and not out.exists("_SUCCESS")
    stalled.release()
    assert _lease_on(out)["job"] == taker.job  # type: ignore[index]  # not the loser's to delete


def test_a_job_that_cannot_renew_its_lease_stops_before_another_may_take_over(out: OutputDir) -> None:
    lease = Lease(out, "embed", stale=0.4)
    lease.acquire()

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("503 SlowDown")

    lease.renew = refuse  # type: ignore[method-assign]  # the store refuses every write from now on
    time.sleep(0.5)
    with pytest.raises(
        JobError, match=r"could not renew the lease on --out .* \(503 SlowDown\); this job stops"
    ):
        lease.ensure_held()
    lease.release()


def test_a_job_whose_disk_is_too_full_to_renew_its_lease_says_so(tmp_path: Path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    lease = Lease(out, "embed", stale=0.4)
    lease.acquire()
    lease_path = out.url(LEASE_FILE)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", lease_path)  # what `OutputDir.put` raises then

    lease.renew = full  # type: ignore[method-assign]
    time.sleep(0.5)
    with pytest.raises(JobError) as stopped:
        lease.ensure_held()
    assert str(stopped.value) == (
        f"no space left on --out {out.uri} (writing {LEASE_FILE}); free space and rerun: "
        "finished shards are kept"
    )
    lease.release()
    assert _lease_on(out) is None


class LookThenWrite(OutputDir):
    """A store without exclusive create (an S3 clone that ignores If-None-Match, a plain mount):
    two writers both see nothing, then both write."""

    def create(self, relpath: str, data: bytes) -> bool:
        if self.exists(relpath):
            return False
        time.sleep(0.05)  # both racers pass the look
        self.put(relpath, data)
        return True

    @property
    def creates_exclusively(self) -> bool:
        return False


def test_a_store_without_exclusive_create_still_leaves_one_job(tmp_path: Path) -> None:
    for _ in range(3):
        running, refusals = _race([Lease(LookThenWrite(str(tmp_path / "out")), "embed") for _ in range(3)])
        assert len(running) == 1 and len(refusals) == 2, refusals
        running[0].release()


def test_an_out_that_is_a_file_is_left_to_the_manifest_check(tmp_path: Path) -> None:
    (tmp_path / "emb.parquet").write_bytes(b"PAR1")
    Lease(OutputDir(str(tmp_path / "emb.parquet")), "embed").check()  # no lease there: no error of its own


def test_a_batch_job_is_refused_while_another_writes_its_out_and_returns_the_lease_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through `run_batch_job`, on a folder whose shards are all done (so no Ray is needed)."""
    from raeflow.batch import runner
    from raeflow.batch.config import RunOptions
    from raeflow.batch.decoding import DecodeSpec
    from raeflow.batch.mirror import FolderMirror
    from raeflow.batch.predictors import DenoisePredictor
    from raeflow.batch.runner import BatchJob, run_batch_job

    connects: list[RunOptions] = []
    monkeypatch.setattr(runner, "_connect", connects.append)
    from raeflow.data.sources.folder import FolderSource

    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"{i}.png").write_bytes(b"x" * 1000)
    source = FolderSource(str(tmp_path / "in"), bytes_per_shard=1000)
    out = OutputDir(str(tmp_path / "out"))
    manifest = Manifest(out)
    manifest.claim("denoise", "fp", {"format": "same"}, 2)
    for shard in source.list_shards():
        record = ShardRecord(shard.index, shard.name, rows_in=1, rows_out=1, rows_rejected=0, seconds=0.1)
        manifest.write_record(record, np.array([shard.index + 1], dtype=np.uint64))
    job = BatchJob(
        name="denoise", source=source, out=out, fingerprint="fp", settings={"format": "same"},
        decode=DecodeSpec(keep_mode=True), predictor=DenoisePredictor, predictor_kwargs={},
        writer=FolderMirror(keep_names=True), run=RunOptions(quiet=True),
    )  # fmt: skip
    running = Lease(out, "denoise")
    running.acquire()
    try:
        with pytest.raises(JobError, match=f"is being written by denoise job {running.holder.job} "):  # type: ignore[union-attr]
            run_batch_job(job)
        assert not out.exists("_SUCCESS")
    finally:
        running.release()
    summary = run_batch_job(job)
    assert summary.images_out == 2 and out.exists("_SUCCESS") and _lease_on(out) is None
    assert connects == []  # neither the refused job nor the finished one needed a cluster
