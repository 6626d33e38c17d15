"""`raeflow submit` waits for a head that is still starting, and gives up at once on a refusal."""

from __future__ import annotations

import pytest
from ray.exceptions import AuthenticationError

from raeflow.cluster import submit
from raeflow.cluster.submit import ClusterClient
from raeflow.errors import RaeflowError

NO_AGENT = "Request failed with status code 500: No available agent to submit job, please try again later."


class FlakyJobs:
    """A Jobs API that answers with `failures` one after the other, then accepts the job."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = list(failures)
        self.calls = 0

    def submit_job(self, **kwargs: object) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return str(kwargs["submission_id"])


def client(jobs: FlakyJobs, retry_for_s: float) -> ClusterClient:
    made = ClusterClient.__new__(ClusterClient)
    made.address, made.token, made._client = "http://head:8265", None, jobs
    made.retry_for_s, made._announced = retry_for_s, False
    return made


@pytest.fixture()
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    waited: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(submit.time, "sleep", sleep)
    monkeypatch.setattr(submit.time, "monotonic", lambda: clock[0])
    return waited


def test_transient_answers_are_retried_with_one_waiting_line(sleeps: list[float], capsys) -> None:
    jobs = FlakyJobs(
        [
            RuntimeError(NO_AGENT),
            ConnectionError("refused"),
            RuntimeError("Request failed with status code 502: Bad Gateway"),
            RuntimeError("Request failed with status code 503: Service Unavailable"),
        ]
    )
    job_id = client(jobs, retry_for_s=120).submit("embed", ["--help"])
    assert job_id.startswith("raeflow-embed-") and jobs.calls == 5
    assert sleeps == [1.0, 2.0, 4.0, 8.0]  # backoff
    waiting = capsys.readouterr().err.strip().splitlines()
    assert len(waiting) == 1 and waiting[0].startswith("waiting for the Ray head at http://head:8265")


def test_retrying_stops_after_the_bound(sleeps: list[float]) -> None:
    jobs = FlakyJobs([RuntimeError(NO_AGENT)] * 100)
    with pytest.raises(RaeflowError, match="still not ready after 30 s"):
        client(jobs, retry_for_s=30).submit("embed", [])
    assert sum(sleeps) <= 30


@pytest.mark.parametrize(
    "answer",
    [
        AuthenticationError("Authentication failed: invalid token"),
        RuntimeError("Request failed with status code 400: bad runtime_env"),
    ],
    ids=["refused token", "bad request"],
)
def test_refusals_and_bad_requests_are_final(sleeps: list[float], answer: Exception) -> None:
    jobs = FlakyJobs([answer])
    with pytest.raises(RaeflowError):
        client(jobs, retry_for_s=120).submit("embed", [])
    assert jobs.calls == 1 and sleeps == []
