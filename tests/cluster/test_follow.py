"""Following a job's logs survives a broken log stream, and a failed job's error reads in one line."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from raeflow.cluster.submit import ClusterClient, raise_unless_succeeded
from raeflow.errors import JobError

LOGS = "loading bundle\nshard 1/2 done\nshard 2/2 done\nembed: 40 images in, 40 out, 0 rejected\n"


class BrokenStreamJobs:
    """A Jobs API whose log stream dies after the first chunk while the job goes on to succeed."""

    def __init__(self) -> None:
        self.states = iter(["RUNNING", "RUNNING", "RUNNING", "SUCCEEDED"])

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        yield LOGS[:15]
        raise RuntimeError("Connection closed unexpectedly")

    def get_job_info(self, job_id: str) -> SimpleNamespace:
        return SimpleNamespace(status=next(self.states, "SUCCEEDED"), message="")

    def get_job_logs(self, job_id: str) -> str:
        return LOGS


def test_follow_falls_back_to_polling_and_shows_every_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("raeflow.cluster.submit.time.sleep", lambda seconds: None)
    client = ClusterClient.__new__(ClusterClient)
    client.address, client.token, client._client = "http://head:8265", None, BrokenStreamJobs()
    out = io.StringIO()
    info = client.follow("raeflow-embed-1", out)
    assert info.status == "SUCCEEDED"
    assert out.getvalue() == LOGS


def test_failed_job_error_is_one_line_with_the_jobs_own_error() -> None:
    info = SimpleNamespace(
        status="FAILED",
        message=(
            "Job entrypoint command failed with exit code 2, last available logs "
            "(truncated to 20,000 chars):\n"
            "Running entrypoint for job raeflow-embed-1: python jobs/embed.py --model s3://b/m\n"
            "error: no model bundle at s3://b/m: the folder does not exist\n"
        ),
    )
    with pytest.raises(JobError) as raised:
        raise_unless_succeeded("raeflow-embed-1", info)
    assert str(raised.value) == (
        "job raeflow-embed-1 failed (Job entrypoint command failed with exit code 2): "
        "error: no model bundle at s3://b/m: the folder does not exist"
    )
    raise_unless_succeeded("raeflow-embed-1", SimpleNamespace(status="SUCCEEDED", message=None))
