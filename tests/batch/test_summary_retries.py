"""The `store:` line of a batch job's summary: how many store requests the run retried, only when any."""

from __future__ import annotations

import json

import pyarrow as pa

from raeflow.batch.summary import JobSummary
from raeflow.batch.worker import COMMIT_SCHEMA, retries_in
from raeflow.data.sources.retries import StoreRetries


def _summary() -> JobSummary:
    return JobSummary(
        job="embed", out="s3://b/emb/", num_shards=3, num_shards_skipped=0, images_in=60, images_out=60,
        images_rejected=0, seconds=4.0, images_per_second=15.0, outputs=["s3://b/emb/part-*.parquet"],
    )  # fmt: skip


def test_the_summary_counts_the_retried_requests() -> None:
    summary = _summary()
    summary.count_store_retries(StoreRetries(botocore=30, s3fs=7))
    lines = summary.lines()
    assert "  store:    37 requests retried (botocore 30, s3fs 7)" in lines
    assert lines.index("  store:    37 requests retried (botocore 30, s3fs 7)") < lines.index(
        "  output:   s3://b/emb/part-*.parquet"
    )
    written = json.loads(json.dumps(summary.as_dict()))  # as `_SUCCESS` holds it
    assert written["store_retries"] == 37 and written["store_retries_by"] == {"botocore": 30, "s3fs": 7}
    one = _summary()
    one.count_store_retries(StoreRetries(s3fs=1))
    assert "  store:    1 request retried (botocore 0, s3fs 1)" in one.lines()


def test_a_run_that_retried_nothing_says_nothing_of_it() -> None:
    summary = _summary()
    summary.count_store_retries(StoreRetries())
    assert not [line for line in summary.lines() if "store" in line or "retried" in line]
    assert summary.as_dict()["store_retries"] == 0 and summary.as_dict()["store_retries_by"] == {}


def _record(shard: int, botocore: int, s3fs: int) -> dict:
    return {
        "shard": shard, "first_row": 0, "rows_in": 1, "rows_out": 1, "rows_rejected": 0, "shard_rows": 1,
        "files": [], "bytes": 0, "node": "n", "key_hashes": b"", "seconds": 0.1, "precision": "fp32",
        "native_bf16": True, "threads": 1, "retries_botocore": botocore, "retries_s3fs": s3fs,
    }  # fmt: skip


def test_the_driver_adds_up_the_workers_records() -> None:
    rows = [_record(0, 3, 0), _record(1, 0, 2), _record(2, 4, 1)]
    records = pa.Table.from_pylist(rows, schema=COMMIT_SCHEMA)
    assert retries_in(records) == StoreRetries(botocore=7, s3fs=3)
    assert retries_in(records.slice(0, 0)) == StoreRetries()
