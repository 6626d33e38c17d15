"""Build time, peak memory, size and recall@10 of `raeflow index` on a million vectors, against the plain
faiss script a user would write, measured in the same run.

    .venv/bin/python bench/index_throughput.py                          # 1,000,000 vectors, three tables
    .venv/bin/python bench/index_throughput.py --n 20000 --real-base 2000 --datasets random-64,real
    .venv/bin/python bench/index_throughput.py --real-model runs/photos/model --datasets real
    .venv/bin/python bench/index_throughput.py --n 3000 --real-base 500 --raeflow-args --exact-below 1000

Tables (cached under bench-out/index-tables/, written as `raeflow embed` writes its output:
`part-SSSSS-000000.parquet` of `--rows-per-part` rows (1,000: one part per shard of 1,000 images),
`key`, `source` and `embedding` as `fixed_size_list<float32>[D]`, file metadata `raeflow.model`):
- `random-64`, `random-256`: standard Gaussian vectors scaled to unit length, seeded per part (the
  hardest case for a graph index: no structure to follow);
- `real`: embeddings of photo patches made by a shipped bundle (`--real-model`; default
  builtin:photo-ae where shipped, else builtin:denoise-rgb, whose code averaged over space is 48
  values). `--real-base` random 64x64 patches of the test photos (CBSD68, Set12, and BSD68's grey
  photos; flipped at random) are embedded in this process. A table larger than that is filled by
  tiling: row i is base vector i mod B plus Gaussian noise whose length is half the median distance
  from a base vector to its nearest other base vector, so each real vector becomes a small cloud
  around itself and the table keeps the real vectors' clusters and spread.

Rows, each a fresh process whose whole process tree's resident memory is sampled every 50 ms:
- `raeflow index --data TABLE --out IDX` with its defaults (it streams the parts and picks Flat below
  100,000 vectors, HNSW32 above while the vectors fit in --max-memory 4G, IVF-PQ beyond);
- the user's script (`--baseline`, this file): `pyarrow.parquet.read_table` of the whole table,
  flattened to one numpy array, normalised, the same faiss factory string raeflow chose, trained
  where it needs training, `add`, `write_index`. No recall measured, no keys kept.
Recall@10 is given as raeflow's index.json reports it, and measured here independently for both
indexes: 1,000 table rows drawn at random are searched through the index (raeflow's search
settings: efSearch 128, 32 IVF clusters), against exact inner-product search over the whole table
(faiss IndexFlatIP), by key. Results also go to bench-out/index_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"
BENCH = Path(os.environ.get("RAEFLOW_DENOISE_BENCH", ROOT.parent / "shared" / "benchmarks" / "denoise"))
PATCH = 64
"""Side of the photo patches of the `real` table (a fully convolutional model embeds them as they are)."""
QUERIES = 1000
K = 10
TABLE_VERSION = "1"
"""Change it when the tables change, so cached ones are made again."""


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


class TreeMemory:
    """Peak of the summed resident memory of process `pid` and all its descendants (every 50 ms)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _tree(self, pid: int) -> list[int]:
        pids, children = [pid], []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    children += [int(c) for c in handle.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return pids
        for child in children:
            pids += self._tree(child)
        return pids

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as lines:
                for line in lines:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
        return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in self._tree(self.pid)))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def timed(name: str, command: list[str]) -> dict:
    """Run `command` as a fresh process: its wall seconds and its process tree's peak memory."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    memory = TreeMemory(process.pid)
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - started
    memory.stop()
    if process.returncode != 0:
        sys.exit(f"{name} failed ({process.returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return {"name": name, "seconds": seconds, "peak_rss": memory.peak, "stdout": stdout, "load": load_line()}


def write_table(folder: Path, n: int, dim: int, rows_per_part: int, part: Callable, fingerprint: str) -> None:
    """Parts of `rows_per_part` rows as `raeflow embed` writes them; `part(i, rows)`: part i's vectors."""
    done = folder / "_SUCCESS"
    if done.is_file() and done.read_text() == f"{TABLE_VERSION} {n} {dim}":
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    schema = pa.schema(
        [
            pa.field("key", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={"raeflow.model": fingerprint},
    )
    for i, first in enumerate(range(0, n, rows_per_part)):
        rows = min(rows_per_part, n - first)
        vectors = np.ascontiguousarray(part(i, rows), dtype=np.float32)  # (rows, dim)
        keys = [f"{i:05d}/{first + r:07d}" for r in range(rows)]
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)
        table = pa.table([keys, [f"{folder.name}/{k}" for k in keys], embedding], schema=schema)
        pq.write_table(table, folder / f"part-{i:05d}-000000.parquet")
    (folder / "_SUCCESS").write_text(f"{TABLE_VERSION} {n} {dim}")


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_table(n: int, dim: int, rows_per_part: int) -> Path:
    folder = OUT / "index-tables" / f"random-{dim}-{n}"
    write_table(
        folder,
        n,
        dim,
        rows_per_part,
        lambda i, rows: unit(np.random.default_rng([dim, i]).standard_normal((rows, dim))),
        f"random-gaussian-{dim}",
    )
    return folder


def photo_patches(count: int, channels: int) -> np.ndarray:
    """`count` random PATCH x PATCH patches of the test photos, flipped at random: (count, C, P, P) float."""
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    paths = [p for name in ("CBSD68", "Set12", "BSD68") for p in sorted((BENCH / name).glob("*.png"))]
    if not paths:
        sys.exit(f"error: no test photos under {BENCH}; set RAEFLOW_DENOISE_BENCH")
    photos = [np.asarray(Image.open(p).convert(mode), dtype=np.float32) / 255 for p in paths]
    rng = np.random.default_rng(7)
    patches = np.empty((count, channels, PATCH, PATCH), np.float32)
    for j in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        top = int(rng.integers(0, photo.shape[0] - PATCH + 1))
        left = int(rng.integers(0, photo.shape[1] - PATCH + 1))
        patch = photo[top : top + PATCH, left : left + PATCH].reshape(PATCH, PATCH, channels)
        patches[j] = (patch[:, ::-1] if rng.random() < 0.5 else patch).transpose(2, 0, 1)
    return patches


def real_base(model: str, count: int) -> tuple[np.ndarray, str]:
    """Embeddings (count, D) of `count` photo patches by the bundle `model`, and its fingerprint."""
    import torch
    import torch.nn.functional as F

    from raeflow.models import load_bundle
    from raeflow.models.precision import resolve_precision

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = load_bundle(model)
    contract = bundle.input_contract
    patches = torch.from_numpy(photo_patches(count, int(contract["channels"])))  # (B, C, P, P)
    size = None if contract["height"] == "any" else (int(contract["height"]), int(contract["width"]))
    precision = resolve_precision("auto", torch.device("cpu"))
    out = []
    with torch.inference_mode(), precision.autocast():
        for first in range(0, count, 256):
            x = patches[first : first + 256]
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True) if size else x
            out.append(bundle.model.embed(x).float().reshape(len(x), -1).numpy())
    return np.concatenate(out), bundle.fingerprint


