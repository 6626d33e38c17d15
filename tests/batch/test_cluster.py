"""Batch jobs on a two-node Ray cluster: both nodes write, the driver only keeps the books, and a
lost node or a killed predictor actor never costs or doubles a key; and a `--gpu` job on a cluster
shaped like cluster.yaml's (a CPU-only decode node, a node with a declared GPU).

The cluster (`tests/two_node_cluster.py`) runs in its own process and each job runs as
`raeflow ... --address` in another, so the test session's shared Ray is left alone.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raeflow.data import images
from tests.batch.inputs import write_digit_parquet

CLUSTER_SCRIPT = Path(__file__).parent.parent / "two_node_cluster.py"
pytestmark = pytest.mark.slow


class TwoNodes:
    """The cluster process: its address, and a way to take its worker node away and back."""

    def __init__(self, *options: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("RAY_ADDRESS", None)
        self.process = subprocess.Popen(
            [sys.executable, str(CLUSTER_SCRIPT), *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.address = self.process.stdout.readline().strip()  # type: ignore[union-attr]
        assert self.address, "the two-node cluster did not start"

    def tell(self, command: str) -> None:
        self.process.stdin.write(command + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        assert self.process.stdout.readline().strip() == {"remove": "removed", "add": "added"}[command]  # type: ignore[union-attr]

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=120)


@pytest.fixture(scope="module")
def two_nodes(s3_server: str) -> Iterator[TwoNodes]:
    cluster = TwoNodes()  # started after the S3 endpoint, whose address its workers inherit
    yield cluster
    cluster.close()


def _cli(cluster: TwoNodes, *args: str) -> list[str]:
    return [sys.executable, "-m", "raeflow.cli", *args, "--address", cluster.address, "--quiet"]


def _listing(out: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()  # s3fs keeps listings (and sizes) of earlier calls
    return sorted(path[len(root.rstrip("/")) + 1 :] for path in fs.find(root))


def _records(out: str) -> list[dict]:
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()
    names = [p for p in fs.find(f"{root}/_manifest") if p.rsplit("/", 1)[1].startswith("shard-")]
    return [json.loads(fs.cat_file(p)) for p in sorted(names)]


def _embedded_keys(out: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(out)
    keys: list[str] = []
    for name in sorted(p for p in _listing(out) if p.startswith("part-")):
        with fs.open(f"{root}/{name}", "rb") as handle:
            keys += pq.read_table(handle).column("key").to_pylist()
    return keys


def _wait_for_records(out: str, job: subprocess.Popen, count: int = 1) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        try:
            if len(_records(out)) >= count:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    said = job.stderr.read()[-12000:] if job.poll() is not None and job.stderr else ""
    raise AssertionError(f"no shard was committed in time (exit code {job.poll()}): {said}")


def _assert_exactly_once(out: str, keys: list[str]) -> None:
    listing = _listing(out)
    assert "_SUCCESS" in listing
    assert not [name for name in listing if ".raeflow-tmp-" in name or name.startswith("_pieces")]
    assert _embedded_keys(out) == keys  # every key once, in input order (part names sort by shard, row)


@pytest.fixture(params=["local", "s3"])
def out_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    bucket = "t-" + request.node.name.lower().replace("[", "-").replace("]", "").replace("_", "-")[:50]
    fsspec.filesystem("s3").mkdir(bucket)
    return f"s3://{bucket}/out"


def _photo_parquet(root: Path, colour_photo: np.ndarray, *, files: int, rows: int) -> list[str]:
    """`files` Parquet files of `rows` 640x640 RGB BMP photos (1.2 MB each, no compression)."""
    import pyarrow as pa

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    keys = []
    for f in range(files):
        datas = []
        for _ in range(rows):
            top, left = rng.integers(0, 512 - 320, 2)
            crop = np.tile(np.ascontiguousarray(colour_photo[top : top + 320, left : left + 320]), (2, 2, 1))
            buffer = io.BytesIO()
            Image.fromarray(crop).save(buffer, "BMP")
            datas.append(buffer.getvalue())
        names = [f"photo-{f:02d}-{r}" for r in range(rows)]
        pq.write_table(pa.table({"key": names, "image": datas}), root / f"part-{f:02d}.parquet")
        keys += names
    return keys


def test_embed_and_denoise_write_from_both_nodes_and_the_driver_gets_only_records(
    two_nodes: TwoNodes, tmp_path: Path, unet_rgb_bundle: str, colour_photo
) -> None:
    keys = _photo_parquet(tmp_path / "photos", colour_photo, files=8, rows=3)  # ~29 MB of pixels
    emb = str(tmp_path / "emb")
    done = subprocess.run(
        _cli(
            two_nodes, "embed", "--data", str(tmp_path / "photos"), "--model", unet_rgb_bundle, "--out", emb
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len({node for record in _records(emb) for node in record["nodes"]}) == 2
    assert _embedded_keys(emb) == keys

    # Denoise them: every output byte is written on the nodes; the driver's share is records.
    out = tmp_path / "clean"
    job = subprocess.Popen(
        _cli(
            two_nodes,
            "denoise",
            "--data",
            str(tmp_path / "photos"),
            "--model",
            unet_rgb_bundle,
            "--out",
            str(out),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    growth = _peak_memory_growth(job, out)
    _, stderr = job.communicate(timeout=900)
    assert job.returncode == 0, stderr[-3000:]
    written = sum(len(b) for p in out.glob("*.parquet") for b in pq.read_table(p).column("image").to_pylist())
    success = json.loads((out / "_SUCCESS").read_text())
    assert written > 25_000_000 and success["images_out"] == 24
    assert success["received_bytes"] < 100_000, success["received_bytes"]  # records, never images
    assert growth < 50 * 1024 * 1024, growth
    assert len({node for record in _records(str(out)) for node in record["nodes"]}) == 2
    denoised = pq.read_table(out / "part-03.parquet")
    assert denoised.column("key").to_pylist() == keys[9:12]
    assert images.decode_image(denoised.column("image")[0].as_py()).shape == (640, 640, 3)


def test_gpu_jobs_run_their_predictors_on_the_gpu_node(tmp_path: Path, conv_bundle, mnist_digits) -> None:
    # CPU actors avoid GPU nodes while others have room, so this shape gets a cluster of its own.
    digits, labels = mnist_digits
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=4, rows=30)
    out = str(tmp_path / "emb")
    cluster = TwoNodes("--gpu-worker", "--cpus", "1")
    try:
        command = _cli(cluster, "embed", "--data", str(tmp_path / "in"), "--model", conv_bundle, "--out", out)
        done = subprocess.run([*command, "--gpu"], capture_output=True, text=True, timeout=600)
    finally:
        cluster.close()
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_exactly_once(out, keys)
    records = _records(out)
    assert len({node for record in records for node in record["nodes"]}) == 1  # the one node with a GPU
    assert [len(record["outputs"]) for record in records] == [1, 1, 1, 1]  # a part per shard, as on CPUs


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _predictor_processes(cluster: TwoNodes) -> list[int]:
    """The predictor actor processes of this cluster (workers are children of its nodes' raylets)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or "PredictAndWrite" not in _cmdline(int(entry.name)):
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if cluster.address in _cmdline(parent):
            found.append(int(entry.name))
    return found


def _private_bytes(pid: int) -> int:
    """A process's private memory (smaps_rollup: Private_Clean + Private_Dirty)."""
    fields = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return sum(int(line.split()[1]) * 1024 for line in fields if line.startswith("Private_"))


# Each failure mode runs against one storage kind (the killed driver runs against both, in
# test_resume.py): the pair covers a local folder and the S3 endpoint within the suite's time budget.
@pytest.mark.parametrize("out_root", ["local"], indirect=True)
def test_a_killed_predictor_actor_is_replaced(
    two_nodes: TwoNodes, out_root: str, tmp_path: Path, conv_bundle, mnist_digits
) -> None:
    digits, labels = mnist_digits
    # 20 shards for 6 actors (3 CPUs on each node): the actors read their shards themselves.
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=20, rows=15)
    job = subprocess.Popen(
        _cli(two_nodes, "embed", "--data", str(tmp_path / "in"), "--model", conv_bundle, "--out", out_root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_records(out_root, job)
    actors = _predictor_processes(two_nodes)
    assert actors, "no predictor actor process found"
    os.kill(actors[0], signal.SIGKILL)
    _, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    _assert_exactly_once(out_root, keys)


@pytest.mark.parametrize("out_root", ["s3"], indirect=True)
def test_a_worker_node_lost_mid_job(
    two_nodes: TwoNodes, out_root: str, tmp_path: Path, conv_bundle, mnist_digits
) -> None:
    digits, labels = mnist_digits
    # 20 shards for 6 actors (3 CPUs on each node): the actors read their shards themselves.
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=20, rows=15)
    command = _cli(
        two_nodes, "embed", "--data", str(tmp_path / "in"), "--model", conv_bundle, "--out", out_root
    )
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_records(out_root, job)
        two_nodes.tell("remove")  # a spot preemption: the node and everything on it vanish
        _, stderr = job.communicate(timeout=600)
        if job.returncode != 0:  # Ray may give up on the job; a rerun must complete it exactly once
            rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
            assert rerun.returncode == 0, rerun.stderr[-3000:]
    finally:
        job.kill()
        two_nodes.tell("add")
    _assert_exactly_once(out_root, keys)


def _peak_memory_growth(job: subprocess.Popen, out: Path) -> int:
    """The driver's private memory growth from its first commit to its end (sampled every 0.1 s)."""
    samples: list[int] = []
    while job.poll() is None:
        try:
            private = _private_bytes(job.pid)
        except OSError:
            break
        if (out / "_manifest").exists() and list((out / "_manifest").glob("shard-*.json")):
            samples.append(private)
        time.sleep(0.1)
    return max(samples) - samples[0] if samples else 0
