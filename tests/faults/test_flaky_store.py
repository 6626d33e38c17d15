"""A flaky object store: every job finishes, every key is written exactly once, nothing partial is left.

The store (`tests/faults/proxy.py`, in front of the moto server) answers 10 % of requests with
503 SlowDown or 500 InternalError and resets 5 % of them in the middle of a body; the embed job
also meets one answer held for 30 s (the only stall of the module). embed, denoise into a tar
mirror and into a Parquet mirror, report and `raeflow shard` run as the real program, each with
its own private Ray, through that store. What carries them through is botocore's and s3fs's own
retrying, with the settings raeflow gives them (`raeflow.data.sources.location.STORE_RETRIES`);
the first tests show those settings are in force in every kind of raeflow process and what they
are for, and that a process counts the requests it retried, without Ray. Each job's summary says
how many requests were retried (`store: 37 requests retried (botocore 30, s3fs 7)`), and says
nothing of the kind through a store that fails nothing.

    .venv/bin/python -m pytest tests/faults/test_flaky_store.py
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ResponseStreamingError,
)

from raeflow.batch.lease import LEASE_FILE, Lease
from raeflow.batch.output import TEMP_MARK, OutputDir
from raeflow.data import images
from raeflow.data.sources.location import STORE_RETRIES
from raeflow.data.sources.retries import StoreRetries, store_retries
from tests.batch.inputs import write_digit_parquet
from tests.faults.conftest import Run, program_env
from tests.faults.proxy import FaultyStore

BUCKET = "faults-flaky-store"
NUM_FILES = 3
ROWS_PER_FILE = 20
STALL_S = 30.0
"""The one stall of the module (held on the embed job's first part)."""


# --- the store itself, and raeflow's retry settings (no Ray) ---


def _client(endpoint: str) -> Any:
    """A botocore S3 client that never retries, so each fault shows as it was sent."""
    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"total_max_attempts": 1}))


def test_the_store_fails_like_a_busy_object_store(s3_server: str) -> None:
    direct = _client(s3_server)
    direct.create_bucket(Bucket="faults-proxy")
    direct.put_object(Bucket="faults-proxy", Key="a.bin", Body=b"x" * 3000)

    errors = FaultyStore(s3_server, error_rate=1.0, reset_rate=0.0, seed=1)
    client, codes = _client(errors.url), Counter()
    for _ in range(12):
        with pytest.raises(ClientError) as refused:
            client.get_object(Bucket="faults-proxy", Key="a.bin")
        codes[refused.value.response["Error"]["Code"]] += 1
    errors.close()
    assert set(codes) == {"SlowDown", "InternalError"}

    resets = FaultyStore(s3_server, error_rate=0.0, reset_rate=1.0, seed=1)
    client = _client(resets.url)
    with pytest.raises(ResponseStreamingError):  # the answer's headers came, its body stopped halfway
        client.get_object(Bucket="faults-proxy", Key="a.bin")["Body"].read()
    for _ in range(8):  # uploads: some cut before the store has them, some applied and the answer cut
        with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
            client.put_object(Bucket="faults-proxy", Key="b.bin", Body=b"y" * 3000)
    assert resets.counts["reset_upload"] and resets.counts["reset_answer"] >= 2
    resets.close()
    assert direct.get_object(Bucket="faults-proxy", Key="b.bin")["Body"].read() == b"y" * 3000

    calm = FaultyStore(s3_server, error_rate=0.0, reset_rate=0.0)
    calm.stall(1.0, when=lambda request: request.method == "GET")
    started = time.monotonic()
    body = _client(calm.url).get_object(Bucket="faults-proxy", Key="a.bin")["Body"].read()
    assert body == b"x" * 3000 and time.monotonic() - started >= 1.0
    assert calm.counts["stalled"] == 1 and not calm.stall_pending
    calm.close()


