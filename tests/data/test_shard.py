"""`raeflow shard`: sources packed into Parquet / WebDataset shards that outside tools read back."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image

from raeflow.cli import main
from raeflow.data import shard_writer
from raeflow.data.images import decode_image, encode_raw
from raeflow.data.shard_writer import ShardSettings, pack_source
from raeflow.data.sources import detect_kind, open_source
from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source
from raeflow.errors import ConfigError, SourceError


def write_mnist(folder: Path, digits: tuple[np.ndarray, np.ndarray], num_train: int, num_test: int) -> None:
    """Published idx layout (train plain, test gzipped)."""
    x, y = digits
    folder.mkdir(parents=True)

    def images(a: np.ndarray) -> bytes:
        return struct.pack(">IIII", 2051, len(a), 28, 28) + a.tobytes()

    def labels(a: np.ndarray) -> bytes:
        return struct.pack(">II", 2049, len(a)) + a.astype(np.uint8).tobytes()

    (folder / "train-images-idx3-ubyte").write_bytes(images(x[:num_train]))
    (folder / "train-labels-idx1-ubyte").write_bytes(labels(y[:num_train]))
    test = slice(num_train, num_train + num_test)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images(x[test])))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels(y[test])))


def file_digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def mnist_dir(tmp_path: Path, mnist_digits) -> Path:
    write_mnist(tmp_path / "mnist", mnist_digits, num_train=230, num_test=40)
    return tmp_path / "mnist"


def test_parquet_round_trip_keeps_keys_labels_pixels_and_reruns_identically(
    tmp_path: Path, mnist_dir: Path, mnist_digits
) -> None:
    x, y = mnist_digits
    out = tmp_path / "out"
    report = pack_source(ShardSettings(source=str(mnist_dir), out=str(out), shard_size=100))
    assert (report.num_rows, report.num_rejected, report.source_kind) == (270, 0, "mnist")

    names = sorted(p.name for p in out.glob("shard-*"))
    assert names == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    table = pq.read_table([str(out / n) for n in names])  # plain pyarrow, no raeflow needed
    assert table.column_names == ["key", "image", "label", "format"]
    assert table.column("key").to_pylist() == [f"train/{i}" for i in range(230)] + [
        f"test/{i}" for i in range(40)
    ]
    assert table.column("label").to_pylist() == y[:270].tolist()
    assert set(table.column("format").to_pylist()) == {"png"}
    for row in (0, 99, 100, 229, 230, 269):
        png = table.column("image")[row].as_py()
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), x[row])  # PNG any tool reads

    index = json.loads((out / "_index.json").read_text())
    assert [(s["name"], s["rows"]) for s in index["shards"]] == list(zip(names, [100, 100, 70], strict=True))
    assert (index["num_rows"], index["num_rejected"], index["source"]) == (270, 0, str(mnist_dir))
    for shard in index["shards"]:
        assert shard["sha256"] == hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest()
    assert pq.read_table(out / "_rejected" / "part-00000.parquet").num_rows == 0

    before = file_digests(out)
    pack_source(ShardSettings(source=str(mnist_dir), out=str(out), shard_size=100, read_ahead=1))
    assert file_digests(out) == before  # same bytes, whatever the threads' timing


def read_webdataset(paths: list[str]) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset(paths, shardshuffle=False, empty_check=False))


def test_webdataset_round_trip_reads_with_the_webdataset_library(
    tmp_path: Path, mnist_dir: Path, mnist_digits
) -> None:
    x, y = mnist_digits
    out = tmp_path / "wds"
    pack_source(ShardSettings(source=str(mnist_dir), out=str(out), format="webdataset", shard_size=128))
    tars = sorted(str(p) for p in out.glob("shard-*.tar"))
    assert [Path(t).name for t in tars] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    samples = read_webdataset(tars)
    assert [s["__key__"] for s in samples] == [f"train/{i}" for i in range(230)] + [
        f"test/{i}" for i in range(40)
    ]
    assert [int(s["cls"]) for s in samples] == y[:270].tolist()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(samples[250]["png"]))), x[250])
    with tarfile.open(tars[0]) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}
        assert {(m.uid, m.gid, m.uname) for m in tar.getmembers()} == {(0, 0, "")}

    before = file_digests(out)
    pack_source(ShardSettings(source=str(mnist_dir), out=str(out), format="webdataset", shard_size=128))
    assert file_digests(out) == before


def photo_bytes(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(skimage.data.coffee()[::8, ::8]).save(out, fmt)
    return out.getvalue()


def test_bad_images_are_listed_and_standard_formats_copied_byte_for_byte(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    (src / "cats").mkdir(parents=True)
    good_jpeg, good_png, bmp = photo_bytes("JPEG"), photo_bytes("PNG"), photo_bytes("BMP")
    (src / "cats" / "a.jpg").write_bytes(good_jpeg)
    (src / "b.png").write_bytes(good_png)
    (src / "c.bmp").write_bytes(bmp)
    (src / "d.jpg").write_bytes(b"this is not a jpeg at all")
    (src / "e.jpg").write_bytes(good_jpeg[:200])  # truncated
    (src / "v1.2.png").write_bytes(good_png)  # a dot in the key: WebDataset would split it
    out = tmp_path / "out"
    report = pack_source(ShardSettings(source=str(src), out=str(out), format="webdataset"))
    assert report.num_rows == 3

    samples = {s["__key__"]: s for s in read_webdataset([str(out / "shard-00000.tar")])}
    assert sorted(samples) == ["b", "c", "cats/a"]
    assert samples["cats/a"]["jpg"] == good_jpeg  # copied, not re-encoded
    assert samples["b"]["png"] == good_png
    np.testing.assert_array_equal(
        decode_image(samples["c"]["png"]), skimage.data.coffee()[::8, ::8]
    )  # BMP -> PNG

    rejected = pq.read_table(out / "_rejected" / "part-00000.parquet").to_pylist()
    reasons = {r["key"]: r["reason"].split(":")[0] for r in rejected}
    assert reasons == {"d": "not_an_image", "e": "truncated", "v1.2": "key_has_dot"}
    assert all(r["source"].endswith((".jpg", ".png")) for r in rejected)
    index = json.loads((out / "_index.json").read_text())
    assert (index["num_rows"], index["num_rejected"]) == (3, 3)
    assert index["rejected_reasons"] == {"key_has_dot": 1, "not_an_image": 1, "truncated": 1}


class _CraftedSource(Source):
    """A source whose keys try to leave the output folder (what a hostile Parquet file could hold)."""

    kind = "crafted"

    def list_shards(self) -> list[Shard]:
        return [Shard(index=0, name="only", paths=("crafted://x",))]

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        image = encode_raw(np.full((4, 4, 1), 200, dtype=np.uint8))
        keys = ["ok/1", "../escape", "/etc/passwd", "a/../../b", "ok/1", "ok/2", "c:/win", "ok/3"]
        errors = [None] * 5 + ["read_error: corrupt tar member", None, None]
        yield pa.Table.from_pydict(
            {
                "key": keys,
                "source": ["crafted://x"] * len(keys),
                "image": [image if e is None else b"" for e in errors],
                "label": [1] * len(keys),
                "error": errors,
            },
            schema=ROW_SCHEMA,
        )


def test_keys_that_would_escape_the_output_are_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_writer, "open_source", lambda uri, fmt, image_column=None: _CraftedSource(uri))
    out = tmp_path / "out"
    report = pack_source(ShardSettings(source=str(tmp_path / "crafted"), out=str(out), format="webdataset"))
    with tarfile.open(out / "shard-00000.tar") as tar:
        assert tar.getnames() == ["ok/1.png", "ok/1.cls", "ok/3.png", "ok/3.cls"]
    assert report.rejected_reasons == {"duplicate_key": 1, "read_error": 1, "unsafe_key": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written beside the output


def test_rerun_with_fewer_shards_removes_the_stale_ones(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "out"
    pack_source(ShardSettings(source=str(mnist_dir), out=str(out), shard_size=50))
    assert len(list(out.glob("shard-*.parquet"))) == 6
    (out / "notes.txt").write_text("mine")
    pack_source(ShardSettings(source=str(mnist_dir), out=str(out), shard_size=1000))
    assert sorted(p.name for p in out.iterdir()) == [
        "_index.json",
        "_rejected",
        "notes.txt",
        "shard-00000.parquet",
    ]


def test_out_inside_the_source_is_refused(mnist_dir: Path) -> None:
    with pytest.raises(ConfigError, match="inside the source"):
        pack_source(ShardSettings(source=str(mnist_dir), out=str(mnist_dir / "shards")))


def test_writes_to_a_bucket(s3_bucket: str, mnist_dir: Path, tmp_path: Path, mnist_digits) -> None:
    import fsspec

    out = f"{s3_bucket}/packed/mnist"
    report = pack_source(ShardSettings(source=str(mnist_dir), out=out, format="webdataset", shard_size=200))
    assert report.out == out and report.num_rows == 270
    fs = fsspec.filesystem("s3")
    index = json.loads(fs.cat_file(f"{out}/_index.json"))
    assert [s["rows"] for s in index["shards"]] == [200, 70]
    fs.get(f"{out}/", str(tmp_path / "copy"), recursive=True)
    samples = read_webdataset([str(tmp_path / "copy" / "shard-00001.tar")])
    assert samples[0]["__key__"] == "train/200" and int(samples[-1]["cls"]) == mnist_digits[1][269]
    assert index["shards"][1]["sha256"] == hashlib.sha256(fs.cat_file(f"{out}/shard-00001.tar")).hexdigest()


def test_cli_packs_and_reports_user_mistakes_in_one_line(tmp_path: Path, mnist_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["shard", str(mnist_dir), "--out", str(tmp_path / "o"), "--shard-size", "200"]
    )
    assert result.exit_code == 0, result.output
    assert "packed 270 images from a mnist source into 2 parquet shards" in result.output
    assert "rejected: none" in result.output

    missing = runner.invoke(main, ["shard", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")])
    assert missing.exit_code == 2
    assert missing.output.startswith("error: ") and "Traceback" not in missing.output

    wrong = runner.invoke(
        main, ["shard", str(tmp_path / "o"), "--source-format", "cifar10", "--out", str(tmp_path / "o3")]
    )
    assert wrong.exit_code == 2 and "cifar-10-batches-py/data_batch_1..5" in wrong.output


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_shards_read_back_as_a_raeflow_source(
    tmp_path: Path, mnist_dir: Path, mnist_digits, fmt: str
) -> None:
    out = tmp_path / fmt
    pack_source(ShardSettings(source=str(mnist_dir), out=str(out), format=fmt, shard_size=100))
    assert detect_kind(str(out)) == fmt  # `_rejected/` beside the shards is not taken for input
    source = open_source(str(out))
    table = pa.concat_tables(t for s in source.list_shards() for t in source.read_shard(s))
    assert table.column("key").to_pylist() == [f"train/{i}" for i in range(230)] + [
        f"test/{i}" for i in range(40)
    ]
    assert table.column("label").to_pylist() == mnist_digits[1][:270].tolist()
    np.testing.assert_array_equal(decode_image(table.column("image")[7].as_py())[:, :, 0], mnist_digits[0][7])


class _FailingSource(_CraftedSource):
    """Many good shards, then one whose file vanished: the run must stop, not hang or half-index."""

    def list_shards(self) -> list[Shard]:
        return [Shard(index=i, name=f"s{i}", paths=(f"x{i}",)) for i in range(12)]

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        if shard.index == 5:
            raise SourceError("x5 disappeared")
        image = encode_raw(np.full((4, 4, 1), shard.index, dtype=np.uint8))
        for b in range(6):  # more batches than a read-ahead queue holds
            yield pa.Table.from_pydict(
                {
                    "key": [f"s{shard.index}/{b}"],
                    "source": ["x"],
                    "image": [image],
                    "label": [None],
                    "error": [None],
                },
                schema=ROW_SCHEMA,
            )


def test_a_source_failure_stops_the_run_without_an_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shard_writer, "open_source", lambda uri, fmt, image_column=None: _FailingSource(uri))
    out = tmp_path / "out"
    with pytest.raises(SourceError, match="x5 disappeared"):
        pack_source(ShardSettings(source=str(tmp_path / "src"), out=str(out), shard_size=6, read_ahead=3))
    assert not (out / "_index.json").exists()
    assert (out / "shard-00004.parquet").exists()  # shards before the failure were finished


def test_image_size_writes_a_training_cache_with_the_pixels_training_would_decode(tmp_path: Path) -> None:
    from raeflow.data.images import decode_fitted

    photo = skimage.data.astronaut()
    folder = tmp_path / "photos"
    folder.mkdir()
    originals = {}
    for i, (size, mode, orientation) in enumerate(
        [((640, 480), "RGB", 1), ((480, 360), "RGB", 6), ((400, 320), "L", 1), ((500, 500), "RGBA", 1)]
    ):
        image = Image.fromarray(photo).resize(size).convert(mode)
        exif = Image.Exif()
        exif[0x0112] = orientation
        out = io.BytesIO()
        image.save(out, "PNG" if mode == "RGBA" else "JPEG", exif=exif)
        originals[f"p{i}"] = out.getvalue()
        (folder / f"p{i}.{'png' if mode == 'RGBA' else 'jpg'}").write_bytes(out.getvalue())

    result = CliRunner().invoke(
        main, ["shard", str(folder), "--out", str(tmp_path / "cache"), "--image-size", "48x64"]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "cache" / "shard-00000.parquet")
    assert table.column("format").to_pylist() == ["png"] * 4
    for key, data in zip(table.column("key").to_pylist(), table.column("image").to_pylist(), strict=True):
        cached = decode_image(data)
        expected = decode_fitted(originals[key], None, 48, 64)  # what training decodes from the original
        assert np.array_equal(cached, expected), key
        assert np.array_equal(decode_fitted(data, 3, 48, 64), decode_fitted(originals[key], 3, 48, 64)), key
    assert decode_image(table.column("image")[2].as_py()).shape == (48, 64, 1)  # grey stays grey
    index = json.loads((tmp_path / "cache" / "_index.json").read_text())
    assert index["settings"]["image_size"] == [48, 64]

    bad = CliRunner().invoke(
        main, ["shard", str(folder), "--out", str(tmp_path / "c2"), "--image-size", "0x0"]
    )
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "--image-size" in bad.output
