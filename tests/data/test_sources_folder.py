"""The folder kind: keys, shards, collisions, globs, and a folder of deliberately bad files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import skimage.data
from PIL import Image

from raeflow.data.images import ImageRejected, decode_image, encode_image
from raeflow.data.sources import ROW_SCHEMA, open_source
from raeflow.data.sources.folder import FolderSource
from raeflow.errors import SourceError


def read_all(source) -> pa.Table:
    tables = [t for shard in source.list_shards() for t in source.read_shard(shard, batch_rows=2)]
    for table in tables:
        assert table.schema == ROW_SCHEMA
    return pa.concat_tables(tables)


def pillow_bytes(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@pytest.fixture()
def tree(tmp_path: Path) -> dict[str, np.ndarray]:
    """A nested folder of lossless real-photo crops; returns key -> pixels."""
    photo = skimage.data.coffee()
    written = {}
    for i, rel in enumerate(["b.png", "a/x.png", "a/y.webp", "a/deep/z.bmp", "c.tiff"]):
        pixels = np.ascontiguousarray(photo[i * 20 : i * 20 + 16, i * 30 : i * 30 + 24])
        path = tmp_path / "root" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {"png": "PNG", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}[rel.rsplit(".", 1)[1]]
        extra = {"lossless": True} if fmt == "WEBP" else {}
        Image.fromarray(pixels).save(path, fmt, **extra)
        written[rel.rsplit(".", 1)[0]] = pixels
    (tmp_path / "root" / "notes.txt").write_text("not an image, not listed")
    return written


def test_folder_reads_every_image_with_its_relative_key(tmp_path: Path, tree: dict[str, np.ndarray]) -> None:
    source = open_source(str(tmp_path / "root"))
    assert source.kind == "folder"
    table = read_all(source)
    keys = table["key"].to_pylist()
    assert keys == sorted(tree)  # sorted by path; extension dropped; the .txt is not listed
    for key, data, uri in zip(keys, table["image"].to_pylist(), table["source"].to_pylist(), strict=True):
        assert np.array_equal(decode_image(data), tree[key])
        assert Path(uri).is_file() and Path(uri).stem == Path(key).name
    assert table["label"].null_count == len(keys) and table["error"].null_count == len(keys)


def test_shards_are_fixed_chunks_of_the_sorted_list(tmp_path: Path, tree: dict[str, np.ndarray]) -> None:
    source = FolderSource(str(tmp_path / "root"), files_per_shard=2)
    shards = source.list_shards()
    assert [s.index for s in shards] == [0, 1, 2]
    assert [len(s.paths) for s in shards] == [2, 2, 1]
    assert shards == source.list_shards()  # deterministic
    rows = [t.num_rows for s in shards for t in source.read_shard(s)]
    assert sum(rows) == len(tree)


def test_same_name_different_extension_keeps_both(tmp_path: Path) -> None:
    root = tmp_path / "dup"
    root.mkdir()
    pixels = np.full((4, 4, 3), 7, np.uint8)
    for name in ("a.jpg", "a.png", "b.png", "a.png.jpg"):
        (root / name).write_bytes(encode_image(pixels, "png"))
    keys = read_all(open_source(str(root)))["key"].to_pylist()
    assert sorted(keys) == ["a.jpg", "a.png", "a.png.jpg", "b"]


def test_glob_selects_files_and_keys_are_relative_to_its_folder(
    tmp_path: Path, tree: dict[str, np.ndarray]
) -> None:
    table = read_all(open_source(str(tmp_path / "root" / "a" / "*.png")))
    assert table["key"].to_pylist() == ["x"]
    table = read_all(open_source(str(tmp_path / "root" / "**" / "*.png")))
    assert sorted(table["key"].to_pylist()) == ["a/x", "b"]


def test_missing_and_empty_folders_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or folder.*expected"):
        open_source(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(tmp_path / "empty")).list_shards()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_bad_folder(root: Path) -> dict[str, str | None]:
    """Good and bad files side by side; returns key -> expected reject reason (None = decodes)."""
    root.mkdir(parents=True)
    photo = np.ascontiguousarray(skimage.data.chelsea()[50:114, 100:196])  # (64, 96, 3)
    jpeg = pillow_bytes(Image.fromarray(photo), "JPEG")
    files = {
        "good.jpg": (jpeg, None),
        "empty.png": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
        "text.png": (b"hello, I am a text file with a .png name\n", "not_an_image"),
        "sixteen.png": (pillow_bytes(Image.fromarray(photo[:, :, 0].astype(np.uint16) * 257), "PNG"), None),
        "cmyk.jpg": (pillow_bytes(Image.fromarray(photo).convert("CMYK"), "JPEG"), None),
        "rgba.png": (pillow_bytes(Image.fromarray(photo).convert("RGBA"), "PNG"), None),
        "tiny.png": (pillow_bytes(Image.fromarray(photo[:1, :1]), "PNG"), "too_small"),
        "bomb.png": (png_claiming(100_000, 100_000), "too_many_pixels"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    return {name.rsplit(".", 1)[0]: reason for name, (_, reason) in files.items()}


def test_a_folder_of_bad_files_reads_to_the_end_with_distinct_reasons(tmp_path: Path) -> None:
    expected = write_bad_folder(tmp_path / "bad")
    table = read_all(FolderSource(str(tmp_path / "bad"), files_per_shard=4))
    assert sorted(table["key"].to_pylist()) == sorted(expected)
    outcomes = {}
    for key, data in zip(table["key"].to_pylist(), table["image"].to_pylist(), strict=True):
        try:
            pixels = decode_image(data, channels=3)
        except ImageRejected as rejected:
            outcomes[key] = rejected.reason
        else:
            assert pixels.shape == (64, 96, 3), key
            outcomes[key] = None
    assert outcomes == expected


def _save(root: Path, rel: str, seed: int) -> None:
    photo = skimage.data.astronaut()
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(photo[seed * 8 : seed * 8 + 12, seed * 8 : seed * 8 + 12])).save(
        path
    )


def test_class_subfolders_give_labels_in_sorted_name_order(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for i, rel in enumerate(["dogs/a.png", "cats/b.png", "cats/c.png", "dogs/puppies/d.png", "birds/e.png"]):
        _save(root, rel, i)
    (root / "empty").mkdir()  # no images: no class
    _save(root, "_hidden/x.png", 7)  # `_` folders are never read
    source = FolderSource(str(root), files_per_shard=2)  # labels must survive shard boundaries
    assert source.has_labels and source.label_names == ["birds", "cats", "dogs"]
    assert "3 classes from subfolder names: 0=birds, 1=cats, 2=dogs" in source.describe()
    table = read_all(source)
    labels = dict(zip(table["key"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert labels == {"birds/e": 0, "cats/b": 1, "cats/c": 1, "dogs/a": 2, "dogs/puppies/d": 2}
    # The source travels to workers without its listing, and still reads the same labels.
    import pickle

    shipped = pickle.loads(pickle.dumps(source))
    assert shipped._listing is None
    assert read_all(shipped)["label"].to_pylist() == table["label"].to_pylist()


def test_flat_or_mixed_folders_stay_unlabelled(tmp_path: Path) -> None:
    for i, rel in enumerate(["a.png", "b.png"]):
        _save(tmp_path / "flat", rel, i)
    flat = open_source(str(tmp_path / "flat"))
    assert not flat.has_labels and flat.label_names is None and "no labels" in flat.describe()
    assert read_all(flat)["label"].null_count == 2
    # An image in the root beside class folders: no labels rather than dropping that image.
    for i, rel in enumerate(["cats/a.png", "dogs/b.png", "loose.png"]):
        _save(tmp_path / "mixed", rel, i)
    mixed = open_source(str(tmp_path / "mixed"))
    assert not mixed.has_labels
    assert read_all(mixed).num_rows == 3
    # One subfolder is one class: a label that says nothing, so none.
    for i, rel in enumerate(["2023/a.png", "2023/june/b.png"]):
        _save(tmp_path / "one", rel, i)
    assert open_source(str(tmp_path / "one")).label_names is None


def test_glob_of_class_subfolders_is_labelled_relative_to_the_glob_root(tmp_path: Path) -> None:
    for i, rel in enumerate(["cats/a.png", "dogs/b.png", "dogs/c.jpg"]):
        _save(tmp_path / "pets", rel, i)
    source = open_source(str(tmp_path / "pets" / "*" / "*.png"))
    assert source.label_names == ["cats", "dogs"]
    assert dict(zip(*(read_all(source)[c].to_pylist() for c in ("key", "label")), strict=True)) == {
        "cats/a": 0,
        "dogs/b": 1,
    }
