"""read_dataset: one read task per shard, on the workers, rows plus their shard index."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raeflow.data.images import ImageRejected, decode_image, encode_image
from raeflow.data.sources import open_source
from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source
from raeflow.data.sources.folder import FolderSource

pytestmark = pytest.mark.usefixtures("ray_session")


class PidSource(Source):
    """Reports the process that read each shard, to prove reads happen off the driver."""

    kind = "pid"

    def list_shards(self) -> list[Shard]:
        return [Shard(index=i, name=f"s{i}", paths=(f"pid:{i}",)) for i in range(4)]

    def read_shard(self, shard: Shard, *, batch_rows: int = 256):
        count = 3
        yield pa.table(
            {
                "key": [f"{shard.name}/{i}" for i in range(count)],
                "source": [str(os.getpid())] * count,
                "image": [b""] * count,
                "label": [shard.index] * count,
                "error": [None] * count,
            },
            schema=ROW_SCHEMA,
        )


def test_one_read_task_per_shard_runs_on_workers() -> None:
    from raeflow.data.dataset import DATASET_SCHEMA, read_dataset

    dataset = read_dataset(PidSource("pid:"))
    rows = dataset.take_all()
    assert len(rows) == 12
    assert {r["shard"] for r in rows} == {0, 1, 2, 3}
    assert all(r["label"] == r["shard"] for r in rows)  # each shard's rows carry that shard's index
    assert str(os.getpid()) not in {r["source"] for r in rows}  # nothing was read on the driver
    assert dataset.schema().base_schema == DATASET_SCHEMA
    stats = dataset.stats()
    assert "4 tasks executed" in stats
    assert len(read_dataset(PidSource("pid:")).limit(5).take_all()) == 5


def test_subset_of_shards_and_batch_rows(tmp_path: Path) -> None:
    from raeflow.data.dataset import read_dataset

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(10)]
    pq.write_table(pa.table({"image": [encode_image(p) for p in images[:6]]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"image": [encode_image(p) for p in images[6:]]}), tmp_path / "b.parquet")
    source = open_source(str(tmp_path))
    shards = source.list_shards()
    only_b = read_dataset(source, shards[1:], batch_rows=3).take_all()
    assert [r["key"] for r in only_b] == ["b/0", "b/1", "b/2", "b/3"]
    assert {r["shard"] for r in only_b} == {1}
    assert np.array_equal(decode_image(only_b[2]["image"]), images[8])
    assert read_dataset(source, []).count() == 0


def test_a_folder_of_bad_files_through_ray_data(tmp_path: Path) -> None:
    from raeflow.data.dataset import read_dataset

    photo = np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(photo).save(jpeg, "JPEG")
    files = {
        "good.png": encode_image(photo),
        "empty.jpg": b"",
        "cut.jpg": jpeg.getvalue()[:300],
        "words.png": b"plain text",
        "dot.png": encode_image(photo[:1, :1]),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    dataset = read_dataset(FolderSource(str(tmp_path), files_per_shard=2))
    reasons = {}
    for row in dataset.iter_rows():
        try:
            decode_image(row["image"])
            reasons[row["key"]] = None
        except ImageRejected as rejected:
            reasons[row["key"]] = rejected.reason
    assert reasons == {
        "cut": "truncated",
        "dot": "too_small",
        "empty": "empty",
        "good": None,
        "words": "not_an_image",
    }
