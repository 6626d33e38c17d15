"""Peak memory of the `raeflow dedup` driver process, local against Ray, as the table grows 10x.

    .venv/bin/python bench/dedup_memory.py                          # 100,000 and 1,000,000 x 256
    .venv/bin/python bench/dedup_memory.py --sizes 2000,20000       # a smoke run
    .venv/bin/python bench/dedup_memory.py --backends ray --ray-args --address HEAD:6379

Tables (cached under bench-out/dedup-tables/), written as `raeflow embed` writes its output:
`part-SSSSS-000000.parquet` of `--rows-per-part` rows, `key`, `source` and `embedding` as
`fixed_size_list<float32>[D]`, file metadata `raeflow.model`. Rows are standard Gaussian vectors
scaled to unit length, seeded per part; in each part `--dup-share` of the rows are near-duplicates
(an earlier row of the part plus noise of length 0.05: cosine ~0.999) and 1 in 10 of those a second
copy of the same row, so dedup has groups of two and three to find.

Each row of the table is one fresh `raeflow dedup --data TABLE --out DIR --backend B` process. Its
resident memory (the driver process only: psutil, every 50 ms) gives `driver peak`; the whole process
tree (with the Ray a private run starts, its actors holding the index) gives `tree peak`. `growth` is
the driver's peak at the largest size minus its peak at the smallest. Every row also carries the wall
time and the load average (1 minute) at its start and end; `same lists` says whether groups.parquet,
keep.parquet and outliers.parquet of the ray row are byte for byte those of the local row. Results
also go to bench-out/dedup_memory.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

try:
    import psutil
except ImportError:  # not a raeflow dependency: Ray ships a copy, on sys.path once Ray is imported
    importlib.import_module("ray")
    import psutil

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"
TABLE_VERSION = "1"
"""Change it when the tables change, so cached ones are made again."""
LISTS = ("groups.parquet", "keep.parquet", "outliers.parquet")


def write_table(folder: Path, num: int, dim: int, rows_per_part: int, dup_share: float) -> None:
    """The table of `num` rows (see module), part by part: never more than one part in memory."""
    from raeflow.batch.embed import embedding_schema

    marker = folder / "_TABLE"
    wanted = f"{TABLE_VERSION} {num} {dim} {rows_per_part} {dup_share}"
    if marker.exists() and marker.read_text() == wanted:
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    schema = embedding_schema(dim, with_labels=False, fingerprint="b" * 64)
    for part, first in enumerate(range(0, num, rows_per_part)):
        size = min(rows_per_part, num - first)
        rng = np.random.default_rng([7, part])
        vectors = rng.standard_normal((size, dim), dtype=np.float32)  # (n, D)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        copies = rng.choice(np.arange(1, size), size=min(size - 1, int(size * dup_share)), replace=False)
        originals = rng.integers(0, copies, endpoint=False)  # an earlier row of the part
        originals[: len(copies) // 10] = originals[len(copies) // 10 : 2 * (len(copies) // 10)]  # triples
        noise = rng.standard_normal((len(copies), dim), dtype=np.float32)
        noise *= 0.05 / np.linalg.norm(noise, axis=1, keepdims=True)
        vectors[copies] = vectors[np.minimum(originals, copies - 1)] + noise
        keys = [f"img/{first + i:08d}" for i in range(size)]
        table = pa.table(
            {
                "key": keys,
                "source": [f"s3://photos/{key}.jpg" for key in keys],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
            },
            schema=schema,
        )
        pq.write_table(table, folder / f"part-{part:05d}-000000.parquet")
    marker.write_text(wanted)


def measure(command: list[str]) -> dict[str, float]:
    """Run `command`; its driver's and its process tree's peak resident memory, wall time, load."""
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {"driver": 0, "tree": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                driver = process.memory_info().rss
                tree = driver
                for child in process.children(recursive=True):
                    try:
                        tree += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            peaks["driver"] = max(peaks["driver"], driver)
            peaks["tree"] = max(peaks["tree"], tree)
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    return {
        "driver_peak_mib": peaks["driver"] / 2**20,
        "tree_peak_mib": peaks["tree"] / 2**20,
        "wall_s": time.monotonic() - started,
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "summary": stdout.strip().splitlines()[0] if stdout.strip() else "",
    }


def same_lists(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in LISTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="table rows, comma-separated")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rows-per-part", type=int, default=10_000)
    parser.add_argument("--dup-share", type=float, default=0.02, help="rows per part that are copies")
    parser.add_argument("--backends", default="ray,local", help="comma-separated: ray, local")
    parser.add_argument("--ray-args", nargs=argparse.REMAINDER, default=[], help="more options for ray rows")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    backends = args.backends.split(",")
    rows = []
    print(f"load average at start: {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
    for size in sizes:
        table = OUT / "dedup-tables" / f"n{size}-d{args.dim}"
        write_table(table, size, args.dim, args.rows_per_part, args.dup_share)
        for backend in backends:
            out = OUT / "dedup-memory" / f"n{size}-{backend}"
            shutil.rmtree(out, ignore_errors=True)
            command = [sys.executable, "-m", "raeflow.cli", "dedup", "--data", str(table), "--out", str(out)]
            command += ["--backend", backend, "--html-thumbnails", "0", "--quiet"]
            command += args.ray_args if backend == "ray" else []
            row = {"size": size, "backend": backend, **measure(command)}
            rows.append(row)
            print(
                f"{size:>9,} {backend:<5} driver peak {row['driver_peak_mib']:8.0f} MiB, "
                f"tree peak {row['tree_peak_mib']:8.0f} MiB, {row['wall_s']:7.1f} s, "
                f"load {row['load_start']:.1f} -> {row['load_end']:.1f}",
                flush=True,
            )
        if {"ray", "local"} <= set(backends):
            ray_out, local_out = (OUT / "dedup-memory" / f"n{size}-{b}" for b in ("ray", "local"))
            for row in rows[-len(backends) :]:
                row["same_lists"] = same_lists(ray_out, local_out)
    print()
    header = ["rows", "backend", "driver peak MiB", "tree peak MiB", "wall s", "load start -> end"]
    print("| " + " | ".join([*header, "same lists", "summary"]) + " |")
    print("| ---: | --- | ---: | ---: | ---: | --- | --- | --- |")
    for row in rows:
        same = {True: "yes", False: "no"}.get(row.get("same_lists"), "-")  # type: ignore[arg-type]
        cells = [
            f"{row['size']:,}",
            row["backend"],
            f"{row['driver_peak_mib']:.0f}",
            f"{row['tree_peak_mib']:.0f}",
            f"{row['wall_s']:.1f}",
            f"{row['load_start']:.1f} -> {row['load_end']:.1f}",
            same,
            row["summary"],
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    for backend in backends:
        peaks = {row["size"]: row["driver_peak_mib"] for row in rows if row["backend"] == backend}
        if len(peaks) >= 2:
            small, large = min(peaks), max(peaks)
            print(
                f"{backend}: driver peak growth {small:,} -> {large:,} rows: "
                f"{peaks[large] - peaks[small]:+.0f} MiB (load average now {os.getloadavg()[0]:.2f})"
            )
    (OUT / "dedup_memory.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
