"""Every kind of source counts its images without reading them (the progress total), or says it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest

from raeflow.data.shard_writer import ShardSettings, pack_source
from raeflow.data.sources import open_source


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """builtin:digits (1,797 images) packed by `raeflow shard` as Parquet and as WebDataset, 500 a shard."""
    root = tmp_path_factory.mktemp("packed")
    for kind in ("parquet", "webdataset"):
        pack_source(ShardSettings(source="builtin:digits", out=str(root / kind), format=kind, shard_size=500))
    return root


def test_listed_and_packed_sources_count_every_shard(packed: Path, tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    for i in range(3):
        (tmp_path / "photos" / f"{i}.png").write_bytes(b"not read to count")
    for uri, expected in [
        ("builtin:digits", [500, 500, 500, 297]),
        (str(packed / "parquet"), [500, 500, 500, 297]),  # footers
        (str(packed / "webdataset"), [500, 500, 500, 297]),  # raeflow shard's _index.json
        (str(tmp_path / "photos"), [3]),  # the listing
    ]:
        source = open_source(uri)
        shards = source.list_shards()
        assert source.count_rows(shards) == expected, uri
        assert source.count_rows(shards[1:]) == expected[1:], uri


def test_tars_not_in_an_index_as_they_are_now_are_not_counted(packed: Path, tmp_path: Path) -> None:
    import shutil

    tars = tmp_path / "tars"
    shutil.copytree(packed / "webdataset", tars)
    with open(tars / "shard-00002.tar", "ab") as f:  # changed since it was indexed
        f.write(b"\0" * 1024)
    source = open_source(str(tars))
    assert source.count_rows(source.list_shards()) == [500, 500, None, 297]
    (tars / "_index.json").unlink()
    assert source.count_rows(source.list_shards()) == [None] * 4
    assert source.uncounted.startswith("total unknown: no _index.json")
