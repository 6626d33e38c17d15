"""How many store requests this process retried: botocore's retries, and s3fs's own on top of them.

    before = store_retries()
    ...                                   # reads and writes through s3fs
    made = store_retries() - before       # StoreRetries(botocore=3, s3fs=1)

`count_store_retries()` starts counting; `raeflow.data.sources.location` calls it on import, so
every raeflow process counts (the driver, Ray Data's read tasks, the predictor actors, the
shard-finishing tasks). Each process counts its own: a batch worker sends what it retried in its
commit records, and the job's summary adds them up (`raeflow.batch.summary`).

- botocore: a handler of `after-call.s3` and `after-call-error.s3` in every botocore session made
  from then on, s3fs's included (s3fs makes its own inside `S3FileSystem.set_session`, so no
  session of ours could hold the handler; botocore registers `botocore.handlers.BUILTIN_HANDLERS`
  in each session it makes, aiobotocore's too). A call's retries are its answer's
  `ResponseMetadata.RetryAttempts`, or, when it ended in a connection error, its last attempt
  less one (`context["retries"]["attempt"]`, which botocore keeps for the `amz-sdk-request` header).
- s3fs: its retry loop (`s3fs.core._error_wrapper`, 5 tries: cut bodies, closed connections, read
  timeouts, SlowDown) calls botocore again and says so only in a debug record of its logger
  ("Retryable error: ...", or "Client error (maybe retryable): ..." for an error it retries by its
  text). A filter on the `s3fs` logger counts those records and passes on only what the logger
  showed before (its level is lowered to DEBUG for that; `S3FS_LOGGING_LEVEL`, s3fs's own switch,
  still shows its debug lines). A try s3fs gives up on after its last is counted too: the error
  then ends the job, whose summary is not shown. Reading its log rather than wrapping its private
  retry loop keeps working as long as s3fs logs these lines; `tests/faults/test_flaky_store.py`
  checks that both counts move against a store that fails.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

S3FS_RETRIED_CLIENT_ERRORS = ("SlowDown", "reduce your request rate", "XAmzContentSHA256Mismatch")
"""The error texts for which s3fs retries a `ClientError` (as its `_error_wrapper` lists them)."""


@dataclass(frozen=True)
class StoreRetries:
    """Store requests retried, by the layer that retried them."""

    botocore: int = 0
    """Retries botocore made inside one client call (`AWS_MAX_ATTEMPTS` attempts at most)."""
    s3fs: int = 0
    """Client calls that s3fs made again after a failed one (5 tries at most)."""

    @property
    def total(self) -> int:
        """Every retried request."""
        return self.botocore + self.s3fs

    def __add__(self, other: StoreRetries) -> StoreRetries:
        return StoreRetries(self.botocore + other.botocore, self.s3fs + other.s3fs)

    def __sub__(self, other: StoreRetries) -> StoreRetries:
        return StoreRetries(self.botocore - other.botocore, self.s3fs - other.s3fs)

    def line(self) -> str | None:
        """`37 requests retried (botocore 30, s3fs 7)`; None when nothing was retried."""
        if not self.total:
            return None
        noun = "request" if self.total == 1 else "requests"
        return f"{self.total:,} {noun} retried (botocore {self.botocore:,}, s3fs {self.s3fs:,})"


_lock = threading.Lock()
_counts = {"botocore": 0, "s3fs": 0}
_installed = False


def store_retries() -> StoreRetries:
    """The store requests this process has retried since it started counting."""
    with _lock:
        return StoreRetries(**_counts)


def _add(layer: str, number: int) -> None:
    if number > 0:
        with _lock:
            _counts[layer] += number


def _after_call(parsed: Any = None, context: Any = None, **kwargs: Any) -> None:
    """botocore's `after-call`: the call's answer (maybe an error answer) says how often it was retried."""
    metadata = parsed.get("ResponseMetadata", {}) if isinstance(parsed, dict) else {}
    _add("botocore", int(metadata.get("RetryAttempts") or 0))


def _after_call_error(context: Any = None, **kwargs: Any) -> None:
    """botocore's `after-call-error`: a call that ended without an answer, after its last attempt."""
    attempt = (context or {}).get("retries", {}).get("attempt", 1)
    _add("botocore", int(attempt) - 1)


class _S3fsRetryRecords(logging.Filter):
    """Counts s3fs's retry records and passes on the records at or above `shown_from`."""

    def __init__(self, shown_from: int) -> None:
        super().__init__()
        self.shown_from = shown_from

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.DEBUG and _is_s3fs_retry(record):
            _add("s3fs", 1)
        return record.levelno >= self.shown_from


def _is_s3fs_retry(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    if message.startswith("Retryable error"):
        return True
    if message.startswith("Client error (maybe retryable)"):
        return any(text in record.getMessage() for text in S3FS_RETRIED_CLIENT_ERRORS)
    return False


def count_store_retries() -> None:
    """Start counting this process's store retries (once; later calls do nothing)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    try:
        from botocore import handlers
    except ImportError:  # no S3 support installed: nothing to count
        return
    handlers.BUILTIN_HANDLERS.append(("after-call.s3", _after_call))
    handlers.BUILTIN_HANDLERS.append(("after-call-error.s3", _after_call_error))
    wanted = os.environ.get("S3FS_LOGGING_LEVEL", "").upper()
    if wanted:  # s3fs sets its logger's level when imported: let it do so first
        import s3fs  # noqa: F401
    logger = logging.getLogger("s3fs")
    shown_from = logging.getLevelName(wanted) if wanted else logger.getEffectiveLevel()
    logger.addFilter(_S3fsRetryRecords(shown_from if isinstance(shown_from, int) else logging.WARNING))
    logger.setLevel(logging.DEBUG)
