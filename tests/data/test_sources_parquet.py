"""The parquet kind: img2dataset's layout as is, plain image/label tables, named columns."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data

from raeflow.data.images import decode_image, encode_image
from raeflow.data.sources import ROW_SCHEMA, open_source
from raeflow.errors import ConfigError, SourceError

# The schema img2dataset's ParquetSampleWriter writes (encode_format "jpg", default metadata).
IMG2DATASET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("jpg", pa.binary()),
        ("caption", pa.string()),
        ("url", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("exif", pa.string()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
    ]
)


def crops(count: int) -> list[np.ndarray]:
    photo = skimage.data.astronaut()
    return [np.ascontiguousarray(photo[i * 17 : i * 17 + 20, i * 23 : i * 23 + 30]) for i in range(count)]


def read_all(source, batch_rows: int = 256) -> pa.Table:
    tables = [t for s in source.list_shards() for t in source.read_shard(s, batch_rows=batch_rows)]
    assert all(t.schema == ROW_SCHEMA for t in tables)
    return pa.concat_tables(tables)


def write_img2dataset_shard(path: Path, first: int, pixels: list[np.ndarray], failed: set[int]) -> None:
    rows = []
    for i, image in enumerate(pixels):
        ok = i not in failed
        data = encode_image(image, "jpeg") if ok else None
        rows.append(
            {
                "key": f"{first + i:09d}",
                "jpg": data,
                "caption": f"astronaut crop {i}",
                "url": f"https://example.invalid/{first + i}.jpg",
                "width": image.shape[1] if ok else None,
                "height": image.shape[0] if ok else None,
                "original_width": 512,
                "original_height": 512,
                "exif": "{}",
                "sha256": hashlib.sha256(data).hexdigest() if ok else None,
                "status": "success" if ok else "failed_to_download",
                "error_message": None if ok else "HTTP Error 404: Not Found",
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, schema=IMG2DATASET_SCHEMA), path)


def test_img2dataset_output_reads_as_is(tmp_path: Path) -> None:
    pixels = crops(7)
    write_img2dataset_shard(tmp_path / "00000.parquet", 0, pixels[:4], failed={2})
    write_img2dataset_shard(tmp_path / "00001.parquet", 10000, pixels[4:], failed=set())
    source = open_source(str(tmp_path))
    assert source.kind == "parquet" and not source.has_labels
    assert [s.name for s in source.list_shards()] == ["00000.parquet", "00001.parquet"]
    table = read_all(source, batch_rows=2)
    keys = table["key"].to_pylist()
    assert keys == ["000000000", "000000001", "000000002", "000000003", "000010000", "000010001", "000010002"]
    errors = table["error"].to_pylist()
    assert [e is not None for e in errors] == [False, False, True, False, False, False, False]
    assert errors[2].startswith("empty") and "404" in errors[2]
    for i, data in enumerate(table["image"].to_pylist()):
        if i != 2:
            decoded = decode_image(data)
            assert np.abs(decoded.astype(int) - pixels[i]).mean() < 6  # JPEG
    assert table["source"].to_pylist()[0] == str(tmp_path / "00000.parquet")


def test_plain_table_with_labels_and_no_key(tmp_path: Path) -> None:
    pixels = crops(10)
    table = pa.table(
        {"image": [encode_image(p, "png") for p in pixels], "label": pa.array(range(10), pa.int32())}
    )
    pq.write_table(table, tmp_path / "digits.parquet", row_group_size=4)
    source = open_source(str(tmp_path / "digits.parquet"))
    assert source.has_labels
    batches = [t for s in source.list_shards() for t in source.read_shard(s, batch_rows=3)]
    assert [b.num_rows for b in batches] == [3, 3, 3, 1]
    rows = pa.concat_tables(batches)
    assert rows["key"].to_pylist() == [f"digits/{i}" for i in range(10)]
    assert rows["label"].to_pylist() == list(range(10))
    assert all(
        np.array_equal(decode_image(d), p) for d, p in zip(rows["image"].to_pylist(), pixels, strict=True)
    )


def test_named_image_column_and_hugging_face_struct(tmp_path: Path) -> None:
    pixels = crops(3)
    struct = pa.array(
        [{"bytes": encode_image(p, "png"), "path": f"{i}.png"} for i, p in enumerate(pixels)],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    pq.write_table(pa.table({"picture": struct, "key": [7, 8, 9]}), tmp_path / "hf.parquet")
    with pytest.raises(SourceError, match="--image-column.*picture"):
        open_source(str(tmp_path)).list_shards()
    rows = read_all(open_source(str(tmp_path), image_column="picture"))
    assert rows["key"].to_pylist() == ["7", "8", "9"]
    assert np.array_equal(decode_image(rows["image"].to_pylist()[1]), pixels[1])
    with pytest.raises(SourceError, match="no column 'pixels'"):
        open_source(str(tmp_path), image_column="pixels").list_shards()


def test_image_column_is_refused_for_other_kinds(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(encode_image(crops(1)[0]))
    with pytest.raises(ConfigError, match="parquet"):
        open_source(str(tmp_path), image_column="jpg")
