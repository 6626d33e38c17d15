"""The bookkeeping files of a batch job: `_manifest/`, `_rejected/`, `_SUCCESS`, and resume.

    _manifest/job.json                   what job this folder holds: kind, model fingerprint, settings
    _manifest/lease.json                 which run writes the folder now (`raeflow.batch.lease`)
    _manifest/shard-00007.json           one per finished input shard: rows in/out/rejected, its files,
                                         bytes, the nodes that wrote them, seconds
    _manifest/keys-00007.bin             8-byte hashes of the shard's keys (the key-collision check)
    _rejected/part-00007-000000.parquet  images of shard 7 that could not be used: key, source, reason
    _SUCCESS                             written last, when every shard is finished

The workers write the outputs and `_rejected/` parts; the driver writes a shard's record only
after every row of the shard is accounted for by written parts, so a record means the shard is
complete. A rerun skips recorded shards, deletes the partial outputs of the others and redoes
them. A folder that holds another job (another model or other output settings) is refused; so is
one that another run writes now (its lease), and a run that lost its lease writes no more records.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raeflow import __version__
from raeflow.batch.lease import Lease
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
    """Worker seconds spent predicting and writing the shard's pieces (summed over its pieces)."""
    outputs: tuple[str, ...] = ()
    """Relative paths of the files written for the shard (a folder mirror lists none: one file per image)."""
    bytes: int = 0
    """Bytes of the files written for the shard."""
    nodes: tuple[str, ...] = ()
    """Ray node ids of the workers that wrote the shard's pieces."""
    compute: tuple[dict[str, Any], ...] = ()
    """How the model ran for the shard: one `{node, precision, native_bf16, threads}` per distinct
    node and setting, from the workers' commit records (none in records written before)."""


def record_name(index: int) -> str:
    """Relative path of the manifest record of shard `index`."""
    return f"{MANIFEST_DIR}/shard-{index:05d}.json"


def keys_name(index: int) -> str:
    """Relative path of the key hashes of shard `index`."""
    return f"{MANIFEST_DIR}/keys-{index:05d}.bin"


class Manifest:
    """Reads and writes the bookkeeping files of one output folder."""

    def __init__(self, out: OutputDir, lease: Lease | None = None) -> None:
        self.out = out
        self.lease = lease
        """The run's lease on the folder: records and `_SUCCESS` are written only while it is held."""

    def check(self, job: str, fingerprint: str, settings: dict[str, Any], num_shards: int) -> bool:
        """Whether the folder already holds this job (a rerun); reads only.

        Raises `JobError` when it holds another model's or other settings' output, or other files.
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
        if self.out.is_file():
            raise JobError(f"--out {self.out.url()} is a file; give a folder (new or empty)")
        foreign = [name for name in self.out.list("") if not name.startswith("_")]
        if foreign:
            raise JobError(
                f"{self.out.url()} is not empty and holds no raeflow job ({foreign[0]}, ...); "
                "write to a new or empty --out"
            )
        return False

    def claim(self, job: str, fingerprint: str, settings: dict[str, Any], num_shards: int) -> bool:
        """Record which job this folder holds, or check that it already holds the same one.

        Returns True when the folder held this job before (a rerun). Raises `JobError` when it
        holds another model's or other settings' output.
        """
        if self.check(job, fingerprint, settings, num_shards):
            return True
        wanted = {"job": job, "model": fingerprint, "settings": settings, "num_shards": num_shards}
        body = dict(wanted, version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.out.put(JOB_FILE, json.dumps(body, indent=1, sort_keys=True).encode())
        return False

    def finished(self, known: dict[int, ShardRecord] | None = None) -> dict[int, ShardRecord]:
        """Records of the shards finished so far, by shard index; those in `known` are not read again."""
        records = dict(known or {})
        for name in self.out.list(MANIFEST_DIR):
            if name.startswith("shard-") and name.endswith(".json"):
                if name[6:-5].isdigit() and int(name[6:-5]) in records:
                    continue
                body = json.loads(self.out.read(f"{MANIFEST_DIR}/{name}"))
                body["outputs"] = tuple(body.get("outputs", ()))
                body["nodes"] = tuple(body.get("nodes", ()))
                body["compute"] = tuple(body.get("compute", ()))
                record = ShardRecord(**body)
                records[record.shard] = record
        return records

    def write_record(self, record: ShardRecord, hashes: np.ndarray) -> None:
        """Mark a shard finished (its key hashes first); call only when all its outputs are written.

        Raises `JobError` when the run no longer holds the folder's lease."""
        if self.lease is not None:
            self.lease.ensure_held()
        self.out.put(keys_name(record.shard), hashes.astype("<u8").tobytes())
        self.out.put(record_name(record.shard), json.dumps(asdict(record), sort_keys=True).encode())

    def key_hashes(self, index: int) -> np.ndarray:
        """The key hashes of finished shard `index` (empty for records written before hashes were kept)."""
        if not self.out.exists(keys_name(index)):
            return np.zeros(0, dtype=np.uint64)
        return np.frombuffer(self.out.read(keys_name(index)), dtype="<u8").astype(np.uint64)

    def remove_partial(self, prefixes: list[tuple[str, str]], unfinished: set[int]) -> int:
        """Delete the files `folder/<prefix><shard>-...` of unfinished shards; returns how many."""
        removed = 0
        for folder in sorted({folder for folder, _ in prefixes}):
            for name in self.out.list(folder):
                for _, prefix in (p for p in prefixes if p[0] == folder):
                    digits = name[len(prefix) : len(prefix) + 5]
                    if name.startswith(prefix) and digits.isdigit() and int(digits) in unfinished:
                        self.out.remove_tree(f"{folder}/{name}" if folder else name)
                        removed += 1
                        break
        return removed

    def mark_success(self, summary: dict[str, Any]) -> None:
        """Write `_SUCCESS` (the job's summary as JSON); `JobError` when the run lost the folder's lease."""
        if self.lease is not None:
            self.lease.ensure_held()
        self.out.put(SUCCESS_FILE, json.dumps(summary, indent=1, sort_keys=True, default=str).encode())

    def clear_success(self) -> None:
        """Remove `_SUCCESS` (a rerun that has work to do)."""
        self.out.remove(SUCCESS_FILE)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
