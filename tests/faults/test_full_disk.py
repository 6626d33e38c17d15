"""A full disk under --out: the job stops with one line naming the folder, commits nothing
incomplete, and the same command, rerun once space is freed, ends with every key exactly once.

The disk is a tmpfs mounted for the test (`small_disk`), sized so that it fills in the middle of
the job, then enlarged in place (`remount`) for the rerun. Mounting needs root (CI and the
development machines run the suite as root); elsewhere these tests are skipped, saying why.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raeflow.batch.lease import LEASE_FILE, Lease
from raeflow.batch.manifest import Manifest
from raeflow.batch.mirror import WebDatasetMirror
from raeflow.batch.output import TEMP_MARK, NoSpace, OutputDir, no_space
from raeflow.batch.runner import stopped_by_full_disk
from raeflow.data.sources import open_source
from raeflow.errors import JobError
from raeflow.models import create_model, save_bundle
from tests.batch.inputs import write_digit_parquet

Disk = Callable[[int], Path]
"""Mount a tmpfs of that many KiB for the test; returns its folder."""


def _mount(folder: Path, kib: int, *, remount: bool = False) -> subprocess.CompletedProcess[str]:
    options = f"remount,size={kib}k" if remount else f"size={kib}k"
    return subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
    )


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Disk]:
    """Mounts small tmpfs disks under the test's folder; unmounts them at the end."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        folder = tmp_path / f"disk-{len(mounted)}"
        folder.mkdir()
        done = _mount(folder, kib)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _enlarge(folder: Path, kib: int) -> None:
    done = _mount(folder, kib, remount=True)
    assert done.returncode == 0, done.stderr


def _fill(folder: Path) -> None:
    """Take every free byte of the disk (a file that grows until the disk refuses)."""
    with pytest.raises(OSError) as full:
        with open(folder / "filler", "wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- one write, no Ray -------------------------------------------------------------------------


def test_a_write_that_fills_the_disk_names_the_file_and_leaves_nothing(small_disk: Disk) -> None:
    folder = small_disk(64)
    out = OutputDir(str(folder / "emb"))
    out.put("part-00000-000000.parquet", b"x" * 8192)
    with pytest.raises(OSError) as raised:
        out.put("part-00001-000000.parquet", b"y" * 256 * 1024)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == out.url("part-00001-000000.parquet")  # not the temporary name
    assert _files(folder / "emb") == ["part-00000-000000.parquet"]  # no temporary file, no half file
    found = no_space(raised.value)
    assert found == NoSpace(quota=False, path=out.url("part-00001-000000.parquet"))
    message = str(out.no_space_error(found, "1 of 4 shards are finished"))
    assert message == (
        f"no space left on --out {out.uri} (writing part-00001-000000.parquet); 1 of 4 shards are "
        "finished; free space and rerun: finished shards are kept"
    )


def test_a_lease_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk: Disk) -> None:
    folder = small_disk(64)
    out = OutputDir(str(folder / "emb"))
    (folder / "emb" / "_manifest").mkdir(parents=True)
    _fill(folder)
    with pytest.raises(JobError) as raised:
        Lease(out, "embed").acquire()
    assert str(raised.value) == (
        f"no space left on --out {out.uri} (writing {LEASE_FILE}); free space and rerun: "
        "finished shards are kept"
    )
    assert _files(folder / "emb") == []
    os.unlink(folder / "filler")
    lease = Lease(out, "embed")
    assert lease.acquire() is None  # space freed: the same call takes the lease
    lease.release()