def test_a_process_counts_the_store_requests_it_retried(
    s3_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What the summaries' `store:` line adds up: botocore's retries inside a call (an error answer,
    an outage of two tries) and s3fs's own call again when a body is cut; nothing for requests
    that went through, and s3fs's debug lines stay hidden while they are counted."""
    _client(s3_server).create_bucket(Bucket="faults-counted")
    store = FaultyStore(s3_server, error_rate=0.0, reset_rate=0.0)
    fs = s3fs.S3FileSystem(endpoint_url=store.url, skip_instance_cache=True)
    caplog.set_level(logging.DEBUG, logger="s3fs")  # what a user's logging would show of s3fs

    def retried(action: Any) -> StoreRetries:
        before = store_retries()
        action()
        return store_retries() - before

    try:
        assert retried(lambda: fs.pipe_file("faults-counted/a.bin", b"x" * 3000)) == StoreRetries()
        assert retried(lambda: fs.cat_file("faults-counted/a.bin")) == StoreRetries()
        store.fail_next("503", when=lambda request: request.method == "PUT")
        assert retried(lambda: fs.pipe_file("faults-counted/b.bin", b"y" * 3000)) == StoreRetries(botocore=1)
        store.storm(2)  # the next request's first two tries are answered 500
        assert retried(lambda: fs.pipe_file("faults-counted/c.bin", b"z" * 3000)) == StoreRetries(botocore=2)
        store.storm(0)
        store.fail_next("reset_answer", when=lambda request: request.method == "GET")
        assert retried(lambda: fs.cat_file("faults-counted/a.bin")) == StoreRetries(s3fs=1)
    finally:
        store.close()
    assert store.counts["503"] == 1 and store.counts["500"] == 2 and store.counts["reset_answer"] == 1
    assert not [r.getMessage() for r in caplog.records if r.name == "s3fs" and r.levelno < logging.INFO]


def test_a_lease_whose_answer_was_lost_is_still_the_jobs_own(s3_server: str) -> None:
    """The store applies the lease's conditional PUT but the answer is lost: s3fs sends it again and
    gets 412 (the lease is there, and it is ours). The job goes on rather than refuse itself."""
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=f"{BUCKET}-lease")
    store = FaultyStore(s3_server, error_rate=0.0, reset_rate=0.0)
    store.fail_next("reset_answer", when=lambda r: r.method == "PUT" and "lease.json" in r.target)
    lease = Lease(OutputDir(f"s3://{BUCKET}-lease/out", {"endpoint_url": store.url}), "embed")
    try:
        assert lease.acquire() is None
        assert store.counts["reset_answer"] == 1
        assert lease.read() == lease.holder
    finally:
        lease.release()
        store.close()
    assert not OutputDir(f"s3://{BUCKET}-lease/out", {"endpoint_url": s3_server}).exists(LEASE_FILE)


@pytest.mark.parametrize(
    "module",
    [
        "raeflow.batch.worker",  # predictor actors: read (fused), predict, write parts
        "raeflow.batch.decoding",  # Ray Data read tasks (--gpu)
        "raeflow.batch.mirror",  # the tasks that build a tar or Parquet mirror from its pieces
        "raeflow.data.shard_writer",  # raeflow shard (no Ray)
        "raeflow.train.trainer",  # Ray Train workers (their loop function lives there)
    ],
)
def test_every_kind_of_raeflow_process_gets_the_retry_settings(module: str, tmp_path: Path) -> None:
    script = (
        f"import json, {module}, s3fs\n"
        "fs = s3fs.S3FileSystem(skip_instance_cache=True)\n"
        "fs.connect()\n"
        "print(json.dumps(fs.s3.meta.config.retries))\n"
    )
    env = program_env("http://127.0.0.1:9", tmp_path)  # no request is sent
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    retries = json.loads(done.stdout.strip().splitlines()[-1])
    assert retries == {"mode": "standard", "total_max_attempts": int(STORE_RETRIES["AWS_MAX_ATTEMPTS"])}


def test_the_users_own_retry_settings_are_kept(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\nmax_attempts = 3\n")
    script = (
        "import os, raeflow.data.sources\n"
        "print(os.environ.get('AWS_RETRY_MODE'), os.environ.get('AWS_MAX_ATTEMPTS'))"
    )
    env = program_env("http://127.0.0.1:9", tmp_path)
    in_file = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "AWS_CONFIG_FILE": str(config)},
        capture_output=True,
        text=True,
    )
    in_env = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "AWS_RETRY_MODE": "adaptive"},
        capture_output=True,
        text=True,
    )
    assert in_file.stdout.split() == ["standard", "None"]  # botocore reads max_attempts from the file
    assert in_env.stdout.split() == ["adaptive", STORE_RETRIES["AWS_MAX_ATTEMPTS"]]


