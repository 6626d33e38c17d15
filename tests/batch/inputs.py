"""Small real-image inputs for the batch-job tests, written the way users store images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raeflow.data import images


def write_digits(
    root: Path, digits: np.ndarray, *, num: int, bad: dict[str, bytes] | None = None
) -> list[str]:
    """Write `num` MNIST digits as PNGs in three sub-folders (plus `bad` files); returns the keys."""
    keys = []
    for i in range(num):
        key = f"{i % 3}/d{i:04d}"
        path = root / f"{key}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(images.encode_image(digits[i][:, :, None], "png"))
        keys.append(key)
    for name, data in (bad or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return keys


def write_digit_parquet(
    root: str, digits: np.ndarray, labels: np.ndarray, *, files: int, rows: int
) -> list[str]:
    """`files` Parquet files of `rows` PNG digits each (columns key, image, label, note) under
    `root` (local path or fsspec URI); returns every key in order."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(root)
    fs.makedirs(path, exist_ok=True)
    keys = []
    for f in range(files):
        index = range(f * rows, (f + 1) * rows)
        table = pa.table(
            {
                "key": [f"digit-{i:05d}" for i in index],
                "image": [images.encode_image(digits[i][:, :, None], "png") for i in index],
                "label": pa.array([int(labels[i]) for i in index], pa.int64()),
                "note": [f"row {i}" for i in index],
            }
        )
        with fs.open(f"{path}/shard-{f:03d}.parquet", "wb") as handle:
            pq.write_table(table, handle)
        keys += table.column("key").to_pylist()
    return keys
