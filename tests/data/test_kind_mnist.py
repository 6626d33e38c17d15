"""The `mnist` kind reads the published idx files (plain and gzipped) with their real headers."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raeflow.data.images import decode_image
from raeflow.data.sources import detect_kind, open_source
from raeflow.data.sources.mnist import MnistSource
from raeflow.errors import SourceError


def idx_images(images: np.ndarray) -> bytes:
    """The published idx3 layout: magic 2051, count, rows, cols (big-endian), then the pixels."""
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """The published idx1 layout: magic 2049, count, then one byte per label."""
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_mnist(
    folder: Path, digits: tuple[np.ndarray, np.ndarray], *, num_train: int, num_test: int
) -> None:
    """Train split plain, test split gzipped, as both forms are published."""
    x, y = digits
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_images(x[:num_train]))
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_labels(y[:num_train]))
    test = slice(num_train, num_train + num_test)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_images(x[test])))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(y[test])))


def read_all(source) -> pa.Table:
    return pa.concat_tables(
        t for shard in source.list_shards() for t in source.read_shard(shard, batch_rows=50)
    )


def test_reads_keys_labels_and_pixels_of_both_splits(tmp_path: Path, mnist_digits) -> None:
    x, y = mnist_digits
    write_mnist(tmp_path, mnist_digits, num_train=300, num_test=130)
    assert detect_kind(str(tmp_path)) == "mnist"
    source = MnistSource(str(tmp_path), shard_rows=128)

    shards = source.list_shards()
    assert [s.name for s in shards] == [
        "train[0:128]",
        "train[128:256]",
        "train[256:300]",
        "test[0:128]",
        "test[128:130]",
    ]
    table = read_all(source)
    assert table.num_rows == 430
    assert table.column("key").to_pylist() == [f"train/{i}" for i in range(300)] + [
        f"test/{i}" for i in range(130)
    ]
    assert table.column("label").to_pylist() == y[:430].tolist()
    assert table.column("error").null_count == 430
    for row in (0, 129, 299, 300, 429):  # shard edges and both splits
        pixels = decode_image(table.column("image")[row].as_py())
        assert pixels.shape == (28, 28, 1)
        np.testing.assert_array_equal(pixels[:, :, 0], x[row])


def test_shards_are_deterministic_and_read_independently(tmp_path: Path, mnist_digits) -> None:
    write_mnist(tmp_path, mnist_digits, num_train=200, num_test=100)
    first = MnistSource(str(tmp_path), shard_rows=64).list_shards()
    again = MnistSource(str(tmp_path), shard_rows=64).list_shards()
    assert first == again
    # Reading shard 4 alone (a gz shard that starts mid-file) gives exactly its rows.
    source = MnistSource(str(tmp_path), shard_rows=64)
    gz_shard = next(s for s in first if s.name == "test[64:100]")
    rows = pa.concat_tables(source.read_shard(gz_shard))
    assert rows.column("key").to_pylist() == [f"test/{i}" for i in range(64, 100)]
    np.testing.assert_array_equal(
        decode_image(rows.column("image")[0].as_py())[:, :, 0], mnist_digits[0][264]
    )


def test_truncated_images_file_gives_error_rows_not_a_crash(tmp_path: Path, mnist_digits) -> None:
    write_mnist(tmp_path, mnist_digits, num_train=100, num_test=10)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[: 16 + 90 * 784 + 100])  # 90 whole images, then a cut
    source = MnistSource(str(tmp_path))
    table = pa.concat_tables(source.read_shard(source.list_shards()[0]))
    assert table.num_rows == 100
    errors = table.column("error").to_pylist()
    assert errors[:90] == [None] * 90
    assert all(e.startswith("truncated") for e in errors[90:])
    assert table.column("image")[95].as_py() == b""


def test_missing_dataset_says_which_files_where(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"train-images-idx3-ubyte\[\.gz\].*never downloads"):
        open_source(str(tmp_path), "mnist").list_shards()


def test_wrong_magic_is_refused(tmp_path: Path, mnist_digits) -> None:
    write_mnist(tmp_path, mnist_digits, num_train=10, num_test=10)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_labels(mnist_digits[1][:10]))
    with pytest.raises(SourceError, match="magic 2049, expected 2051"):
        MnistSource(str(tmp_path)).list_shards()


def test_label_count_mismatch_is_refused(tmp_path: Path, mnist_digits) -> None:
    write_mnist(tmp_path, mnist_digits, num_train=20, num_test=10)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_labels(mnist_digits[1][:19]))
    with pytest.raises(SourceError, match="19 labels but"):
        MnistSource(str(tmp_path)).list_shards()


def test_reads_from_a_bucket_with_range_reads(s3_bucket: str, tmp_path: Path, mnist_digits) -> None:
    import fsspec

    write_mnist(tmp_path, mnist_digits, num_train=150, num_test=20)
    fs = fsspec.filesystem("s3")
    fs.put(str(tmp_path) + "/", f"{s3_bucket}/mnist/", recursive=True)
    assert detect_kind(f"{s3_bucket}/mnist") == "mnist"
    source = open_source(f"{s3_bucket}/mnist/")
    shards = source.list_shards()
    assert shards[0].paths[0] == f"{s3_bucket}/mnist/train-images-idx3-ubyte"
    table = read_all(source)
    assert table.num_rows == 170
    assert table.column("label").to_pylist() == mnist_digits[1][:170].tolist()
    np.testing.assert_array_equal(
        decode_image(table.column("image")[149].as_py())[:, :, 0], mnist_digits[0][149]
    )
