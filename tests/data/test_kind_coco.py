"""The `coco` kind: split folders of JPEGs, labels from the largest annotation in instances json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import skimage.data
from PIL import Image

from raeflow.data.sources import coco_annotations, detect_kind, open_source
from raeflow.data.sources.coco import CocoSource
from raeflow.errors import SourceError


def jpeg(seed: int) -> bytes:
    photo = np.roll(skimage.data.chelsea()[::4, ::4], seed, axis=1)
    out = io.BytesIO()
    Image.fromarray(photo).save(out, "JPEG", quality=90)
    return out.getvalue()


def instances(images: list[tuple[int, str]], annotations: list[tuple[int, int, int, float]]) -> dict:
    """A COCO instances file: (image id, file name) images, (ann id, image id, category, area) annotations."""
    return {
        "info": {"description": "test", "year": 2017},
        "licenses": [{"id": 1, "name": "CC"}],
        "images": [{"id": i, "file_name": name, "height": 75, "width": 113} for i, name in images],
        "annotations": [
            {
                "id": a,
                "image_id": i,
                "category_id": c,
                "area": area,
                "bbox": [0, 0, 1, 1],
                "iscrowd": 0,
                "segmentation": [[0.5, 1.5, 2.5, 3.5, 4.5, 5.5]],
            }
            for a, i, c, area in annotations
        ],
        "categories": [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in (1, 18, 44, 90)],
    }


def write_coco(root: Path) -> dict[str, bytes]:
    """train2017 (6 images, labelled), val2017 (3 images, no instances file), annotations/."""
    files: dict[str, bytes] = {}
    for split, ids in (("train2017", range(1, 7)), ("val2017", range(101, 104))):
        (root / split).mkdir(parents=True)
        for i in ids:
            name = f"{i:012d}.jpg"
            files[f"{split}/{name}"] = jpeg(i)
            (root / split / name).write_bytes(files[f"{split}/{name}"])
    (root / "annotations").mkdir()
    doc = instances(
        [(i, f"{i:012d}.jpg") for i in range(1, 7)] + [(999, "000000000999.jpg")],  # 999 is not on disk
        [
            (10, 1, 18, 50.0),
            (11, 1, 44, 900.5),  # image 1: the largest is category 44
            (12, 2, 1, 10.0),  # image 2: one annotation
            (13, 3, 90, 7.0),
            (14, 3, 18, 7.0),  # image 3: a tie -> the lower annotation id (13, category 90)
            (15, 5, 1, 3.0),
            (16, 999, 1, 3.0),
        ],  # images 4 and 6 have no annotation
    )
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(doc))
    return files


def test_reads_keys_labels_and_bytes_of_every_split(tmp_path: Path) -> None:
    files = write_coco(tmp_path)
    assert detect_kind(str(tmp_path)) == "coco"
    source = CocoSource(str(tmp_path), shard_images=4)
    shards = source.list_shards()
    assert [s.name for s in shards] == ["train2017[0:4]", "train2017[4:6]", "val2017[0:3]"]
    table = pa.concat_tables(t for s in shards for t in source.read_shard(s, batch_rows=3))
    keys = table.column("key").to_pylist()
    assert keys == [f"{i:012d}" for i in list(range(1, 7)) + list(range(101, 104))]
    assert table.column("label").to_pylist() == [44, 1, 90, None, 1, None, None, None, None]
    assert table.column("error").null_count == 9
    sources = table.column("source").to_pylist()
    assert sources[0] == str(tmp_path / "train2017" / "000000000001.jpg")
    for row, source_uri in enumerate(sources):
        rel = "/".join(Path(source_uri).parts[-2:])
        assert table.column("image")[row].as_py() == files[rel]  # the file's own bytes


def test_a_split_folder_finds_the_annotations_beside_it(tmp_path: Path) -> None:
    write_coco(tmp_path)
    assert detect_kind(str(tmp_path / "train2017")) == "coco"
    source = open_source(str(tmp_path / "train2017"))
    table = pa.concat_tables(t for s in source.list_shards() for t in source.read_shard(s))
    assert table.num_rows == 6
    assert table.column("label").to_pylist() == [44, 1, 90, None, 1, None]


def test_a_missing_image_is_an_error_row(tmp_path: Path) -> None:
    write_coco(tmp_path)
    source = open_source(str(tmp_path), "coco")
    shards = source.list_shards()
    (tmp_path / "train2017" / "000000000002.jpg").unlink()
    table = pa.concat_tables(source.read_shard(shards[0]))
    assert table.num_rows == 6
    errors = table.column("error").to_pylist()
    assert errors[1].startswith("read_error") and errors[0] is None
    assert table.column("image")[1].as_py() == b""


def test_duplicate_stems_are_refused(tmp_path: Path) -> None:
    write_coco(tmp_path)
    (tmp_path / "val2017" / "000000000001.png").write_bytes(b"x")
    with pytest.raises(SourceError, match="share the key '000000000001'"):
        open_source(str(tmp_path), "coco").list_shards()


def test_missing_dataset_says_which_files_where(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"train2017/.*instances_<split>\.json.*never downloads"):
        open_source(str(tmp_path / "empty"), "coco").list_shards()


def test_streamed_labels_match_a_full_json_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The streaming reader agrees with json.load + max by area, even with chunks of a few bytes."""
    rng = np.random.default_rng(7)
    images = [(int(i), f"{i:012d}.jpg") for i in rng.choice(10_000, size=60, replace=False)]
    annotations = [
        (a, images[int(rng.integers(0, 60))][0], int(rng.choice([1, 18, 44, 90])), float(rng.integers(1, 20)))
        for a in range(1, 400)
    ]
    doc = instances(images, annotations)
    doc["info"]["note"] = 'escaped "quotes", commas, {braces} and ünïcode'
    text = json.dumps(doc, indent=1)

    by_image: dict[int, list] = {}
    for ann in json.loads(text)["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    names = dict(images)
    expected = {
        names[i]: max(anns, key=lambda a: (a["area"], -a["id"]))["category_id"]
        for i, anns in by_image.items()
    }
    for chunk in (3, 64, 1 << 20):
        monkeypatch.setattr(coco_annotations, "_CHUNK", chunk)
        assert coco_annotations.read_labels(io.StringIO(text), name="x.json") == expected


def test_broken_json_is_a_source_error(tmp_path: Path) -> None:
    write_coco(tmp_path)
    path = tmp_path / "annotations" / "instances_train2017.json"
    path.write_text(path.read_text()[:-40])
    with pytest.raises(SourceError, match="instances_train2017.json is not valid COCO json"):
        open_source(str(tmp_path), "coco").list_shards()


def test_reads_from_a_bucket(s3_bucket: str, tmp_path: Path) -> None:
    import fsspec

    files = write_coco(tmp_path / "coco")
    fs = fsspec.filesystem("s3")
    fs.put(str(tmp_path / "coco") + "/", f"{s3_bucket}/coco/", recursive=True)
    assert detect_kind(f"{s3_bucket}/coco") == "coco"
    source = open_source(f"{s3_bucket}/coco")
    table = pa.concat_tables(t for s in source.list_shards() for t in source.read_shard(s, batch_rows=4))
    assert table.column("label").to_pylist() == [44, 1, 90, None, 1, None, None, None, None]
    assert table.column("source")[8].as_py() == f"{s3_bucket}/coco/val2017/000000000103.jpg"
    assert table.column("image")[8].as_py() == files["val2017/000000000103.jpg"]
