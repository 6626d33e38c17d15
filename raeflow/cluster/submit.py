"""The Ray Jobs API client behind `raeflow submit` and `raeflow jobs`.

    raeflow submit embed --address http://127.0.0.1:8265 --wait -- --data s3://b/imgs --model s3://b/m --out s3://b/emb

A job runs one raeflow command (`train`, `embed`, `denoise`, `report`) on the cluster through its
entrypoint in `jobs/`. The job's runtime environment carries the raeflow code that submitted it,
so a cluster whose nodes have an older raeflow installed still runs the submitted one; `--no-code`
runs the raeflow installed on the cluster instead. Every request carries the cluster's token
(`raeflow.cluster.auth`); refusals, unreachable heads and unknown jobs become one-line
`RaeflowError`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import raeflow
from raeflow.cluster.auth import HOW_TO_GET_A_TOKEN, ClusterToken, find_token
from raeflow.errors import ConfigError, JobError, RaeflowError

JOBS = ("train", "embed", "denoise", "report")
"""raeflow commands that run as cluster jobs, each through `jobs/<name>.py`."""

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
"""The Jobs API of a head on this machine, or of a remote head through `ray dashboard cluster.yaml`."""

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
"""Job states after which nothing more happens."""

RETRY_FOR_S = 120.0
"""How long a submission keeps retrying a head that is not ready yet (just started, agent coming up)."""
RETRY_FIRST_WAIT_S = 1.0
"""First pause between retries; it doubles up to `RETRY_MAX_WAIT_S`."""
RETRY_MAX_WAIT_S = 10.0
"""Longest pause between retries."""
TRANSIENT_ANSWERS = ("No available agent", "please try again later")
"""Jobs API answers that mean "not yet" (a head still starting), not "no"; so do 502/503/504."""


class _NotReady(Exception):
    """The head answered in a way that may change in a few seconds (see `TRANSIENT_ANSWERS`)."""


CODE_EXCLUDES = [
    "/.venv",
    "/.git",
    "/data",
    "/tests",
    "/bench",
    "/docs",
    "/demo-out",
    "/bench-out",
    "/runs",
    "__pycache__",
    "*.egg-info",
    "*.pyc",
]
"""Paths of a checkout that never travel with a job (Ray also skips what .gitignore lists)."""


def resolve_address(address: str | None) -> str:
    """The Jobs API URL: `address`, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS (as Ray's CLI does)."""
    address = (
        address
        or os.environ.get("RAY_API_SERVER_ADDRESS")
        or os.environ.get("RAY_ADDRESS")
        or DEFAULT_ADDRESS
    )
    if address == "auto" or address.startswith("ray://"):
        raise ConfigError(
            f"{address!r} is not a Jobs API address: pass --address http://HEAD:8265 "
            "(or set RAY_ADDRESS to it)"
        )
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


@dataclass(frozen=True)
class JobCode:
    """How a job gets raeflow's code: its runtime environment and the command that starts it."""

    runtime_env: dict[str, Any]
    """Ray runtime environment (working_dir or py_modules carrying raeflow), empty with --no-code."""
    command: list[str]
    """Entrypoint command before the job's own arguments."""


def job_code(job: str, *, ship_code: bool = True) -> JobCode:
    """The runtime environment and entrypoint that run `raeflow <job>` on the cluster.

    From a checkout (a `jobs/` folder beside the package) the checkout travels as the job's
    working_dir and `jobs/<job>.py` runs; from an installed package the package travels as a
    py_module and `python -m raeflow.cli <job>` runs. `ship_code=False` ships nothing.
    """
    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}: choose one of {', '.join(JOBS)}")
    if not ship_code:
        return JobCode({}, ["python", "-m", "raeflow.cli", job])
    package_dir = Path(raeflow.__file__).resolve().parent
    checkout = package_dir.parent
    if (checkout / "jobs" / f"{job}.py").is_file():
        return JobCode(
            {"working_dir": str(checkout), "excludes": list(CODE_EXCLUDES)}, ["python", f"jobs/{job}.py"]
        )
    return JobCode(
        {"py_modules": [str(package_dir)], "excludes": ["__pycache__", "*.pyc"]},
        ["python", "-m", "raeflow.cli", job],
    )


