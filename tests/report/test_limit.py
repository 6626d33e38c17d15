"""`--limit N`: the first N images of a source, whatever its shard sizes."""

from __future__ import annotations

import pyarrow as pa

from raeflow.data.sources import open_source
from raeflow.report.limit import LimitedSource


def _keys(source: LimitedSource) -> list[str]:
    keys: list[str] = []
    for shard in source.list_shards():
        for table in source.read_shard(shard, batch_rows=64):
            assert isinstance(table, pa.Table)
            keys += table.column("key").to_pylist()
    return keys


def test_limit_cuts_inside_a_shard_and_keeps_shard_indices() -> None:
    source = LimitedSource(open_source("builtin:digits"), 620)  # shards of 500 images
    shards = source.list_shards()
    assert [s.index for s in shards] == [0, 1]
    assert _keys(source) == [f"digits/{i}" for i in range(620)]
    assert source.has_labels and "first 620 images" in source.describe()


def test_limit_within_the_first_shard_and_beyond_the_source() -> None:
    assert _keys(LimitedSource(open_source("builtin:digits"), 7)) == [f"digits/{i}" for i in range(7)]
    everything = LimitedSource(open_source("builtin:digits"), 10_000)
    assert len(everything.list_shards()) == 4 and len(_keys(everything)) == 1797
