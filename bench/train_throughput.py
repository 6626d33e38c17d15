"""Training images per second, on realistic JPEG photos (default) or on MNIST digits (`--mnist`).

    .venv/bin/python bench/train_throughput.py                      # 2,000 JPEG photos, 2 epochs
    .venv/bin/python bench/train_throughput.py --photos 5000 --epochs 3
    .venv/bin/python bench/train_throughput.py --mnist --limit 5000 --epochs 4 --batch-size 64

Photos (default): the corpus of `bench/corpus.py` (JPEG photographs of 320-640 px, a folder),
`conv_dense_coco` (3x64x64), same epochs, each run a whole process; raeflow with its defaults
(batch size, precision, threads) unless `--raeflow-batch-size`, the loop with `--batch-size` (64):
- `raeflow train --data FOLDER`: every epoch decodes every JPEG (reduced-size decode + resize);
- `raeflow shard FOLDER --image-size 64x64` once, then `raeflow train --data CACHE`: the images
  are decoded and fitted once, each epoch reads 64x64 PNGs (the cache build time is shown);
- a hand-written loop: `DataLoader(num_workers=2)` with PIL decode + resize, Adam, MSE, float32
  (as a user writes it), in a process of its own.
The last column compares whole processes: the loop's wall time over raeflow's (cache build included).
Per run: training images/s of epoch 1 and epoch 2 (training time only, from `metrics.jsonl` for
raeflow, timed around the loop for the hand-written one) and the whole process's wall time.

MNIST (`--mnist`): same model (`conv`, 28x28x1, 16-8-8 channels, BCE loss), same data (`builtin:mnist`,
the first `--limit` digits, 90% training split), same batch size and epochs, in one run:
- `plain`: `raeflow.train.plain.run_plain`, one process, batches decoded in it (world size 1);
- `ray x1`, `ray x2`: `raeflow.train.trainer.run_training` on a local Ray, 1 or 2 TorchTrainer
  workers (gloo, DDP), batches decoded by Ray Data map tasks and streamed to the workers.
Per setup it reports the training throughput of the steady epochs (the median over epochs 2..N of
training images / slowest worker's training time; epoch 1 carries start-up work), the median epoch
wall time (training + validation + checkpoint), and the whole call's wall time including Ray and
worker start-up. Ratios are against `plain`. On a machine with fewer cores than workers + decode
tasks, more workers cannot be faster: the table says what this machine gives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ modules, whatever the cwd

from raeflow.train.config import TrainConfig  # noqa: E402
from raeflow.train.plain import run_plain  # noqa: E402


def _measure(name: str, config: TrainConfig, run) -> dict:
    start = time.perf_counter()
    run(config)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in Path(config.out, "metrics.jsonl").read_text().splitlines()]
    steady = records[1:] or records
    return {
        "setup": name,
        "images_per_s": statistics.median(r["images_per_s"] for r in steady),
        "epoch_s": statistics.median(r["epoch_seconds"] for r in steady),
        "wall_s": wall,
        "final_psnr": records[-1]["val_psnr"],
    }


def _run(command: list[str], tries: int = 3) -> float:
    """Run a whole process (this checkout's raeflow first on the path); its wall time. A run whose Ray
    did not come up (an overloaded machine) is tried again."""
    from corpus import REPO

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.setdefault("RAY_raylet_start_wait_time_s", "180")
    for attempt in range(1, tries + 1):
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode == 0:
            return time.perf_counter() - started
        if "timed out during startup" not in done.stderr or attempt == tries:
            raise SystemExit(f"{' '.join(command[:4])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        print(f"Ray did not start (load average {os.getloadavg()[0]:.0f}); trying again", flush=True)
        out = command[command.index("--out") + 1]
        shutil.rmtree(out, ignore_errors=True)
    raise AssertionError("unreachable")


def _epoch_rates(out: Path) -> list[float]:
    return [json.loads(line)["images_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def handwritten_training(folder: Path, epochs: int, batch_size: int) -> list[float]:
    """The loop a user writes: DataLoader(num_workers=2) decoding with PIL each epoch; images/s per epoch."""
    import numpy as np
    import torch
    from PIL import Image

    from raeflow.models import create_model

    class Photos(torch.utils.data.Dataset):
        def __init__(self, paths: list[Path]) -> None:
            self.paths = paths

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, i: int) -> torch.Tensor:
            with Image.open(self.paths[i]) as image:
                pixels = np.asarray(image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR))
            return torch.from_numpy(pixels).permute(2, 0, 1)  # (3, 64, 64) uint8

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    paths = sorted(folder.glob("*.jpg"))
    train = paths[: int(len(paths) * 0.9)]  # raeflow holds out 10% for validation too
    loader = torch.utils.data.DataLoader(
        Photos(train), batch_size=batch_size, shuffle=True, num_workers=2, persistent_workers=True
    )
    model = create_model("conv_dense_coco")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    rates = []
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for pixels in loader:
            x = pixels.float() / 255
            loss = torch.nn.functional.mse_loss(model(x)["recon"], x)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            seen += len(x)
        rates.append(seen / (time.perf_counter() - started))
    return rates


def photos_main(args: argparse.Namespace) -> None:
    from corpus import BENCH_OUT, make_corpus

    folder = make_corpus(args.photos) / "folder"
    work = BENCH_OUT / "train-runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cli = [sys.executable, "-m", "raeflow.cli"]
    model_args = ["--model", "conv_dense_coco", "--image-size", "64x64", "--epochs", str(args.epochs)]
    # raeflow runs with its own defaults (batch size, workers, precision) unless told otherwise; the
    # hand-written loop with the batch size a user picks (--batch-size).
    batch = ["--batch-size", str(args.raeflow_batch_size)] if args.raeflow_batch_size else []
    common = [*model_args, *batch]
    rows = []
    load_at_start = os.getloadavg()
    wall = _run([*cli, "train", "--data", str(folder), "--out", str(work / "jpeg"), *common])
    rows.append(("raeflow train, JPEG folder", _epoch_rates(work / "jpeg"), wall, 0.0))
    cache = work / "cache"
    build = _run([*cli, "shard", str(folder), "--out", str(cache), "--image-size", "64x64"])
    wall = _run([*cli, "train", "--data", str(cache), "--out", str(work / "cached"), *common])
    rows.append(("raeflow train, shard cache 64x64", _epoch_rates(work / "cached"), wall, build))
    started = time.perf_counter()
    loop = subprocess.run(
        [sys.executable, __file__, "--handwritten", str(folder), "--epochs", str(args.epochs),
         "--batch-size", str(args.batch_size)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rates = json.loads(loop.stdout.strip().splitlines()[-1])
    rows.append(("hand-written DataLoader loop", rates, time.perf_counter() - started, 0.0))

    base = rows[-1][1]
    base_wall = rows[-1][2]
    print(
        f"\ntraining conv_dense_coco (3x64x64) on {args.photos:,} JPEG photos of 320-640 px, "
        f"{args.epochs} epochs, raeflow batch {args.raeflow_batch_size or 'default'}, hand-written batch "
        f"{args.batch_size}, {os.cpu_count()} CPU cores, no GPU; load average at start "
        f"{load_at_start[0]:.1f}, at the end {os.getloadavg()[0]:.1f}"
    )
    columns = ("epoch 1 img/s", "epoch 2 img/s", "vs loop (ep 2)")
    print(
        f"{'run (each a whole process)':<34} " + " ".join(f"{c:>14}" for c in columns)
        + f" {'wall s':>7} {'cache s':>8} {'loop wall / (cache + wall)':>27}"
    )  # fmt: skip
    for name, epoch_rates, wall, build in rows:
        second = epoch_rates[1] if len(epoch_rates) > 1 else epoch_rates[0]
        base_second = base[1] if len(base) > 1 else base[0]
        print(
            f"{name:<34} {epoch_rates[0]:>14.0f} {second:>14.0f} {second / base_second:>14.2f}x "
            f"{wall:>7.1f} {build:>8.1f} {base_wall / (wall + build):>26.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", action="store_true", help="the MNIST comparison of plain and Ray Train")
    parser.add_argument("--photos", type=int, default=2000, help="JPEG photos in the corpus")
    parser.add_argument("--limit", type=int, default=4000, help="digits used (90%% train, 10%% validation)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 2 for photos, 3 for MNIST")
    parser.add_argument("--batch-size", type=int, default=64, help="hand-written loop, MNIST")
    parser.add_argument("--raeflow-batch-size", type=int, default=None, help="default: raeflow train's own")
    parser.add_argument("--handwritten", metavar="FOLDER", help=argparse.SUPPRESS)  # the loop's own process
    args = parser.parse_args()
    if args.handwritten:
        print(json.dumps(handwritten_training(Path(args.handwritten), args.epochs or 2, args.batch_size)))
        return
    if not args.mnist:
        args.epochs = args.epochs or 2
        photos_main(args)
        return
    args.epochs = args.epochs or 3

    with tempfile.TemporaryDirectory(prefix="raeflow-bench-train-") as tmp:

        def config(name: str, **overrides) -> TrainConfig:
            return TrainConfig(
                data="builtin:mnist",
                model="conv",
                out=f"{tmp}/{name}",
                limit=args.limit,
                epochs=args.epochs,
                batch_size=args.batch_size,
                **overrides,
            )

        rows = [_measure("plain", config("plain"), lambda c: run_plain(c, quiet=True))]

        import ray

        from raeflow.train.trainer import run_training

        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            for workers in (1, 2):
                run = config(f"ray{workers}", workers=workers)
                rows.append(_measure(f"ray x{workers}", run, lambda c: run_training(c, echo=lambda _: None)))
        finally:
            ray.shutdown()

    base = rows[0]["images_per_s"]
    print(
        f"\ntraining throughput, conv on {args.limit} MNIST digits, batch {args.batch_size}, "
        f"{args.epochs} epochs, {os.cpu_count()} CPU cores, no GPU"
    )
    print(
        f"{'setup':<8} {'train img/s':>12} {'vs plain':>9} {'epoch s':>8} {'whole run s':>12} {'val PSNR':>9}"
    )
    for row in rows:
        print(
            f"{row['setup']:<8} {row['images_per_s']:>12.0f} {row['images_per_s'] / base:>8.2f}x "
            f"{row['epoch_s']:>8.2f} {row['wall_s']:>12.1f} {row['final_psnr']:>9.2f}"
        )


if __name__ == "__main__":
    main()
