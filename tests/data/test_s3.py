"""Sources in a bucket: a real S3 endpoint (moto's server over HTTP) reached through s3fs."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
import webdataset as wds

from raeflow.data.images import decode_image, encode_image
from raeflow.data.sources import detect_kind, open_source
from raeflow.errors import SourceError


def pixels(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (6, 9, 3), dtype=np.uint8)


def read_all(source) -> pa.Table:
    return pa.concat_tables(t for s in source.list_shards() for t in source.read_shard(s, batch_rows=2))


@pytest.fixture()
def bucket(s3_bucket: str) -> tuple[str, s3fs.S3FileSystem]:
    """The bucket filled with a folder of PNGs, Parquet files and WebDataset tars."""
    fs = s3fs.S3FileSystem()
    for i in range(3):
        fs.pipe(f"{s3_bucket}/pics/{'deep/' if i == 2 else ''}p{i}.png", encode_image(pixels(i)))
    for i in range(2):
        out = io.BytesIO()
        pq.write_table(pa.table({"key": [f"row{i}"], "image": [encode_image(pixels(10 + i))]}), out)
        fs.pipe(f"{s3_bucket}/table/part-{i}.parquet", out.getvalue())
    for i in range(2):
        out = io.BytesIO()
        with wds.TarWriter(out) as sink:
            sink.write({"__key__": f"s{i}", "png": encode_image(pixels(20 + i)), "cls": i})
        fs.pipe(f"{s3_bucket}/shards/train-{i}.tar", out.getvalue())
    fs.invalidate_cache()
    return s3_bucket, fs


def test_folder_in_a_bucket(bucket: tuple[str, s3fs.S3FileSystem]) -> None:
    uri, _ = bucket
    assert detect_kind(f"{uri}/pics") == "folder"
    source = open_source(f"{uri}/pics/")
    table = read_all(source)
    assert table["key"].to_pylist() == ["deep/p2", "p0", "p1"]
    assert table["source"].to_pylist()[1] == f"{uri}/pics/p0.png"
    assert np.array_equal(decode_image(table["image"][0].as_py()), pixels(2))


def test_parquet_and_tar_globs_in_a_bucket(bucket: tuple[str, s3fs.S3FileSystem]) -> None:
    uri, _ = bucket
    parquet = open_source(f"{uri}/table/*.parquet")
    assert parquet.kind == "parquet"
    rows = read_all(parquet)
    assert rows["key"].to_pylist() == ["row0", "row1"]
    assert np.array_equal(decode_image(rows["image"][1].as_py()), pixels(11))
    tars = open_source(f"{uri}/shards/*.tar")
    assert tars.kind == "webdataset" and [s.name for s in tars.list_shards()] == [
        "train-0.tar",
        "train-1.tar",
    ]
    rows = read_all(tars)
    assert rows["key"].to_pylist() == ["s0", "s1"] and rows["label"].to_pylist() == [0, 1]
    assert np.array_equal(decode_image(rows["image"][0].as_py()), pixels(20))


def test_unreadable_object_is_a_row_with_an_error(bucket: tuple[str, s3fs.S3FileSystem]) -> None:
    uri, fs = bucket
    source = open_source(f"{uri}/pics")
    shard = source.list_shards()[0]
    fs.rm(f"{uri}/pics/p1.png")  # gone between listing and reading
    table = pa.concat_tables(source.read_shard(shard))
    errors = dict(zip(table["key"].to_pylist(), table["error"].to_pylist(), strict=True))
    assert errors["p0"] is None and errors["p1"].startswith("read_error")


def test_missing_prefix_in_a_bucket(bucket: tuple[str, s3fs.S3FileSystem]) -> None:
    uri, _ = bucket
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(f"{uri}/nothing-here")


def test_ray_workers_read_the_bucket(bucket: tuple[str, s3fs.S3FileSystem], ray_session: None) -> None:
    from raeflow.data.dataset import read_dataset

    uri, _ = bucket
    rows = read_dataset(open_source(f"{uri}/shards/*.tar")).take_all()
    assert sorted((r["key"], r["shard"], r["label"]) for r in rows) == [("s0", 0, 0), ("s1", 1, 1)]
    by_key = {r["key"]: r for r in rows}
    assert np.array_equal(decode_image(by_key["s0"]["image"]), pixels(20))
