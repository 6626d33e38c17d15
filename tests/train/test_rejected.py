"""`raeflow train` lists the images it could not use, as the batch jobs do: `<out>/_rejected/` (key,
source, reason), each image once, and a count in the summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from raeflow.cli import main
from raeflow.train.batches import DecodeForTraining, is_validation
from raeflow.train.rejected import collect_rejected


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _digit_folder(root: Path, count: int) -> Path:
    """`count` 28x28 grey images, plus a truncated and an empty PNG (named to sort last)."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(count):
        y, x = np.mgrid[0:28, 0:28]
        pixels = (128 + 90 * np.sin(x / (2 + i % 5)) * np.cos(y / 4)).clip(0, 255).astype(np.uint8)
        (root / f"img{i:02d}.png").write_bytes(_png(pixels))
    whole = _png(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    (root / "zz_truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "zz_empty.png").write_bytes(b"")
    return root


def test_decode_lists_its_splits_bad_images_once_however_many_epochs(tmp_path: Path) -> None:
    good = _png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    keys = [f"k{i}" for i in range(40)]
    images = [good] * 40
    images[3], images[7] = good[: len(good) // 2], b""
    table = pa.table(
        {
            "key": keys,
            "source": [f"/data/{k}.png" for k in keys],
            "image": images,
            "label": pa.nulls(40, pa.int64()),
            "error": [None] * 39 + ["read_error: OSError: gone"],
        }
    )
    out = str(tmp_path / "run")
    for split in ("train", "val"):
        decode = DecodeForTraining(
            split=split, channels=1, height=28, width=28, val_fraction=0.5, rejected_out=out
        )
        for _ in range(3):  # Ray Data decodes every epoch again
            batch = decode(table)
        kept = sum(
            is_validation(k, 0.5) == (split == "val") for i, k in enumerate(keys) if i not in (3, 7, 39)
        )
        assert len(batch["image"]) == kept
    rejected = collect_rejected(out)
    assert rejected.count == 3 and rejected.by_reason == {"truncated": 1, "empty": 1, "read_error": 1}
    assert [p.name for p in (tmp_path / "run" / "_rejected").iterdir()] == ["rejected.parquet"]
    rows = pq.read_table(tmp_path / "run" / "_rejected").to_pylist()
    assert [(r["key"], r["source"], r["reason"].split(":")[0]) for r in rows] == [
        ("k3", "/data/k3.png", "truncated"),
        ("k39", "/data/k39.png", "read_error"),
        ("k7", "/data/k7.png", "empty"),
    ]
    assert collect_rejected(out).count == 3  # a second look (a resumed run) counts the same images
    assert collect_rejected(str(tmp_path / "clean")).line() is None


@pytest.mark.slow
def test_train_lists_a_truncated_and_an_empty_file_and_counts_them(ray_session, tmp_path: Path) -> None:
    data, out = _digit_folder(tmp_path / "digits", 16), tmp_path / "run"
    args = [
        "train", "--data", str(data), "--model", "conv", "--out", str(out), "--epochs", "1",
        "--batch-size", "8", "--cpus-per-worker", "0.5",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_images"] + record["val_images"] == 16  # of 18 files
    rows = pq.read_table(out / "_rejected").to_pylist()
    assert [(r["key"], r["reason"].split(":")[0]) for r in rows] == [
        ("zz_empty", "empty"),
        ("zz_truncated", "truncated"),
    ]
    assert all(r["source"].endswith(f"{r['key']}.png") for r in rows)
    assert (
        f"  rejected: 2 images could not be used (empty 1, truncated 1), listed in {out}/_rejected/"
        in result.output.splitlines()
    )
