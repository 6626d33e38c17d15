"""Resume bookkeeping at 1M keys: Ray Data's `CheckpointConfig` against raeflow's per-shard manifest.

    python bench/checkpoint_vs_manifest.py --keys 1000000 --shards 1000 --work /tmp/ckpt-bench

Ray Data (`DataContext.checkpoint_config = CheckpointConfig(id_column="key", ...)`): a read ->
map -> `write_parquet` job over `--keys` string keys in `--shards` Parquet files; then the same job
again over the finished checkpoint (a resume with nothing left to do): seconds, checkpoint files,
and the bytes of the ID array every restore loads and ships to its filter actors.

raeflow (`raeflow.batch.manifest`): the records and 8-byte key hashes of `--shards` finished
shards; what a rerun does before any work (read every record, the key hashes, the collision
check): seconds and the driver's memory growth.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _keys_dataset(root: Path, keys: int, shards: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    per = keys // shards
    for s in range(shards):
        names = [f"photos/{s:05d}/{i:07d}" for i in range(s * per, (s + 1) * per)]
        pq.write_table(pa.table({"key": names, "value": np.arange(len(names))}), root / f"{s:05d}.parquet")


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def ray_checkpoint(work: Path, shards: int) -> dict:
    import ray
    import ray.data
    from ray.data.checkpoint import CheckpointConfig
    from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager

    from raeflow.connection import connect_ray

    connect_ray(num_cpus=2)
    context = ray.data.DataContext.get_current()
    config = CheckpointConfig(
        id_column="key", checkpoint_path=str(work / "ckpt"), delete_checkpoint_on_success=False
    )
    context.checkpoint_config = config

    def run(out: str) -> float:
        began = time.monotonic()
        ds = ray.data.read_parquet(str(work / "keys"), override_num_blocks=shards)
        ds = ds.map_batches(lambda b: b.append_column("v2", b.column("value")), batch_format="pyarrow")
        ds.write_parquet(out)
        return time.monotonic() - began

    first = run(str(work / "out1"))
    before = _rss()
    resume = run(str(work / "out2"))
    growth = _rss() - before
    began = time.monotonic()
    _, loaded_bytes = IdColumnCheckpointManager(config, context).load_checkpoint()
    load = time.monotonic() - began
    files = sum(len(f) for _, _, f in os.walk(work / "ckpt"))
    ray.shutdown()
    return {
        "first_run_s": round(first, 1),
        "resume_s": round(resume, 1),
        "load_checkpoint_s": round(load, 1),
        "id_array_bytes": int(loaded_bytes),
        "checkpoint_files": files,
        "driver_rss_growth_on_resume_bytes": int(growth),
    }


def raeflow_manifest(work: Path, keys: int, shards: int) -> dict:
    from raeflow.batch.ledger import KeyIndex
    from raeflow.batch.manifest import Manifest, ShardRecord
    from raeflow.batch.output import OutputDir
    from raeflow.batch.worker import key_hashes

    out = OutputDir(str(work / "manifest"))
    manifest = Manifest(out)
    per = keys // shards
    began = time.monotonic()
    for s in range(shards):
        names = [f"photos/{s:05d}/{i:07d}" for i in range(s * per, (s + 1) * per)]
        hashes = np.frombuffer(key_hashes(names), dtype="<u8")
        parts = (f"part-{s:05d}-000000.parquet",)
        record = ShardRecord(s, f"{s:05d}.parquet", per, per, 0, 1.0, parts, 1, ("n",))
        manifest.write_record(record, hashes)
    write = time.monotonic() - began
    tracemalloc.start()
    began = time.monotonic()
    done = manifest.finished()
    index = KeyIndex()
    for s in sorted(done):
        index.add(s, manifest.key_hashes(s))
    collisions, _ = index.collisions()
    resume = time.monotonic() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    files = sum(len(f) for _, _, f in os.walk(work / "manifest"))
    return {
        "write_records_s": round(write, 1),
        "resume_s": round(resume, 1),
        "driver_peak_bytes_on_resume": int(peak),
        "manifest_files": files,
        "collisions": collisions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--work", default="/tmp/raeflow-ckpt-bench")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    _keys_dataset(work / "keys", args.keys, args.shards)
    print(json.dumps({"keys": args.keys, "shards": args.shards}), flush=True)
    print(json.dumps({"raeflow_manifest": raeflow_manifest(work, args.keys, args.shards)}), flush=True)
    print(json.dumps({"ray_data_checkpoint": ray_checkpoint(work, args.shards)}), flush=True)


if __name__ == "__main__":
    main()
