"""`report --limit N` knows its total: the limited view counts the rows it will read, whatever the
inner source can count, so the progress display shows done/total instead of "total unknown"."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from raeflow.data.sources import open_source
from raeflow.report.limit import LimitedSource


def _rows_read(source: LimitedSource) -> list[int]:
    return [
        sum(table.num_rows for table in source.read_shard(shard, batch_rows=64))
        for shard in source.list_shards()
    ]


def test_count_is_what_each_limited_shard_yields() -> None:
    for limit, expected in ((7, [7]), (620, [500, 120]), (10_000, [500, 500, 500, 297])):
        source = LimitedSource(open_source("builtin:digits"), limit)  # shards of 500 images, 1797 in all
        shards = source.list_shards()
        assert source.count_rows(shards) == expected == _rows_read(source), limit
    # A rerun counts only the shards left to do.
    source = LimitedSource(open_source("builtin:digits"), 620)
    assert source.count_rows(source.list_shards()[1:]) == [120]


def _tar(path: Path, keys: list[str]) -> None:
    with tarfile.open(path, "w") as tar:
        for key in keys:
            buffer = io.BytesIO()
            Image.fromarray(np.full((8, 8), len(key) * 20, dtype=np.uint8)).save(buffer, "PNG")
            member = tarfile.TarInfo(f"{key}.png")
            member.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(member, buffer)


def test_count_is_known_where_the_inner_source_cannot_count(tmp_path: Path) -> None:
    # Tars not packed by `raeflow shard` have no _index.json: the whole source's total is unknown.
    _tar(tmp_path / "a.tar", [f"a{i}" for i in range(5)])
    _tar(tmp_path / "b.tar", [f"b{i}" for i in range(5)])
    inner = open_source(str(tmp_path))
    assert inner.kind == "webdataset" and inner.count_rows(inner.list_shards()) == [None, None]
    limited = LimitedSource(inner, 7)
    assert limited.count_rows(limited.list_shards()) == [5, 2] == _rows_read(limited)
