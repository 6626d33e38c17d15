"""The bookkeeping files of a batch job: `_manifest/`, `_rejected/`, `_SUCCESS`, and resume.

    _manifest/job.json            what job this folder holds: kind, model fingerprint, settings
    _manifest/shard-00007.json    one per finished input shard: rows in/out/rejected, seconds
    _rejected/part-00007.parquet  images of shard 7 that could not be used: key, source, reason
    _SUCCESS                      written last, when every shard is finished

A shard's record is written only after its outputs and its rejected list, so a record means the
shard is complete; a rerun skips recorded shards and redoes the rest. A folder that holds another
job (another model or other output settings) is refused instead of mixed.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raeflow import __version__
from raeflow.batch.output import OutputDir
from raeflow.errors import JobError

MANIFEST_DIR = "_manifest"
REJECTED_DIR = "_rejected"
SUCCESS_FILE = "_SUCCESS"
JOB_FILE = f"{MANIFEST_DIR}/job.json"

REJECTED_SCHEMA = pa.schema([("key", pa.string()), ("source", pa.string()), ("reason", pa.string())])
"""Columns of the `_rejected/` table."""


@dataclass(frozen=True)
class ShardRecord:
    """What one finished input shard produced."""

    shard: int
    """The shard's index in the source's shard list."""
    name: str
    """The shard's stable name (e.g. its file)."""
    rows_in: int
    """Images read from the shard."""
    rows_out: int
    """Images written to the output."""
    rows_rejected: int
    """Images that could not be used (listed in `_rejected/`)."""
    seconds: float
    """Wall time from the shard's first row reaching the driver to its record being written."""
    outputs: tuple[str, ...] = ()
    """Relative paths of the files written for the shard (empty for one file per image)."""


def record_name(index: int) -> str:
    """Relative path of the manifest record of shard `index`."""
    return f"{MANIFEST_DIR}/shard-{index:05d}.json"


def rejected_name(index: int) -> str:
    """Relative path of the rejected table of shard `index`."""
    return f"{REJECTED_DIR}/part-{index:05d}.parquet"


class Manifest:
    """Reads and writes the bookkeeping files of one output folder."""

    def __init__(self, out: OutputDir) -> None:
        self.out = out

    def claim(self, job: str, fingerprint: str, settings: dict[str, Any], num_shards: int) -> bool:
        """Record which job this folder holds, or check that it already holds the same one.

        Returns True when the folder held this job before (a rerun). Raises `JobError` when it
        holds another model's or other settings' output.
        """
        wanted = {"job": job, "model": fingerprint, "settings": settings, "num_shards": num_shards}
        if self.out.exists(JOB_FILE):
            held = json.loads(self.out.read(JOB_FILE))
            for name in ("job", "model", "num_shards", "settings"):
                if held.get(name) != wanted[name]:
                    raise JobError(
                        f"{self.out.url()} already holds the output of another {held.get('job')} run "
                        f"({name} was {_short(held.get(name))}, now {_short(wanted[name])}); "
                        "write to a new --out or delete that folder"
                    )
            return True
        foreign = [name for name in self.out.list("") if not name.startswith("_")]
        if foreign:
            raise JobError(
                f"{self.out.url()} is not empty and holds no raeflow job ({foreign[0]}, ...); "
                "write to a new or empty --out"
            )
        body = dict(wanted, version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.out.put(JOB_FILE, json.dumps(body, indent=1, sort_keys=True).encode())
        return False

    def finished(self) -> dict[int, ShardRecord]:
        """Records of the shards finished so far, by shard index."""
        records = {}
        for name in self.out.list(MANIFEST_DIR):
            if name.startswith("shard-") and name.endswith(".json"):
                body = json.loads(self.out.read(f"{MANIFEST_DIR}/{name}"))
                body["outputs"] = tuple(body.get("outputs", ()))
                record = ShardRecord(**body)
                records[record.shard] = record
        return records

    def write_rejected(self, index: int, rejected: pa.Table) -> None:
        """Write (or, for none, remove) the rejected table of shard `index`."""
        if rejected.num_rows == 0:
            self.out.remove(rejected_name(index))
            return
        buffer = io.BytesIO()
        pq.write_table(rejected.select(REJECTED_SCHEMA.names).cast(REJECTED_SCHEMA), buffer)
        self.out.put(rejected_name(index), buffer.getvalue())

    def write_record(self, record: ShardRecord) -> None:
        """Mark a shard finished; call only after its outputs and rejected table are written."""
        self.out.put(record_name(record.shard), json.dumps(asdict(record), sort_keys=True).encode())

    def is_complete(self) -> bool:
        """Whether `_SUCCESS` exists."""
        return self.out.exists(SUCCESS_FILE)

    def mark_success(self, summary: dict[str, Any]) -> None:
        """Write `_SUCCESS` (the job's summary as JSON)."""
        self.out.put(SUCCESS_FILE, json.dumps(summary, indent=1, sort_keys=True, default=str).encode())

    def clear_success(self) -> None:
        """Remove `_SUCCESS` (a rerun that has work to do)."""
        self.out.remove(SUCCESS_FILE)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
