"""The webdataset kind: shards written by the webdataset library, and tars that are not safe or whole."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import skimage.data
import webdataset as wds

from raeflow.data.images import decode_image, encode_image
from raeflow.data.sources import ROW_SCHEMA, detect_kind, open_source


def crops(count: int) -> list[np.ndarray]:
    photo = skimage.data.rocket()
    return [np.ascontiguousarray(photo[i * 13 : i * 13 + 18, i * 29 : i * 29 + 26]) for i in range(count)]


def read_all(source, batch_rows: int = 256) -> pa.Table:
    tables = [t for s in source.list_shards() for t in source.read_shard(s, batch_rows=batch_rows)]
    assert all(t.schema == ROW_SCHEMA for t in tables)
    return pa.concat_tables(tables)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shards_written_by_the_webdataset_library(tmp_path: Path) -> None:
    pixels = crops(6)
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"train-{shard:06d}.tar")) as sink:
            for i in range(3):
                n = shard * 3 + i
                sample = {"__key__": f"img/{n:05d}", "cls": n % 4, "txt": f"rocket {n}"}
                sample["webp" if n % 2 else "png"] = encode_image(
                    pixels[n], "webp" if n % 2 else "png", quality=100
                )
                sink.write(sample)
    source = open_source(str(tmp_path))
    assert source.kind == "webdataset" and source.has_labels
    assert [s.name for s in source.list_shards()] == ["train-000000.tar", "train-000001.tar"]
    table = read_all(source, batch_rows=2)
    assert table["key"].to_pylist() == [f"img/{n:05d}" for n in range(6)]
    assert table["label"].to_pylist() == [n % 4 for n in range(6)]
    assert table["error"].null_count == 6
    for data, expected in zip(table["image"].to_pylist(), pixels, strict=True):
        assert np.array_equal(decode_image(data), expected)  # PNG and lossless WebP
    assert table["source"].to_pylist()[3].endswith("train-000001.tar")


def test_label_from_json_when_there_is_no_cls(tmp_path: Path) -> None:
    data = encode_image(crops(1)[0])
    write_tar(tmp_path / "a.tar", [("s1.jpg", data), ("s1.json", b'{"label": 3}'), ("s2.JPG", data)])
    table = read_all(open_source(str(tmp_path / "a.tar")))
    assert table["key"].to_pylist() == ["s1", "s2"]
    assert table["label"].to_pylist() == [3, None]
    assert table["error"].null_count == 2


def test_unsafe_missing_and_duplicate_samples_are_rejected_rows(tmp_path: Path) -> None:
    data = encode_image(crops(1)[0])
    write_tar(
        tmp_path / "bad.tar",
        [
            ("../escape.png", data),
            ("/etc/absolute.png", data),
            ("d/../up.png", data),
            ("good.png", data),
            ("captions.txt", b"no image here"),
            ("good.cls", b"1"),  # not adjacent to good.png: a second sample with the same key
        ],
    )
    table = read_all(open_source(str(tmp_path / "bad.tar")))
    reasons = {
        k: (e or "").split(":")[0]
        for k, e in zip(table["key"].to_pylist(), table["error"].to_pylist(), strict=True)
    }
    assert reasons == {
        "../escape": "unsafe_key",
        "/etc/absolute": "unsafe_key",
        "d/../up": "unsafe_key",
        "good": "",
        "captions": "not_an_image",
        "good#1": "duplicate_key",
    }
    rejected = [i for i, e in enumerate(table["error"].to_pylist()) if e]
    assert all(table["image"].to_pylist()[i] == b"" for i in rejected)


def test_truncated_tar_keeps_the_samples_before_the_break(tmp_path: Path) -> None:
    pixels = crops(4)
    whole = tmp_path / "whole.tar"
    write_tar(whole, [(f"{i}.png", encode_image(p)) for i, p in enumerate(pixels)])
    cut = tmp_path / "cut" / "cut.tar"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    table = read_all(open_source(str(cut)))
    errors = table["error"].to_pylist()
    assert errors[-1].startswith("truncated")
    assert all(e is None for e in errors[:-1]) and len(errors) >= 2
    assert np.array_equal(decode_image(table["image"].to_pylist()[0]), pixels[0])


@pytest.mark.parametrize("pattern", ["*.tar", "shard-*"])
def test_globs_of_tars_are_webdataset(tmp_path: Path, pattern: str) -> None:
    data = encode_image(crops(1)[0])
    for i in range(3):
        write_tar(tmp_path / f"shard-{i}.tar", [(f"k{i}.png", data)])
    uri = str(tmp_path / pattern)
    assert detect_kind(uri) == "webdataset"
    assert read_all(open_source(uri))["key"].to_pylist() == ["k0", "k1", "k2"]


def test_gzipped_tar_and_other_members_skipped(tmp_path: Path) -> None:
    pixels = crops(2)
    with tarfile.open(tmp_path / "part.tar.gz", "w:gz") as tar:
        for i, image in enumerate(pixels):
            for name, data in ((f"{i}.png", encode_image(image)), (f"{i}.mp4", b"\0" * 100_000)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    source = open_source(str(tmp_path))
    assert source.kind == "webdataset"
    table = read_all(source)
    assert table["key"].to_pylist() == ["0", "1"] and table["error"].null_count == 2
    assert np.array_equal(decode_image(table["image"][1].as_py()), pixels[1])
