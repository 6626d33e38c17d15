"""The output folder and the manifest, without Ray: atomic writes, escaping keys, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from raeflow.batch.manifest import Manifest, ShardRecord
from raeflow.batch.output import TEMP_MARK, OutputDir, UnsafeKey, safe_relpath
from raeflow.errors import JobError


@pytest.mark.parametrize("key", ["../up", "a/../../up", "/etc/passwd", "a//b", "./a", "", "a\\b", "C:/x"])
def test_keys_that_would_escape_are_refused(key: str) -> None:
    with pytest.raises(UnsafeKey, match="unsafe_key"):
        safe_relpath(key)


def test_ordinary_keys_pass() -> None:
    assert safe_relpath("train/cat.01.jpg") == "train/cat.01.jpg"


def test_put_is_atomic_and_leftovers_are_removed(tmp_path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    out.put("a/b.bin", b"whole")
    assert (tmp_path / "out" / "a" / "b.bin").read_bytes() == b"whole"
    with pytest.raises(RuntimeError):
        with out.open_atomic("a/c.bin") as handle:
            handle.write(b"half")
            raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["b.bin"]
    (tmp_path / "out" / "a" / f"{TEMP_MARK}123-c.bin").write_bytes(b"left by a killed run")
    assert out.remove_leftovers() == 1
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["b.bin"]


def test_manifest_refuses_another_model_or_settings(tmp_path) -> None:
    manifest = Manifest(OutputDir(str(tmp_path / "out")))
    assert manifest.claim("embed", "abc", {"data": "x"}, 3) is False
    assert manifest.claim("embed", "abc", {"data": "x"}, 3) is True
    with pytest.raises(JobError, match="model was"):
        manifest.claim("embed", "def", {"data": "x"}, 3)
    with pytest.raises(JobError, match="settings was"):
        manifest.claim("embed", "abc", {"data": "y"}, 3)
    with pytest.raises(JobError, match="job was"):
        manifest.claim("denoise", "abc", {"data": "x"}, 3)


def test_manifest_refuses_a_folder_of_other_files(tmp_path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"...")
    with pytest.raises(JobError, match="not empty"):
        Manifest(OutputDir(str(tmp_path / "photos"))).claim("embed", "abc", {}, 1)


def test_records_and_key_hashes_round_trip(tmp_path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    manifest = Manifest(out)
    record = ShardRecord(
        shard=4,
        name="f",
        rows_in=3,
        rows_out=2,
        rows_rejected=1,
        seconds=0.5,
        outputs=("part-00004-000000.parquet",),
        bytes=10,
        nodes=("n1", "n2"),
        compute=({"node": "n1", "precision": "bf16", "native_bf16": True, "threads": 2},),
    )
    manifest.write_record(record, np.array([1, 2, 3], dtype=np.uint64))
    assert manifest.finished() == {4: record}
    assert manifest.key_hashes(4).tolist() == [1, 2, 3]
    assert manifest.key_hashes(5).tolist() == []


def test_partial_outputs_of_unfinished_shards_are_removed(tmp_path) -> None:
    out = OutputDir(str(tmp_path / "out"))
    for name in (
        "part-00001-000000.parquet",
        "part-00002-000000.parquet",
        "part-00002-000512.parquet",
        "_rejected/part-00002-000000.parquet",
        "_rejected/part-00001-000000.parquet",
        "notes.txt",
    ):
        out.put(name, b"x")
    removed = Manifest(out).remove_partial([("", "part-"), ("_rejected", "part-")], {2})
    assert removed == 3
    left = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert left == ["_rejected/part-00001-000000.parquet", "notes.txt", "part-00001-000000.parquet"]


def test_out_that_is_a_file_is_refused(tmp_path) -> None:
    (tmp_path / "emb.parquet").write_bytes(b"PAR1")
    with pytest.raises(JobError, match="is a file"):
        Manifest(OutputDir(str(tmp_path / "emb.parquet"))).claim("embed", "abc", {}, 1)