@pytest.mark.slow
def test_raeflow_outlasts_an_outage_that_botocores_defaults_give_up_on(
    s3_server: str, tmp_path: Path
) -> None:
    """Every request answered 500 InternalError five times before it succeeds: botocore's default of
    5 attempts gives up (and s3fs does not retry InternalError); a raeflow process writes the object."""
    _client(s3_server).create_bucket(Bucket="faults-outage")
    store = FaultyStore(s3_server, error_rate=0.0, reset_rate=0.0)
    store.storm(5)
    put = "import s3fs; s3fs.S3FileSystem().pipe_file('faults-outage/{name}', b'z' * 100)"
    env = program_env(store.url, tmp_path)
    try:
        plain = subprocess.run(
            [sys.executable, "-c", put.format(name="plain")], env=env, capture_output=True, text=True
        )
        ours = subprocess.run(
            [sys.executable, "-c", "import raeflow.batch.worker; " + put.format(name="raeflow")],
            env=env,
            capture_output=True,
            text=True,
        )
    finally:
        store.close()
    assert plain.returncode != 0 and "internal error" in plain.stderr.lower()
    assert ours.returncode == 0, ours.stderr
    stored = _client(s3_server).list_objects_v2(Bucket="faults-outage")["Contents"]
    assert [(o["Key"], o["Size"]) for o in stored] == [("raeflow", 100)]


# --- the jobs, through the flaky store (each starts its own Ray) ---