def test_a_full_disk_inside_a_worker_is_found_behind_ray_datas_wrapper() -> None:
    """What reaches the driver when an actor's write fails: Ray Data's `UserCodeException` (the
    actor's own error lost on the way) inside a `RayTaskError`, the actor's traceback as text."""
    from ray.exceptions import RayTaskError, UserCodeException

    part = "/data/emb/part-00003-000000.parquet"
    traceback_text = (
        "Traceback (most recent call last):\n"
        f"OSError: [Errno 28] No space left on device: '/data/emb/{TEMP_MARK}0f3a-{part[10:]}'\n"
        "\nThe above exception was the direct cause of the following exception:\n\n"
        f"OSError: [Errno 28] No space left on device: '{part}'\n"
        "\nThe above exception was the direct cause of the following exception:\n\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block."
    )
    cause = UserCodeException("UDF failed to process a data block.")
    err = RayTaskError("MapWorker.submit", traceback_text, cause, "proc", 1, "127.0.0.1")
    assert no_space(err.as_instanceof_cause()) == NoSpace(quota=False, path=part)
    quota = RayTaskError(
        "f",
        traceback_text.replace("28] No space left on device", f"{errno.EDQUOT}] Disk quota exceeded"),
        cause,
        "p",
        1,
        "h",
    )
    message = str(OutputDir("/data/emb").no_space_error(no_space(quota)))  # type: ignore[arg-type]
    assert message.startswith(
        "no space left on --out /data/emb (disk quota exceeded; writing part-00003-000000.parquet)"
    )
    other = RayTaskError("f", "ValueError: [Errno 2] No such file or directory: 'x'", cause, "p", 1, "h")
    assert no_space(other) is None


def test_a_node_whose_ray_spill_folder_is_full_stops_the_job_in_one_line(tmp_path: Path) -> None:
    """Ray's `OutOfDiskError` (a node's object store full and its spill folder's disk over Ray's
    95 % threshold), raised as is or inside a task's error, is one line saying where to free space."""
    from ray.exceptions import OutOfDiskError, RayTaskError

    out = OutputDir(str(tmp_path / "emb"))
    record = {"shard": 1, "name": "b", "rows_in": 4, "rows_out": 4, "rows_rejected": 0, "seconds": 0.1}
    out.put("_manifest/shard-00001.json", json.dumps(record).encode())  # a shard an earlier run finished
    refused = OutOfDiskError("ab" * 14, None, "")
    inside = RayTaskError("read", f"ray.exceptions.OutOfDiskError: {refused}", refused, "p", 1, "h")
    for err in (refused, inside.as_instanceof_cause()):
        line = str(stopped_by_full_disk(err, Manifest(out), 6))
        assert line.startswith("no space left for Ray's objects: a node's object store was full"), line
        assert (
            "$RAY_object_spilling_directory); 1 of 6 shards are finished; free space there and rerun" in line
        )
    assert stopped_by_full_disk(ValueError("not a disk"), Manifest(out), 6) is None