def real_table(n: int, rows_per_part: int, model: str, base_count: int) -> Path:
    """The `real` table: `base_count` embedded patches, tiled with noise up to n rows (see module)."""
    import faiss

    folder = OUT / "index-tables" / f"real-{model.replace(':', '-').replace('/', '_')}-{base_count}-{n}"
    if (folder / "_SUCCESS").is_file() and (folder / "_SUCCESS").read_text().startswith(TABLE_VERSION + " "):
        return folder
    started = time.perf_counter()
    base, fingerprint = real_base(model, min(base_count, n))
    print(
        f"  embedded {len(base):,} photo patches with {model} in {time.perf_counter() - started:.1f} s "
        f"({len(base) / (time.perf_counter() - started):.0f}/s, {load_line()})",
        flush=True,
    )
    dim = base.shape[1]
    flat = faiss.IndexFlatL2(dim)
    flat.add(base)
    probe = base[np.random.default_rng(3).choice(len(base), min(len(base), 2000), replace=False)]
    distances = np.sqrt(np.maximum(flat.search(probe, 2)[0][:, 1], 0))
    spread = 0.5 * float(np.median(distances)) / np.sqrt(dim)  # per-dimension noise std

    def part(i: int, rows: int) -> np.ndarray:
        ids = np.arange(i * rows_per_part, i * rows_per_part + rows) % len(base)
        noise = np.random.default_rng([11, i]).standard_normal((rows, dim)) * spread
        first_copy = np.arange(i * rows_per_part, i * rows_per_part + rows) < len(base)
        return base[ids] + np.where(first_copy[:, None], 0.0, noise)

    print(
        f"  tiling to {n:,} rows: noise {spread * np.sqrt(dim):.4f} (half the median nearest-neighbour "
        f"distance {float(np.median(distances)):.4f})",
        flush=True,
    )
    write_table(folder, n, dim, rows_per_part, part, fingerprint)
    return folder


