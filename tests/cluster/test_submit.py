"""`raeflow submit` / `raeflow jobs` and the `jobs/` entrypoints against a real token-auth Ray head.

Inputs and outputs live in a bucket (moto's S3 on loopback), as they must on a multi-node cluster;
the head inherits the test's AWS_* settings, so the job's Ray workers reach the same bucket.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from click.testing import CliRunner, Result

from raeflow.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

NUM_IMAGES = 40


def run(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def raeflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "raeflow.cli", *args]


def cli(args: list[str], env: dict[str, str | None]) -> Result:
    """Run the raeflow CLI in this process (quick: no interpreter start, Ray already imported)."""
    return CliRunner(env=env).invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def bucket(s3_server: str, mnist_digits: tuple[np.ndarray, np.ndarray]) -> str:
    """s3://BUCKET with `images/` (40 real MNIST digits as PNG) and `model/` (a tiny conv bundle)."""
    import boto3
    from PIL import Image

    from raeflow.models import create_model, save_bundle

    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket="cluster-jobs")
    images, _ = mnist_digits
    for index in range(NUM_IMAGES):
        buffer = io.BytesIO()
        Image.fromarray(images[index]).save(buffer, format="PNG")
        client.put_object(Bucket="cluster-jobs", Key=f"images/{index:03d}.png", Body=buffer.getvalue())
    model = create_model("conv", in_channels=1, height=28, width=28, channels=[4, 4])
    save_bundle(model, "s3://cluster-jobs/model")
    return "s3://cluster-jobs"


def assert_complete_embedding_table(out: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    assert fs.exists(f"{out}/_SUCCESS")
    parts = sorted(fs.glob(f"{out}/part-*.parquet"))
    assert parts
    table = pq.ParquetDataset(parts, filesystem=fs).read()
    assert table.num_rows == NUM_IMAGES
    assert sorted(table.column("key").to_pylist()) == [f"{i:03d}" for i in range(NUM_IMAGES)]


def test_submit_embed_waits_and_writes_the_table(head, bucket: str) -> None:
    out = f"{bucket}/emb-submit"
    args = ["--data", f"{bucket}/images", "--model", f"{bucket}/model", "--out", out]
    done = run(raeflow("submit", "embed", "--address", head.address, "--wait", "--", *args), head.env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = done.stdout.splitlines()[0]
    assert job_id.startswith("raeflow-embed-")
    assert "embed: 40 images in, 40 out, 0 rejected" in done.stdout  # the job's summary, followed live
    assert f"Running entrypoint for job {job_id}: python jobs/embed.py --data" in done.stdout
    assert_complete_embedding_table(out)

    status = cli(["jobs", "status", job_id, "--address", head.address], head.auth_env())
    assert status.exit_code == 0 and status.stdout.startswith(f"{job_id}: SUCCEEDED")
    info = requests.get(f"{head.address}/api/jobs/{job_id}", headers=head.auth_header(), timeout=10).json()
    assert info["runtime_env"]["working_dir"].startswith("gcs://_ray_pkg_")  # this checkout travelled
    listing = cli(["jobs", "list", "--address", head.address], head.auth_env())
    assert any(line.startswith(job_id) and "SUCCEEDED" in line for line in listing.stdout.splitlines())
    logs = cli(["jobs", "logs", job_id, "--address", head.address], head.auth_env())
    assert logs.exit_code == 0 and "embed: 40 images in, 40 out" in logs.stdout


def test_rays_own_job_cli_runs_the_same_entrypoint(head, bucket: str) -> None:
    out = f"{bucket}/emb-ray-cli"
    env = head.env() | {"RAY_AUTH_MODE": "token"}  # Ray's CLI sends the token only in token mode
    command = [str(BIN / "ray"), "job", "submit", "--address", head.address, "--working-dir", str(REPO)]
    command += ["--", "python", "jobs/embed.py"]
    command += ["--data", f"{bucket}/images", "--model", f"{bucket}/model", "--out", out]
    done = run(command, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert_complete_embedding_table(out)


def test_failing_job_exits_non_zero_and_shows_the_jobs_error(head, tmp_path) -> None:
    # --no-code: the head runs the raeflow installed where it runs (here: this checkout, editable).
    missing = tmp_path / "no-such-model"
    args = ["--data", "builtin:digits", "--model", str(missing), "--out", str(tmp_path / "out")]
    submit = raeflow("submit", "embed", "--address", head.address, "--wait", "--no-code", "--", *args)
    done = run(submit, head.env())
    assert done.returncode == 2
    assert "Running entrypoint for job raeflow-embed-" in done.stdout  # the logs were followed
    assert "python -m raeflow.cli embed" in done.stdout
    job_id = done.stdout.splitlines()[0]
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: job {job_id} failed")
    assert str(missing) in error  # the job's own one-line error, not just "it failed"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["no token", "wrong token"])
def test_head_refuses_a_submission_without_the_right_token(head, token: str | None) -> None:
    # The head itself refuses: 401 without a token, 403 with a wrong one.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = requests.get(f"{head.address}/api/jobs/", headers=headers, timeout=10)
    assert answer.status_code == (403 if token else 401)

    done = run(raeflow("submit", "embed", "--address", head.address, "--", "--help"), head.env(token))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    if token is None:
        assert "requires a token and none was found" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]
    else:
        assert "refused the token from RAY_AUTH_TOKEN" in lines[0]


def test_unreachable_head_and_unknown_job_are_one_line_errors(head) -> None:
    nowhere = head.unused_address()
    done = cli(["jobs", "list", "--address", nowhere], head.auth_env())
    assert done.exit_code == 2 and done.stderr.strip().splitlines() == [
        f"error: cannot reach the Ray Jobs API at {nowhere}: is the cluster up, and the tunnel open "
        "(`ray dashboard cluster.yaml`)? Pass --address or set RAY_ADDRESS"
    ]
    done = cli(["jobs", "status", "raeflow-embed-00000000", "--address", head.address], head.auth_env())
    assert done.exit_code == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no job 'raeflow-embed-00000000' on the cluster at {head.address}"
    ]


def test_submitted_train_joins_the_head_and_writes_a_bundle(head, bucket: str) -> None:
    # The job's driver runs on the head with RAY_ADDRESS set: it joins that cluster and must not
    # size it (Ray refuses num_cpus when joining), then trains on the head's 2 CPUs.
    out = f"{bucket}/train-submit"
    args = ["--data", f"{bucket}/images", "--model", "conv", "--epochs", "1", "--out", out]
    done = run(
        raeflow("submit", "train", "--address", head.address, "--wait", "--", *args), head.env(), timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "epoch 1/1" in done.stdout and f"model bundle: {out}/model" in done.stdout
    import s3fs

    assert s3fs.S3FileSystem().exists(f"{out}/model/bundle.json")