def test_a_tar_mirror_whose_disk_fills_is_not_left_short(tmp_path: Path, monkeypatch) -> None:
    """A denoised tar whose writing hits a full disk is not kept. The disk refuses the third sample;
    by the time the tar is closed, space was freed again (another actor's failed write removed its
    temporary file): before, the error was taken for a truncated input and the short tar kept."""
    (tmp_path / "tars").mkdir()
    with tarfile.open(tmp_path / "tars" / "shard-000.tar", "w") as writer:
        for i in range(8):
            data = os.urandom(2_000)
            info = tarfile.TarInfo(f"s{i:03d}.png")
            info.size = len(data)
            writer.addfile(info, io.BytesIO(data))
    out = OutputDir(str(tmp_path / "clean"))
    source = open_source(str(tmp_path / "tars"))
    [shard] = source.list_shards()
    added = tarfile.TarFile.addfile
    calls = [0]

    def addfile(self: tarfile.TarFile, info: tarfile.TarInfo, fileobj=None) -> None:
        calls[0] += 1
        if self.mode == "w" and calls[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        added(self, info, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    with pytest.raises(OSError) as raised:
        WebDatasetMirror(source).build(out, shard, "shard-000.tar", {})
    assert no_space(raised.value) == NoSpace(quota=False, path=out.url("shard-000.tar"))
    assert _files(tmp_path / "clean") == []


# --- a whole job -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained 1x28x28 conv autoencoder (embedding of 4 x 7 x 7 = 196 floats), the same weights
    in every run, so its parts have the same sizes (about 27 KB per 40 digits)."""
    import torch

    torch.manual_seed(0)
    return save_bundle(create_model("conv", channels=[4, 4]), str(tmp_path_factory.mktemp("conv") / "model"))


@pytest.fixture()
def ray_address(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("ray_session")
    import ray

    return str(ray.get_runtime_context().gcs_address)


def _digits(num: int) -> tuple[np.ndarray, np.ndarray]:
    """`num` random 28x28 grey images and labels (what they show does not matter to a full disk)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (num, 28, 28), dtype=np.uint8), rng.integers(0, 10, num)


def _one_error_line(stderr: str) -> str:
    """The failed command's stderr: one `error:` line, nothing else (no traceback, no Ray lines)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


@pytest.mark.slow
def test_embed_on_an_out_that_fills_mid_job_stops_in_one_line_and_resumes_exactly_once(
    small_disk: Disk, tmp_path: Path, raeflow_cli, bundle, ray_address
) -> None:
    digits, labels = _digits(240)
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=6, rows=40)
    # A shard takes 9 pages of 4 KiB (a 27 KB part, its key hashes, its record): two shards fit.
    folder = small_disk(112)
    out = folder / "emb"
    command = [*raeflow_cli, "embed", "--data", str(tmp_path / "in"), "--model", bundle, "--out", str(out)]
    command += ["--address", ray_address, "--quiet"]

    full = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert full.returncode == 2, full.stderr[-3000:]
    line = _one_error_line(full.stderr)
    assert line.startswith(f"error: no space left on --out {out} (writing "), line
    assert line.endswith("; free space and rerun: finished shards are kept"), line
    left = _files(out)
    records = [name for name in left if name.startswith("_manifest/shard-")]
    assert f"; {len(records)} of 6 shards are finished; " in line
    assert len(records) < 6 and "_manifest/job.json" in left  # it filled mid-job
    assert "_SUCCESS" not in left and LEASE_FILE not in left
    assert not [name for name in left if TEMP_MARK in name], left
    for record in records:  # a committed shard has every part, each readable to its end
        parts = json.loads((out / record).read_text())["outputs"]
        assert sum(pq.read_table(out / part).num_rows for part in parts) == 40
    for part in (name for name in left if name.startswith("part-")):
        pq.read_table(out / part)  # any other part is whole too (a rerun replaces it)

    _enlarge(folder, 4096)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_resumed_exactly_once(out, keys, rerun.stdout, len(records))


def assert_resumed_exactly_once(out: Path, keys: list[str], stdout: str, num_done: int) -> None:
    """A rerun's output folder: it said how many shards were done before, finished, left no
    temporary file, and its parts hold every key once, in input order."""
    if num_done:
        assert f"({num_done} already done)" in stdout, stdout
    done = _files(out)
    assert "_SUCCESS" in done and not [name for name in done if TEMP_MARK in name]
    embedded: list[str] = []
    for part in (name for name in done if name.startswith("part-")):
        embedded += pq.read_table(out / part).column("key").to_pylist()
    assert embedded == keys  # every key once, in input order


@pytest.mark.slow
def test_embed_on_a_full_out_is_refused_in_one_line_before_writing(
    small_disk: Disk, tmp_path: Path, raeflow_cli, bundle, ray_address
) -> None:
    digits, labels = _digits(8)
    write_digit_parquet(str(tmp_path / "in"), digits, labels, files=1, rows=8)
    folder = small_disk(64)
    out = folder / "emb"
    _fill(folder)
    command = [*raeflow_cli, "embed", "--data", str(tmp_path / "in"), "--model", bundle, "--out", str(out)]
    done = subprocess.run([*command, "--address", ray_address, "--quiet"], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_error_line(done.stderr)
    assert line.startswith(f"error: no space left on --out {out} (writing "), line
    assert not out.exists() or _files(out) == []  # no lease, no job.json