def baseline(data: str, out: str, factory: str) -> None:
    """The user's script: the whole table in memory, one faiss index, written to `out`."""
    import faiss

    table = pq.read_table(data, columns=["key", "embedding"])
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    vectors = np.ascontiguousarray(column.flatten().to_numpy().reshape(-1, dim), dtype=np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        sample = vectors[
            np.random.default_rng(0).choice(len(vectors), min(len(vectors), 200_000), replace=False)
        ]
        index.train(sample)
    index.add(vectors)
    Path(out).mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(Path(out) / "index.faiss"))


def whole_table(folder: Path) -> tuple[list[str], np.ndarray]:
    """Keys and unit vectors of the whole table, in part order."""
    table = pq.read_table(folder, columns=["key", "embedding"])
    column = table.column("embedding").combine_chunks()
    vectors = column.flatten().to_numpy().reshape(-1, column.type.list_size).astype(np.float32)
    return table.column("key").to_pylist(), unit(vectors).astype(np.float32)


def measured_recall(index_file: Path, meta: dict, keys_of_ids: list[str], truth: dict) -> float:
    """recall@10 of the index in `index_file` on the query rows of `truth`, by key (see module)."""
    import faiss

    from raeflow.curate.index import set_search_params

    index = faiss.read_index(str(index_file))
    set_search_params(index, meta["kind"], meta.get("nprobe", 0))
    found = index.search(truth["queries"], K)[1]
    hits = [
        len({keys_of_ids[i] for i in row if i >= 0} & exact) / K
        for row, exact in zip(found, truth["exact"], strict=True)
    ]
    return float(np.mean(hits))


def exact_truth(keys: list[str], vectors: np.ndarray) -> dict:
    """QUERIES random rows and the keys of their exact K nearest (inner product over the whole table)."""
    import faiss

    rows = np.random.default_rng(5).choice(len(vectors), min(QUERIES, len(vectors)), replace=False)
    queries = vectors[rows]
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    ids = flat.search(queries, K)[1]
    return {"queries": queries, "exact": [{keys[i] for i in row} for row in ids]}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_dataset(name: str, data: Path, work: Path, extra: list[str]) -> dict:
    """Both builds of one table, their memory, sizes and recalls."""
    slug = data.name
    ours_out, theirs_out = work / f"{slug}-raeflow", work / f"{slug}-faiss"
    for folder in (ours_out, theirs_out):
        shutil.rmtree(folder, ignore_errors=True)
    cli = [sys.executable, "-m", "raeflow.cli", "index", "--data", str(data), "--out", str(ours_out),
           "--quiet", *extra]  # fmt: skip
    ours = timed("raeflow index", cli)
    meta = json.loads((ours_out / "index.json").read_text())
    print(f"  {name}: raeflow index {ours['seconds']:.1f} s, {meta['factory']} ({load_line()})", flush=True)
    script = [sys.executable, __file__, "--baseline", str(data), str(theirs_out), meta["factory"]]
    theirs = timed("faiss script", script)
    print(f"  {name}: faiss script {theirs['seconds']:.1f} s ({load_line()})", flush=True)
    keys, vectors = whole_table(data)
    truth = exact_truth(keys, vectors)
    del vectors
    index_keys = pq.read_table(ours_out / "keys.parquet", columns=["key"]).column("key").to_pylist()
    return {
        "table": name,
        "n": len(keys),
        "dim": meta["dim"],
        "factory": meta["factory"],
        "raeflow": {
            **{k: ours[k] for k in ("seconds", "peak_rss", "load")},
            "build_seconds": meta["build_seconds"],
            "bytes": folder_bytes(ours_out),
            "recall_json": meta.get("recall_at_10"),
            "recall_measured": measured_recall(ours_out / "index.faiss", meta, index_keys, truth),
        },
        "faiss": {
            **{k: theirs[k] for k in ("seconds", "peak_rss", "load")},
            "bytes": folder_bytes(theirs_out),
            "recall_measured": measured_recall(theirs_out / "index.faiss", meta, keys, truth),
        },
    }


