"""Object-store mistakes are one `error:` line with exit code 2, found before Ray starts.

Every command that reads or writes a bucket (embed, denoise, report, train, shard) is run through
the real CLI against the moto S3 server, once with the bucket as --data and once as --out, for:
no credentials, access denied (moto's IAM checks, switched on for the test), no such bucket and an
endpoint where nothing listens. A wrong region is not testable here: moto serves every bucket in
every region; `explain` is checked on the error AWS sends instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
import requests
import s3fs
from click.testing import CliRunner

from raeflow import connection
from raeflow.cli import main
from raeflow.data.images import encode_image
from raeflow.data.sources.object_store import explain, probe
from raeflow.errors import ConfigError, SourceError

BUCKET = "raeflow-probe"
MISSING_BUCKET = "raeflow-no-such-bucket"
CREDENTIAL_SETTINGS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)
"""Every place botocore finds credentials in the environment."""

COMMANDS = {
    "embed": lambda data, out: ["embed", "--data", data, "--model", "builtin:mnist-conv", "--out", out],
    "denoise": lambda data, out: ["denoise", "--data", data, "--model", "builtin:denoise-grey", "--out", out],
    "report": lambda data, out: ["report", "--data", data, "--model", "builtin:mnist-conv", "--out", out],
    "train": lambda data, out: ["train", "--data", data, "--model", "conv", "--out", out],
    "shard": lambda data, out: ["shard", data, "--out", out],
}
"""Each command's arguments for a --data and an --out (shard's SRC is its --data)."""

SAYS = {
    "no credentials": "no credentials found for s3://: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "access denied": f"access denied to bucket '{BUCKET}'",
    "no such bucket": f"no such bucket '{MISSING_BUCKET}'",
    "unreachable": "cannot reach the endpoint http://127.0.0.1:",
}


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def bucket(s3_server: str) -> str:
    """A bucket holding a folder of digits, `s3://raeflow-probe/pics`."""
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=BUCKET)
    for i in range(3):
        pixels = np.full((28, 28, 1), 40 * i, dtype=np.uint8)
        client.put_object(Bucket=BUCKET, Key=f"pics/{i}.png", Body=encode_image(pixels))
    return f"s3://{BUCKET}"


@pytest.fixture(scope="module")
def refused_keys(s3_server: str) -> tuple[str, str]:
    """The access key of an IAM user without any policy: the store knows it and refuses it."""
    iam = boto3.client("iam", endpoint_url=s3_server)
    iam.create_user(UserName="raeflow-nobody")
    key = iam.create_access_key(UserName="raeflow-nobody")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture()
def store_checks_access(s3_server: str) -> Iterator[None]:
    """moto checks every request's credentials and permissions (IAM) while the test runs."""
    requests.post(f"{s3_server}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        yield
    finally:
        requests.post(f"{s3_server}/moto-api/reset-auth", data=b"inf", timeout=10).raise_for_status()


@pytest.fixture(autouse=True)
def fresh_filesystems() -> Iterator[None]:
    """Each case builds its S3 filesystem from its own environment (fsspec caches instances)."""
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def set_case(case: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: tuple[str, str]) -> None:
    """Point the AWS settings of this process at what `case` needs."""
    if case == "no credentials":
        for name in CREDENTIAL_SETTINGS:
            monkeypatch.delenv(name, raising=False)
        empty = tmp_path / "empty"
        empty.write_text("")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    elif case == "access denied":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys[0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys[1])
    elif case == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # the default retries are checked in a subprocess below


@pytest.fixture()
def ray_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each start of (or join to) a Ray by a command run in this process; none happens for real."""
    started: list[str] = []

    def refuse(target, *args, **kwargs) -> None:
        started.append(str(target))
        raise AssertionError("the command started Ray before finding the object-store error")

    monkeypatch.setattr(connection, "_start_and_route", refuse)
    return started


@pytest.mark.parametrize("role", ["--data", "--out"])
@pytest.mark.parametrize("case", ["no credentials", "access denied", "no such bucket", "unreachable"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_says_the_store_error_in_one_line_before_ray(
    command: str,
    case: str,
    role: str,
    bucket: str,
    refused_keys: tuple[str, str],
    ray_starts: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    name = MISSING_BUCKET if case == "no such bucket" else BUCKET
    uri = f"s3://{name}/pics" if role == "--data" else f"s3://{name}/out-{command}"
    data, out = (uri, str(tmp_path / "out")) if role == "--data" else ("builtin:digits", uri)
    set_case(case, monkeypatch, tmp_path, refused_keys)
    if case == "access denied":
        request.getfixturevalue("store_checks_access")

    result = CliRunner().invoke(main, COMMANDS[command](data, out))

    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    where = "SRC" if command == "shard" and role == "--data" else role
    assert lines[0].startswith(f"error: {where} {uri}: {SAYS[case]}"), lines[0]
    assert result.stdout == ""
    assert ray_starts == []
    assert not (tmp_path / "out").exists()


def test_a_bucket_listed_and_found_passes(bucket: str) -> None:
    probe(f"{bucket}/pics", "--data")
    probe(f"{bucket}/pi*.png", "--data")
    probe(f"{bucket}/new-output", "--out", output=True)  # an output prefix may be empty
    with pytest.raises(SourceError, match=rf"^--data {bucket}/nothing: no such file or folder"):
        probe(f"{bucket}/nothing", "--data")


def test_the_store_error_of_a_missing_bucket_output_says_to_create_it(s3_server: str) -> None:
    with pytest.raises(ConfigError, match=f"--out s3://{MISSING_BUCKET}/x: no such bucket .* create it"):
        probe(f"s3://{MISSING_BUCKET}/x", "--out", output=True)


def test_wrong_region_and_refused_keys_are_explained() -> None:
    from botocore.exceptions import ClientError

    def aws_error(code: str, message: str) -> OSError:
        err = OSError(message)
        err.__cause__ = ClientError({"Error": {"Code": code, "Message": message}}, "ListObjectsV2")
        return err

    region = aws_error(
        "AuthorizationHeaderMalformed", "the region 'us-east-1' is wrong; expecting 'eu-west-1'"
    )
    said = str(explain("s3://b/x", region, "--data"))
    assert said.startswith("--data s3://b/x: bucket 'b' is not in region") and "expecting 'eu-west-1'" in said
    said = str(explain("s3://b/x", aws_error("SignatureDoesNotMatch", "no"), "--out"))
    assert said == (
        "--out s3://b/x: the secret key does not match the access key id: "
        "check AWS_SECRET_ACCESS_KEY / AWS_PROFILE"
    )
    # Local paths keep their own errors; anything that is not a store's refusal is not explained.
    assert explain("/local/x", PermissionError("denied"), "--data") is None
    assert explain("s3://b/x", ValueError("a bug"), "--data") is None


BIN = Path(sys.executable).parent


def run_program(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float, bool]:
    """The installed `raeflow` program (it starts Ray early while it loads), its seconds, and whether it
    started a Ray (Ray's session files go to a fresh folder)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        started = time.monotonic()
        done = subprocess.run(
            [str(BIN / "raeflow"), *args],
            capture_output=True,
            text=True,
            env={**env, "RAY_TMPDIR": str(ray_tmp)},
            timeout=120,
        )
        return done, time.monotonic() - started, (ray_tmp / "ray").exists()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize(
    ("command", "role", "case"),
    [("embed", "--data", "no credentials"), ("train", "--out", "unreachable")],
)
def test_the_program_exits_before_its_early_ray_starts(
    command: str, role: str, case: str, bucket: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_SETTINGS or case != "no credentials"}
    if case == "no credentials":
        empty = tmp_path / "empty"
        empty.write_text("")
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty))
    else:
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{closed_port()}"  # botocore's own retries included
    uri = f"{bucket}/pics" if role == "--data" else f"{bucket}/out"
    data, out = (uri, str(tmp_path / "out")) if role == "--data" else ("builtin:digits", uri)

    done, seconds, ray_started = run_program(COMMANDS[command](data, out), env)

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {role} {uri}: {SAYS[case]}"), done.stderr
    assert not ray_started
    assert seconds < 60
