"""The `cifar10` kind reads the python batches safely: plain data yes, code never."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raeflow.data.images import decode_image
from raeflow.data.sources import detect_kind, open_source
from raeflow.errors import SourceError


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) in the published layout: red, green, blue planes, row-major."""
    return np.concatenate([images[..., c].reshape(len(images), -1) for c in range(3)], axis=1)


def write_batch(path: Path, images: np.ndarray, labels: list[int], label: bytes) -> None:
    """A batch file as published: a protocol-2 pickle of the dict with byte-string keys."""
    batch = {
        b"batch_label": label,
        b"labels": labels,
        b"data": cifar_rows(images),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar(root: Path, *, per_batch: int = 7, num_test: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Five train batches and a test batch under `root/cifar-10-batches-py`; returns all images/labels."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    total = 5 * per_batch + num_test
    images = rng.integers(0, 256, size=(total, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=total)
    for b in range(5):
        rows = slice(b * per_batch, (b + 1) * per_batch)
        write_batch(folder / f"data_batch_{b + 1}", images[rows], labels[rows].tolist(), b"training batch")
    write_batch(
        folder / "test_batch", images[5 * per_batch :], labels[5 * per_batch :].tolist(), b"testing batch"
    )
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    return images, labels


def test_reads_train_batches_in_order_then_test(tmp_path: Path) -> None:
    images, labels = write_cifar(tmp_path)
    assert detect_kind(str(tmp_path)) == "cifar10"
    source = open_source(str(tmp_path))
    shards = source.list_shards()
    assert [s.name for s in shards] == [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    table = pa.concat_tables(t for s in shards for t in source.read_shard(s, batch_rows=4))
    assert table.column("key").to_pylist() == [f"train/{i}" for i in range(35)] + [
        f"test/{i}" for i in range(5)
    ]
    assert table.column("label").to_pylist() == labels.tolist()
    for row in (0, 8, 34, 35, 39):
        np.testing.assert_array_equal(decode_image(table.column("image")[row].as_py()), images[row])


def test_plane_layout_is_red_green_blue_row_major(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, 1] = 11  # red plane, y=0, x=1
    row[0, 32] = 22  # red plane, y=1, x=0
    row[0, 1024] = 33  # green plane, y=0, x=0
    row[0, 2048 + 32 * 31 + 31] = 44  # blue plane, bottom-right
    batch = {b"labels": [3], b"data": row, b"batch_label": b"x", b"filenames": [b"a.png"]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    source = open_source(str(folder), "cifar10")
    (shard,) = source.list_shards()
    pixels = decode_image(next(source.read_shard(shard)).column("image")[0].as_py())
    assert (pixels[0, 1, 0], pixels[1, 0, 0], pixels[0, 0, 1], pixels[31, 31, 2]) == (11, 22, 33, 44)
    assert int(pixels.sum()) == 11 + 22 + 33 + 44


class _RunsShell:
    """What an attacker pickles: unpickling calls os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"labels": [1], b"data": _RunsShell(marker), b"batch_label": b"x"}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    source = open_source(str(tmp_path), "cifar10")
    with pytest.raises(
        SourceError, match=r"data_batch_3 is not a CIFAR python batch.*refused to load posix.system"
    ):
        source.list_shards()
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"labels": [1], b"data": np.array([[None] * 3072], dtype=object)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(SourceError, match="dtype object is not allowed"):
        open_source(str(tmp_path), "cifar10").list_shards()


def test_wrong_shape_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"labels": [1], b"data": np.zeros((1, 784), dtype=np.uint8)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(SourceError, match=r"not a \(N, 3072\) uint8 array"):
        open_source(str(tmp_path), "cifar10").list_shards()


def test_missing_dataset_says_which_files_where(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"cifar-10-batches-py/data_batch_1\.\.5.*never downloads"):
        open_source(str(tmp_path), "cifar10").list_shards()
