"""The `stl10` kind reads the headerless binaries: column-major planes, labels 1..10 -> 0..9."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import skimage.data
from skimage.transform import resize

from raeflow.data.images import decode_image
from raeflow.data.sources import detect_kind, open_source
from raeflow.data.sources.stl10 import Stl10Source
from raeflow.errors import SourceError


def stl_records(images: np.ndarray) -> bytes:
    """(N, 96, 96, 3) -> the published layout: per image 3 planes, each 96x96 column by column."""
    return b"".join(image[:, :, c].tobytes(order="F") for image in images for c in range(3))


def photos(count: int) -> np.ndarray:
    """Real photographs at STL-10's size, shifted per index so every image differs."""
    base = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    small = [(resize(p, (96, 96), anti_aliasing=True) * 255).astype(np.uint8) for p in base]
    return np.stack([np.roll(small[i % 3], i, axis=1) for i in range(count)])


def write_stl(root: Path, *, num_train: int, num_test: int, num_unlabeled: int) -> dict[str, np.ndarray]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    images = photos(num_train + num_test + num_unlabeled)
    rng = np.random.default_rng(1)
    split_images = {
        "train": images[:num_train],
        "test": images[num_train : num_train + num_test],
        "unlabeled": images[num_train + num_test :],
    }
    for split, part in list(split_images.items()):
        (folder / f"{split}_X.bin").write_bytes(stl_records(part))
        if split != "unlabeled":
            labels = rng.integers(1, 11, size=len(part)).astype(np.uint8)  # STL's own 1..10
            (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
            split_images[f"{split}_y"] = labels
    return split_images


def test_reads_all_splits_with_keys_labels_and_pixels(tmp_path: Path) -> None:
    data = write_stl(tmp_path, num_train=7, num_test=5, num_unlabeled=4)
    assert detect_kind(str(tmp_path)) == "stl10"
    source = Stl10Source(str(tmp_path), shard_rows=3)
    shards = source.list_shards()
    assert [s.name for s in shards] == [
        "train[0:3]",
        "train[3:6]",
        "train[6:7]",
        "test[0:3]",
        "test[3:5]",
        "unlabeled[0:3]",
        "unlabeled[3:4]",
    ]
    table = pa.concat_tables(t for s in shards for t in source.read_shard(s, batch_rows=2))
    keys = table.column("key").to_pylist()
    assert keys == [f"train/{i}" for i in range(7)] + [f"test/{i}" for i in range(5)] + [
        f"unlabeled/{i}" for i in range(4)
    ]
    expected_labels = (data["train_y"] - 1).tolist() + (data["test_y"] - 1).tolist() + [None] * 4
    assert table.column("label").to_pylist() == expected_labels
    all_images = np.concatenate([data["train"], data["test"], data["unlabeled"]])
    for row in range(16):
        np.testing.assert_array_equal(decode_image(table.column("image")[row].as_py()), all_images[row])


def test_column_major_planes_land_where_they_belong(tmp_path: Path) -> None:
    record = np.zeros(3 * 96 * 96, dtype=np.uint8)
    record[1] = 10  # red plane, 2nd byte: column 0, row 1 -> pixel (y=1, x=0)
    record[96] = 20  # red plane: column 1, row 0 -> pixel (y=0, x=1)
    record[96 * 96 + 5 * 96 + 2] = 30  # green plane: column 5, row 2 -> (y=2, x=5)
    record[2 * 96 * 96 + 96 * 96 - 1] = 40  # blue plane, last byte -> (y=95, x=95)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "test_X.bin").write_bytes(record.tobytes())
    (folder / "test_y.bin").write_bytes(bytes([10]))
    source = open_source(str(tmp_path), "stl10")
    (shard,) = source.list_shards()
    row = next(source.read_shard(shard))
    pixels = decode_image(row.column("image")[0].as_py())
    assert pixels.shape == (96, 96, 3)
    assert (pixels[1, 0, 0], pixels[0, 1, 0], pixels[2, 5, 1], pixels[95, 95, 2]) == (10, 20, 30, 40)
    assert int(pixels.sum()) == 100
    assert row.column("label").to_pylist() == [9]  # STL's class 10 is label 9


def test_truncated_binary_gives_an_error_row(tmp_path: Path) -> None:
    write_stl(tmp_path, num_train=0, num_test=0, num_unlabeled=3)
    path = tmp_path / "stl10_binary" / "unlabeled_X.bin"
    path.write_bytes(path.read_bytes()[:-1000])
    source = open_source(str(tmp_path), "stl10")
    table = pa.concat_tables(t for s in source.list_shards() for t in source.read_shard(s))
    assert table.num_rows == 3
    assert table.column("error").to_pylist()[:2] == [None, None]
    assert table.column("error")[2].as_py().startswith("truncated")


def test_label_file_of_another_size_is_refused(tmp_path: Path) -> None:
    write_stl(tmp_path, num_train=4, num_test=0, num_unlabeled=0)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2, 3]))
    with pytest.raises(SourceError, match="3 labels but"):
        open_source(str(tmp_path), "stl10").list_shards()


def test_missing_dataset_says_which_files_where(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"stl10_binary/train_X\.bin.*never downloads"):
        open_source(str(tmp_path), "stl10").list_shards()