def print_table(rows: list[dict]) -> None:
    """One markdown table of every build, and the ratios of raeflow to the script."""
    print(
        "\n| table | vectors | index | run | seconds | peak RSS (tree) | index size | recall@10 "
        "index.json | recall@10 measured | load |\n| --- | ---: | --- | --- | ---: | ---: | ---: | ---: "
        "| ---: | --- |"
    )
    for row in rows:
        for run in ("raeflow", "faiss"):
            r = row[run]
            json_recall = f"{r['recall_json']:.4f}" if r.get("recall_json") is not None else ""
            label = "raeflow index" if run == "raeflow" else "faiss script"
            print(
                f"| {row['table']} ({row['dim']}-d) | {row['n']:,} | {row['factory']} | {label} | "
                f"{r['seconds']:.1f} | {r['peak_rss'] / 2**20:,.0f} MiB | {r['bytes'] / 2**20:,.0f} MiB | "
                f"{json_recall} | {r['recall_measured']:.4f} | {r['load']} |"
            )
    print()
    for row in rows:
        a, b = row["raeflow"], row["faiss"]
        print(
            f"{row['table']}: raeflow index takes {a['seconds'] / b['seconds']:.2f}x the script's time "
            f"and {a['peak_rss'] / b['peak_rss']:.2f}x its peak memory (raeflow's build alone, as "
            f"index.json times it: {a['build_seconds']:.1f} s, recall measurement included)"
        )


def default_real_model() -> str:
    from raeflow.bundles import DESCRIPTIONS

    return "builtin:photo-ae" if "photo-ae" in DESCRIPTIONS else "builtin:denoise-rgb"


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--baseline":
        baseline(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors per table")
    parser.add_argument("--datasets", default="random-64,random-256,real", help="tables to build, in order")
    parser.add_argument("--rows-per-part", type=int, default=1000, help="rows of each Parquet part")
    parser.add_argument(
        "--real-model", help="bundle of the real table (default: builtin:photo-ae if shipped)"
    )
    parser.add_argument("--real-base", type=int, default=50_000, help="patches embedded for the real table")
    parser.add_argument(
        "--raeflow-args", nargs=argparse.REMAINDER, default=[], help="extra raeflow index options, last"
    )
    args = parser.parse_args()

    print(f"{load_line()} at start")
    work = OUT / "index-runs"
    rows = []
    for name in args.datasets.split(","):
        if name.startswith("random-"):
            data = random_table(args.n, int(name.split("-")[1]), args.rows_per_part)
        elif name == "real":
            model = args.real_model or default_real_model()
            data = real_table(args.n, args.rows_per_part, model, args.real_base)
            name = f"real ({model})"
        else:
            sys.exit(f"error: unknown table {name!r}: random-64, random-256 (random-D) or real")
        rows.append(run_dataset(name, data, work, args.raeflow_args))
    print_table(rows)
    (OUT / "index_throughput.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{load_line()} at the end")


if __name__ == "__main__":
    main()
