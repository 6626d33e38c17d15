"""Images per second of `raeflow embed` (Ray Data, local Ray) against a plain PyTorch DataLoader,
and the peak memory of raeflow's driver as the number of images grows.

    .venv/bin/python bench/embed_throughput.py                      # 20,000 and 100,000 images
    .venv/bin/python bench/embed_throughput.py --sizes 20000 --repeats 1

Data: 32x32 grey crops of real photos (the Train400 set at /work/shared/benchmarks/denoise/Train400
when present, plus scikit-image's photographs in grey), PNG-encoded, in Parquet shards of
`--shard-rows` rows (columns key, image). Model: `conv` at 1x32x32, 16-8-8 channels (a 128-float
code), untrained: throughput does not depend on the weights. In one run, on the same shards:
- raeflow: `run_embed(EmbedConfig(...))`, the library call behind `raeflow embed`, on a local Ray
  with as many CPUs as the machine has (read + decode tasks, one predictor actor, driver writer);
- baseline: `torch.utils.data.DataLoader(num_workers=2)` over an IterableDataset that reads the
  same shards with pyarrow and decodes with the same `decode_image`; the main process runs
  `model.embed` and writes one Parquet file per shard with pyarrow.
Both times are wall clock of the whole call (worker/actor start-up included, `ray.init` not),
best of `--repeats`; raeflow is timed cold (the first job on a new Ray: every worker process
starts and imports torch, where the DataLoader's workers fork a parent that has) and warm (the
same job again on that Ray). Each raeflow run has its own driver process, whose memory
is sampled every 20 ms in a thread: resident set (which includes object-store pages the driver
has read) and private memory (its own heap, what would grow with a leak).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from raeflow.data.images import decode_image, encode_image  # noqa: E402
from raeflow.models import create_model, load_bundle, save_bundle  # noqa: E402

TRAIN400 = Path("/work/shared/benchmarks/denoise/Train400")
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text")
CROP = 32
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # read-only, never written


def photos() -> list[np.ndarray]:
    """Grey `uint8` photographs: Train400 (if present) and scikit-image's."""
    found = [np.asarray(Image.open(p).convert("L")) for p in sorted(TRAIN400.glob("*.png"))]
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        found.append(image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L")))
    return found


def write_shards(folder: Path, num_images: int, shard_rows: int, seed: int = 0) -> None:
    """`num_images` random 32x32 crops as PNG in Parquet shards of `shard_rows` rows."""
    rng = np.random.default_rng(seed)
    sources = photos()
    folder.mkdir(parents=True)
    for start in range(0, num_images, shard_rows):
        keys, datas = [], []
        for i in range(start, min(start + shard_rows, num_images)):
            photo = sources[i % len(sources)]
            top, left = rng.integers(0, photo.shape[0] - CROP + 1), rng.integers(0, photo.shape[1] - CROP + 1)
            keys.append(f"crop-{i:07d}")
            datas.append(
                encode_image(np.ascontiguousarray(photo[top : top + CROP, left : left + CROP, None]))
            )
        pq.write_table(
            pa.table({"key": keys, "image": datas}), folder / f"shard-{start // shard_rows:05d}.parquet"
        )


class ShardImages(torch.utils.data.IterableDataset):
    """The baseline's reader: each DataLoader worker reads its share of the shards and decodes."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __iter__(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        mine = self.files if info is None else self.files[info.id :: info.num_workers]
        for path in mine:
            index = int(path.stem.split("-")[1])
            table = pq.read_table(path)
            for key, data in zip(
                table.column("key").to_pylist(), table.column("image").to_pylist(), strict=True
            ):
                pixels = decode_image(data, channels=1)  # (H, W, 1)
                yield index, key, torch.from_numpy(pixels).permute(2, 0, 1)  # (1, H, W) uint8


def run_baseline(data: Path, bundle: str, out: Path, batch_size: int) -> float:
    """Embed with a plain DataLoader(num_workers=2); returns seconds."""
    started = time.perf_counter()
    model = load_bundle(bundle).model
    files = sorted(data.glob("*.parquet"))
    loader = torch.utils.data.DataLoader(ShardImages(files), batch_size=batch_size, num_workers=2)
    out.mkdir(parents=True)
    rows: dict[int, list[pa.Table]] = {}
    with torch.inference_mode():
        for shard_ids, keys, pixels in loader:
            vectors = model.embed(pixels.float().div_(255)).numpy()  # (B, 128)
            flat = pa.array(vectors.reshape(-1), pa.float32())
            batch = pa.table({"key": list(keys), "embedding": pa.FixedSizeListArray.from_arrays(flat, 128)})
            for shard in np.unique(shard_ids.numpy()):  # batches can mix the two workers' shards
                rows.setdefault(int(shard), []).append(batch.filter(pa.array(shard_ids.numpy() == shard)))
    for shard, tables in rows.items():
        pq.write_table(pa.concat_tables(tables), out / f"part-{shard:05d}.parquet")
    return time.perf_counter() - started


class PeakMemory:
    """Samples this process's memory every 20 ms in a thread (Linux /proc): the peak resident set
    (`rss`, which also counts pages of Ray's shared-memory object store the driver has read) and
    the peak private memory (`private`: the driver's own heap, what would grow with a leak)."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.rss, self.private, self._stop = every, 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            fields = {}
            with open("/proc/self/smaps_rollup") as rollup:
                for line in rollup:
                    name, _, rest = line.partition(":")
                    if rest.strip().endswith("kB"):
                        fields[name] = int(rest.split()[0]) * 1024
            self.rss = max(self.rss, fields.get("Rss", 0))
            self.private = max(self.private, fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0))
            time.sleep(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_raeflow(
    data: Path, bundle: str, out: Path, batch_size: int, workers: int, worker_cpus: float
) -> dict[str, float]:
    """Embed with `run_embed` in a fresh driver process (so its memory is the job's alone) on a new
    local Ray, twice; returns the seconds of the cold and the warm call and the driver's peak RSS
    and private memory (bytes)."""
    command = [
        sys.executable,
        __file__,
        "--driver",
        str(data),
        bundle,
        str(out),
        str(batch_size),
        str(workers),
        str(worker_cpus),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the raeflow driver failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def driver(data: str, bundle: str, out: str, batch_size: int, workers: int, worker_cpus: float) -> None:
    """The measured raeflow driver: connect to a new local Ray, then time and watch `run_embed`."""
    import ray
    from ray.data import DataContext

    from raeflow.batch.config import EmbedConfig, RunOptions
    from raeflow.batch.embed import run_embed

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    options = RunOptions(batch_size=batch_size, workers=workers, worker_cpus=worker_cpus, quiet=True)
    measured = {}
    with PeakMemory() as memory:
        for run in ("cold", "warm"):  # a new Ray's first job, then the same job again on that Ray
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            summary = run_embed(EmbedConfig(data=data, model=bundle, out=out, run=options))
            measured[run] = time.perf_counter() - started
            assert summary.images_out == summary.images_in, summary
    ray.shutdown()
    print(json.dumps({**measured, "rss": memory.rss, "private": memory.private}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        data, bundle, out, batch_size, workers, worker_cpus = sys.argv[2:8]
        driver(data, bundle, out, int(batch_size), int(workers), float(worker_cpus))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--shard-rows", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=1, help="predictor actors")
    parser.add_argument("--worker-cpus", type=float, default=1.0, help="CPUs reserved per predictor actor")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each; the best speed is shown")
    parser.add_argument("--keep", type=Path, default=None, help="keep the data and outputs in this folder")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="raeflow-bench-"))
    model = create_model("conv", in_channels=1, height=CROP, width=CROP, channels=[16, 8, 8])
    bundle = save_bundle(model, str(work / "model"))
    results = []
    for size in args.sizes:
        data = work / f"crops-{size}"
        if not data.exists():
            write_shards(data, size, args.shard_rows)
        cold, warm, best_theirs, rss, private = 0.0, 0.0, 0.0, 0, 0
        for repeat in range(args.repeats):
            for name in (f"base-{size}", f"ray-{size}"):
                shutil.rmtree(work / name, ignore_errors=True)
            best_theirs = max(
                best_theirs, size / run_baseline(data, bundle, work / f"base-{size}", args.batch_size)
            )
            ours = run_raeflow(
                data, bundle, work / f"ray-{size}", args.batch_size, args.workers, args.worker_cpus
            )
            cold, warm = max(cold, size / ours["cold"]), max(warm, size / ours["warm"])
            rss, private = max(rss, int(ours["rss"])), max(private, int(ours["private"]))
            print(f"{size:,} images, run {repeat + 1}: {ours}", flush=True)
        results.append((size, cold, warm, best_theirs, rss, private))

    header = (
        "images",
        "raeflow cold",
        "raeflow warm",
        "DataLoader",
        "ratio cold",
        "ratio warm",
        "driver RSS",
        "driver private",
    )
    print("\n" + " | ".join(f"{h:>14}" for h in header))
    print("-" * 135)
    for size, cold, warm, theirs, rss, private in results:
        speeds = (
            f"{cold:,.0f}/s",
            f"{warm:,.0f}/s",
            f"{theirs:,.0f}/s",
            f"{cold / theirs:.2f}",
            f"{warm / theirs:.2f}",
        )
        cells = (f"{size:,}", *speeds, f"{rss / 2**20:,.0f} MiB", f"{private / 2**20:,.0f} MiB")
        print(" | ".join(f"{c:>14}" for c in cells))
    print(
        f"\n{os.cpu_count()} CPUs, batch {args.batch_size}, {args.workers} predictor actor(s), "
        f"{args.shard_rows:,}-row shards"
    )
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        for size in args.sizes:
            for name in (f"base-{size}", f"ray-{size}"):
                shutil.rmtree(work / name, ignore_errors=True)


if __name__ == "__main__":
    main()
