"""Training images per second: the plain per-worker loop (no Ray) against Ray Train with 1 and 2 workers.

    .venv/bin/python bench/train_throughput.py
    .venv/bin/python bench/train_throughput.py --limit 5000 --epochs 4 --batch-size 64

Same model (`conv`, 28x28x1, 16-8-8 channels, BCE loss), same data (`builtin:mnist`, the first `--limit`
digits, 90% training split), same batch size and epochs, in one run:
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
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4000, help="digits used (90%% train, 10%% validation)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

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
