"""The core never imports Ray (models, decoding, noise, sources, report metrics, predictors, plain
loop), and the CLI starts without importing torch or Ray."""

from __future__ import annotations

import subprocess
import sys

RAY_FREE = [
    "raeflow.cli",
    "raeflow.console",
    "raeflow.progress",
    "raeflow.errors",
    "raeflow.models",
    "raeflow.models.registry",
    "raeflow.models.bundle",
    "raeflow.models.losses",
    "raeflow.data.images",
    "raeflow.data.noise",
    "raeflow.data.sources",
    "raeflow.data.sources.folder",
    "raeflow.data.sources.parquet",
    "raeflow.data.sources.webdataset",
    "raeflow.data.sources.mnist",
    "raeflow.data.sources.builtin",
    "raeflow.data.shard_writer",
    "raeflow.report.metrics",
    "raeflow.report.stats",
    "raeflow.report.figures",
    "raeflow.report.html",
    "raeflow.batch.predictors",
    "raeflow.batch.decoding",
    "raeflow.batch.config",
    "raeflow.train.config",
    "raeflow.train.plain",
]

PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from raeflow.data.sources import open_source
next(iter(open_source("builtin:digits").read_shard(open_source("builtin:digits").list_shards()[0])))
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("RAY:" + ",".join(loaded))
"""


def test_core_modules_load_without_ray() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *RAY_FREE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "RAY:", done.stdout


def test_the_cli_starts_without_torch_or_ray() -> None:
    # `raeflow --help`, `submit`, `status`, ... answer at once; commands import the heavy parts they use.
    probe = (
        "import sys; from raeflow.cli import main; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'torchvision'}); "
        "print('HEAVY:' + ','.join(heavy))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "HEAVY:", done.stdout