class ClusterClient:
    """A connection to one head's Jobs API, authenticated with the cluster's token when one is found."""

    def __init__(
        self, address: str | None = None, token: ClusterToken | None = None, *, retry_for_s: float = 0.0
    ) -> None:
        """`retry_for_s` > 0: keep retrying "not ready yet" answers (a head that is still starting)
        that long, with backoff and one waiting line on stderr, before giving up."""
        self.address = resolve_address(address)
        self.token = token if token is not None else find_token()
        self.retry_for_s = retry_for_s
        self._announced = False
        headers = self.token.http_headers() if self.token else {}
        from ray.job_submission import JobSubmissionClient

        _quiet_ray_client_logs()  # after importing ray, which sets up its loggers

        self._client = self._retrying(lambda: JobSubmissionClient(self.address, headers=headers))

    def _retrying(self, call: Any, job_id: str | None = None) -> Any:
        """`call()` with the Jobs API's answers made one-line errors; transient ones retried for a while."""
        deadline = time.monotonic() + self.retry_for_s
        pause = RETRY_FIRST_WAIT_S
        while True:
            try:
                with self._answers(job_id, retry=self.retry_for_s > 0):
                    return call()
            except _NotReady as not_ready:
                if time.monotonic() + pause > deadline:
                    raise RaeflowError(
                        f"the Ray head at {self.address} was still not ready after {self.retry_for_s:.0f} s "
                        f"({not_ready}); check it with `ray status` on the head, then submit again"
                    ) from None
                if not self._announced:
                    self._announced = True
                    print(
                        f"waiting for the Ray head at {self.address} to accept jobs ({not_ready}); "
                        f"retrying for up to {self.retry_for_s:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                time.sleep(pause)
                pause = min(2 * pause, RETRY_MAX_WAIT_S)

    @contextlib.contextmanager
    def _answers(self, job_id: str | None = None, *, retry: bool = False) -> Iterator[None]:
        """Turn the Jobs API's refusals and failures into one-line RaeflowErrors.

        With `retry`, answers that mean "not yet" (connection refused, 502/503, "No available agent")
        raise `_NotReady` instead; refusals (401/403) and bad requests stay final.
        """
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as err:
            raise RaeflowError(self._auth_problem(str(err))) from None
        except (ConnectionError, requests.exceptions.ConnectionError):
            if retry:
                raise _NotReady("nothing answers yet") from None
            raise RaeflowError(
                f"cannot reach the Ray Jobs API at {self.address}: is the cluster up, and the tunnel open "
                "(`ray dashboard cluster.yaml`)? Pass --address or set RAY_ADDRESS"
            ) from None
        except RuntimeError as err:
            text = str(err)
            if job_id and ("404" in text or "does not exist" in text):
                raise RaeflowError(f"no job {job_id!r} on the cluster at {self.address}") from None
            if retry and _is_transient(text):
                raise _NotReady(_first_line(text)[:160]) from None
            raise RaeflowError(f"the Ray head at {self.address} answered: {_first_line(text)}") from None

    def _auth_problem(self, text: str) -> str:
        """A one-line account of why the head refused this client."""
        if self.token is None:
            return f"the Ray head at {self.address} requires a token and none was found: {HOW_TO_GET_A_TOKEN}"
        if text.startswith("Authentication failed"):
            return (
                f"the Ray head at {self.address} refused the token from {self.token.origin}: "
                "it is not this cluster's token (`ray get-auth-token` on the head prints the right one)"
            )
        return f"the Ray head at {self.address} refused the request: {_first_line(text)}"

    def submit(self, job: str, args: list[str], *, ship_code: bool = True) -> str:
        """Submit `raeflow <job> <args>` to the cluster; returns the submission id."""
        code = job_code(job, ship_code=ship_code)
        submission_id = f"raeflow-{job}-{secrets.token_hex(4)}"
        return self._retrying(
            lambda: self._client.submit_job(
                entrypoint=shlex.join([*code.command, *args]),
                runtime_env=code.runtime_env or None,
                submission_id=submission_id,
                metadata={"raeflow.job": job, "raeflow.version": raeflow.__version__},
            )
        )

    def status(self, job_id: str) -> Any:
        """The job's `JobInfo` (status, message, entrypoint, times)."""
        with self._answers(job_id):
            return self._client.get_job_info(job_id)

    def logs(self, job_id: str) -> str:
        """Everything the job's entrypoint printed so far."""
        with self._answers(job_id):
            return self._client.get_job_logs(job_id)

    def stop(self, job_id: str) -> bool:
        """Ask the cluster to stop the job; False when it had already finished."""
        with self._answers(job_id):
            return self._client.stop_job(job_id)

    def list(self) -> list[Any]:
        """Every job the cluster knows, oldest first (`JobDetails`)."""
        with self._answers():
            jobs = self._client.list_jobs()
        return sorted(jobs, key=lambda details: details.start_time or 0)

    def follow(self, job_id: str, out: IO[str]) -> Any:
        """Write the job's logs to `out` as they come until it ends; returns its final `JobInfo`."""
        num_written = 0

        async def tail() -> None:
            nonlocal num_written
            async for chunk in self._client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()
                num_written += len(chunk)

        self.status(job_id)  # an unknown id is a one-line error, not a broken stream
        try:
            asyncio.run(tail())
            stream_broke = False
        except Exception:  # noqa: BLE001 - the stream broke (proxy, network); poll the job instead
            stream_broke = True
        while (info := self.status(job_id)).status not in TERMINAL_STATES:
            time.sleep(2.0)
        if stream_broke:
            out.write(self.logs(job_id)[num_written:])  # logs only grow: the rest follows what was shown
            out.flush()
        return info


def raise_unless_succeeded(job_id: str, info: Any) -> None:
    """Raise `JobError` with the job's error in one line unless the job succeeded."""
    if str(info.status) == "SUCCEEDED":
        return
    message = info.message or ""
    reason = _first_line(message).split(", last available logs")[0]
    lines = [line.strip() for line in message.splitlines()[1:] if line.strip()]
    detail = f": {lines[-1]}" if lines else ""
    raise JobError(f"job {job_id} {str(info.status).lower()} ({reason}){detail}")


def _quiet_ray_client_logs() -> None:
    """Keep Ray's client-side INFO lines (packaging, websocket) out of raeflow's output."""
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It warns that .git and .venv are not uploaded, which is what raeflow wants anyway.
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    # It warns of a missing token before the request; raeflow reports the head's refusal instead.
    logging.getLogger("ray._private.authentication.http_token_authentication").setLevel(logging.ERROR)


def _is_transient(text: str) -> bool:
    """Whether a Jobs API failure means "try again shortly" (see `TRANSIENT_ANSWERS`)."""
    first = _first_line(text)
    if "status code" in first:
        code = first.split("status code", 1)[1].strip()[:3]
        if code in ("502", "503", "504"):
            return True
    return any(marker in text for marker in TRANSIENT_ANSWERS[:2])


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "(no message)"
