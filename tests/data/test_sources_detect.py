"""Kind detection, forced formats, fsspec URIs other than local paths, and user mistakes."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raeflow.data.images import decode_image, encode_image
from raeflow.data.sources import KINDS, detect_kind, open_source, source_class
from raeflow.errors import ConfigError, SourceError

PIXELS = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)


def test_kinds_are_detected_from_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(encode_image(PIXELS))
    (tmp_path / "table").mkdir()
    pq.write_table(pa.table({"image": [encode_image(PIXELS)]}), tmp_path / "table" / "part-0.parquet")
    (tmp_path / "tars").mkdir()
    fsspec.filesystem("file").pipe(str(tmp_path / "tars" / "x.tar"), b"")
    assert detect_kind(str(tmp_path / "imgs")) == "folder"
    assert detect_kind(f"file://{tmp_path}/imgs") == "folder"
    assert detect_kind(str(tmp_path / "imgs" / "a.png")) == "folder"
    assert detect_kind(str(tmp_path / "table")) == "parquet"
    assert detect_kind(str(tmp_path / "table" / "*.parquet")) == "parquet"
    assert detect_kind(str(tmp_path / "tars")) == "webdataset"
    assert detect_kind("builtin:digits") == "builtin"


def test_format_forces_a_kind(tmp_path: Path) -> None:
    pq.write_table(pa.table({"image": [encode_image(PIXELS)]}), tmp_path / "t.parquet")
    (tmp_path / "b.png").write_bytes(encode_image(PIXELS))
    source = open_source(str(tmp_path), format="folder")  # a folder of files, whatever they are
    assert source.kind == "folder"
    assert [s.paths for s in source.list_shards()] == [(str(tmp_path / "b.png"),)]
    with pytest.raises(ConfigError, match="unknown source format 'zip'.*folder, parquet"):
        open_source(str(tmp_path), format="zip")


def test_every_registered_kind_imports_and_can_sniff() -> None:
    for kind in KINDS:
        cls = source_class(kind)
        assert cls.kind == kind
        assert callable(cls.sniff)


def test_memory_filesystem_uri() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/h2-detect/pics/one.png", encode_image(PIXELS))
    fs.pipe("/h2-detect/pics/sub/two.png", encode_image(PIXELS[::-1]))
    source = open_source("memory://h2-detect/pics")
    shard = source.list_shards()[0]
    assert all(p.startswith("memory://") for p in shard.paths)
    assert [p.split("/pics/")[1] for p in shard.paths] == ["one.png", "sub/two.png"]
    table = next(source.read_shard(shard))
    assert table["key"].to_pylist() == ["one", "sub/two"]
    assert np.array_equal(decode_image(table["image"][1].as_py()), PIXELS[::-1])


def test_missing_path_says_what_was_expected_where(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        open_source(str(tmp_path / "absent"))
    message = str(info.value)
    assert str(tmp_path / "absent") in message and "expected" in message and "\n" not in message
    with pytest.raises(SourceError, match="nothing matches"):
        open_source(str(tmp_path / "absent" / "*.tar"))


def test_unknown_protocol_is_a_one_line_source_error() -> None:
    with pytest.raises(SourceError, match="cannot open nosuchproto://x: Protocol not known"):
        open_source("nosuchproto://x")