@pytest.fixture(scope="module")
def inputs(s3_server: str, mnist_digits: tuple[np.ndarray, np.ndarray]) -> dict[str, list[str]]:
    """60 digits, put straight into the bucket (no faults) three ways: a folder of PNGs, three
    Parquet files and three WebDataset tars; returns the keys of each."""
    digits, labels = mnist_digits
    _client(s3_server).create_bucket(Bucket=BUCKET)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    keys: dict[str, list[str]] = {"folder": [], "tars": []}
    for i in range(NUM_FILES * ROWS_PER_FILE):
        key = f"{i % 3}/d{i:04d}"
        fs.pipe_file(f"{BUCKET}/in/folder/{key}.png", images.encode_image(digits[i][:, :, None], "png"))
        keys["folder"].append(key)
    keys["table"] = write_digit_parquet(
        f"s3://{BUCKET}/in/table", digits, labels, files=NUM_FILES, rows=ROWS_PER_FILE
    )
    for f in range(NUM_FILES):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for i in range(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE):
                key = f"sample{i:04d}"
                for suffix, data in (
                    ("png", images.encode_image(digits[i][:, :, None], "png")),
                    ("cls", b"%d" % labels[i]),
                ):
                    member = tarfile.TarInfo(f"{key}.{suffix}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
                keys["tars"].append(key)
        fs.pipe_file(f"{BUCKET}/in/tars/part-{f}.tar", buffer.getvalue())
    return keys


@pytest.fixture()
def bucket_files() -> Iterator[s3fs.S3FileSystem]:
    """The bucket as it is, read straight from moto (no faults, no cached listings)."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    yield fs
    fs.invalidate_cache()


def _files(fs: s3fs.S3FileSystem, out: str) -> dict[str, bytes]:
    """Every object under `out`, by name relative to it."""
    root = f"{BUCKET}/{out}"
    return {path[len(root) + 1 :]: fs.cat_file(path) for path in fs.find(root)}


def _assert_nothing_partial(files: dict[str, bytes]) -> None:
    """No temporary object, no left-over piece, and every object whole: each Parquet file, tar and
    JSON document under --out reads to its end."""
    assert files, "nothing was written"
    assert not [name for name in files if TEMP_MARK in name or name.startswith("_pieces/")], sorted(files)
    for name, data in files.items():
        if name.endswith(".parquet"):
            pq.read_table(io.BytesIO(data))
        elif name.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for member in tar.getmembers():
                    assert len(tar.extractfile(member).read()) == member.size  # type: ignore[union-attr]
        elif name.endswith(".json") or name == "_SUCCESS":
            json.loads(data)


def _keys_of(files: dict[str, bytes], suffix: str, column: str = "key") -> list[str]:
    """The keys in every data file ending with `suffix` (not the `_`-prefixed bookkeeping)."""
    found: list[str] = []
    for name in sorted(files):
        if not name.endswith(suffix) or name.startswith("_"):
            continue
        if suffix == ".tar":
            with tarfile.open(fileobj=io.BytesIO(files[name])) as tar:
                found += [m.name.removesuffix(".png") for m in tar.getmembers() if m.name.endswith(".png")]
        else:
            found += pq.read_table(io.BytesIO(files[name]), columns=[column]).column(column).to_pylist()
    return found


RETRY_LINE = re.compile(r"^ *store: +([\d,]+) requests? retried \(botocore ([\d,]+), s3fs ([\d,]+)\)$", re.M)
"""The summary line of a job that retried store requests (batch jobs indent it, `shard` does not)."""


def _retries_said(stdout: str) -> int:
    """How many store requests the summary says were retried (0 when it has no such line); checks
    that the line's parts add up."""
    lines = RETRY_LINE.findall(stdout)
    assert len(lines) <= 1, lines
    if not lines:
        return 0
    total, botocore, s3fs = (int(n.replace(",", "")) for n in lines[0])
    assert total == botocore + s3fs, lines[0]
    return total


WORKER_WRITES = ("/part-", "/_pieces/", "/metrics-")
"""What the predictor actors write: embed's parts, a mirror's pieces, report's metric parts."""


def _fail_a_worker_write(store: FaultyStore, skip: int = 0) -> None:
    """`503 SlowDown` to a file a predictor actor writes (after `skip` such requests): a retry its
    commit record must carry to the summary (the random faults may all fall on Ray Data's read
    tasks, which keep theirs)."""
    seen = [0]

    def chosen(request: Any) -> bool:
        if request.method != "PUT" or not any(w in request.target for w in WORKER_WRITES):
            return False
        seen[0] += 1
        return seen[0] > skip

    store.fail_next("503", when=chosen)


def _assert_ran_through_faults(done: subprocess.CompletedProcess[str], faults: Counter[str]) -> None:
    """The job finished through faults of the store, and its summary counts the retries."""
    print(f"store: {dict(faults)}")  # what the job met (pytest -s shows it)
    assert done.returncode == 0, f"exit {done.returncode}; faults {dict(faults)}\n{done.stderr[-3000:]}"
    assert (
        faults["requests"] > 20
        and faults["503"] + faults["500"] + faults["reset_upload"] + faults["reset_answer"]
    ), dict(faults)
    assert _retries_said(done.stdout) > 0, f"faults {dict(faults)}\n{done.stdout}"


@pytest.mark.slow
def test_embed(
    inputs: dict[str, list[str]],
    flaky_store: FaultyStore,
    through_store: Run,
    bucket_files: s3fs.S3FileSystem,
) -> None:
    flaky_store.stall(STALL_S, when=lambda request: request.method == "PUT" and "/part-" in request.target)
    _fail_a_worker_write(flaky_store, skip=1)  # not the part whose answer is held
    out = f"s3://{BUCKET}/out/embed"
    done, faults = through_store(
        ["embed", "--data", f"s3://{BUCKET}/in/table", "--model", "builtin:mnist-conv", "--out", out]
    )

    _assert_ran_through_faults(done, faults)
    assert faults["stalled"] == 1
    assert "embed: 60 images in, 60 out, 0 rejected" in done.stdout
    files = _files(bucket_files, "out/embed")
    _assert_nothing_partial(files)
    assert json.loads(files["_SUCCESS"])["store_retries"] == _retries_said(done.stdout)
    embedded = _keys_of(files, ".parquet")
    assert sorted(embedded) == sorted(inputs["table"]) and len(embedded) == len(set(embedded))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tars", "table"])
def test_denoise_mirror(
    layout: str,
    inputs: dict[str, list[str]],
    flaky_store: FaultyStore,
    through_store: Run,
    bucket_files: s3fs.S3FileSystem,
) -> None:
    _fail_a_worker_write(flaky_store)
    out = f"s3://{BUCKET}/out/denoise-{layout}"
    done, faults = through_store(
        ["denoise", "--data", f"s3://{BUCKET}/in/{layout}", "--model", "builtin:denoise-grey", "--out", out]
    )

    _assert_ran_through_faults(done, faults)
    assert "denoise: 60 images in, 60 out, 0 rejected" in done.stdout
    files = _files(bucket_files, f"out/denoise-{layout}")
    _assert_nothing_partial(files)
    assert json.loads(files["_SUCCESS"])["store_retries"] == _retries_said(done.stdout)
    suffix = ".tar" if layout == "tars" else ".parquet"
    inputs_named = sorted(name for name in _files(bucket_files, f"in/{layout}") if name.endswith(suffix))
    assert sorted(name for name in files if not name.startswith("_")) == inputs_named
    denoised = _keys_of(files, suffix)
    assert sorted(denoised) == sorted(inputs[layout]) and len(denoised) == len(set(denoised))


@pytest.mark.slow
def test_report(
    inputs: dict[str, list[str]],
    flaky_store: FaultyStore,
    through_store: Run,
    bucket_files: s3fs.S3FileSystem,
) -> None:
    _fail_a_worker_write(flaky_store)
    out = f"s3://{BUCKET}/out/report"
    done, faults = through_store(
        ["report", "--data", f"s3://{BUCKET}/in/folder", "--model", "builtin:mnist-conv", "--out", out]
    )

    _assert_ran_through_faults(done, faults)
    assert "report: 60 images in, 60 out, 0 rejected" in done.stdout
    files = _files(bucket_files, "out/report")
    _assert_nothing_partial(files)
    assert json.loads(files["_SUCCESS"])["store_retries"] == _retries_said(done.stdout)
    scored = pq.read_table(io.BytesIO(files["metrics.parquet"])).column("key").to_pylist()
    assert sorted(scored) == sorted(inputs["folder"]) and len(scored) == len(set(scored))
    assert json.loads(files["summary.json"])["counts"]["rows_out"] == 60
    # written during the job's end, before its own writes' retries are added: at most the final count
    assert 0 < json.loads(files["summary.json"])["counts"]["store_retries"] <= _retries_said(done.stdout)
    assert files["report.html"].decode().count("data:image/png;base64,") >= 3


@pytest.mark.slow
def test_shard(inputs: dict[str, list[str]], through_store: Run, bucket_files: s3fs.S3FileSystem) -> None:
    out = f"s3://{BUCKET}/out/shards"
    done, faults = through_store(["shard", f"s3://{BUCKET}/in/folder", "--out", out, "--shard-size", "25"])

    _assert_ran_through_faults(done, faults)
    files = _files(bucket_files, "out/shards")
    _assert_nothing_partial(files)
    index = json.loads(files["_index.json"])
    assert [shard["rows"] for shard in index["shards"]] == [25, 25, 10]
    assert sorted(files) == sorted(
        ["_index.json", "_rejected/part-00000.parquet"] + [s["name"] for s in index["shards"]]
    )
    packed = _keys_of(files, ".parquet")
    assert sorted(packed) == sorted(inputs["folder"]) and len(packed) == len(set(packed))


def test_a_store_that_fails_nothing_gives_no_retry_line(
    inputs: dict[str, list[str]], s3_server: str, tmp_path: Path
) -> None:
    """`raeflow shard` (no Ray) through the proxy with every fault off: no `store:` line."""
    calm = FaultyStore(s3_server, error_rate=0.0, reset_rate=0.0)
    out = f"s3://{BUCKET}/out/calm-shards"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "raeflow.cli", "shard", f"s3://{BUCKET}/in/folder", "--out", out],
            env=program_env(calm.url, tmp_path),
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        calm.close()
    assert done.returncode == 0, done.stderr[-3000:]
    assert calm.counts["requests"] > 20 and not calm.faults()
    assert "packed 60 images" in done.stdout and "rejected: none" in done.stdout
    assert "store:" not in done.stdout and _retries_said(done.stdout) == 0
