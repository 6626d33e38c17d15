"""The plain loop (no Ray, world size 1) lists the images it could not use as `raeflow train` does:
`<out>/_rejected/rejected.parquet` (key, source, reason), each image once, and the same summary line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raeflow.train.config import TrainConfig
from raeflow.train.plain import main, run_plain


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _digit_folder(root: Path, count: int) -> Path:
    """`count` 28x28 grey images, plus a truncated and an empty PNG."""
    root.mkdir()
    y, x = np.mgrid[0:28, 0:28]
    for i in range(count):
        pixels = (128 + 90 * np.sin(x / (2 + i % 5)) * np.cos(y / 4)).clip(0, 255).astype(np.uint8)
        (root / f"img{i:02d}.png").write_bytes(_png(pixels))
    whole = _png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    (root / "zz_truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "zz_empty.png").write_bytes(b"")
    return root


def test_plain_loop_lists_bad_images_once_and_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = _digit_folder(tmp_path / "digits", 16), tmp_path / "run"
    args = ["--data", str(data), "--model", "conv", "--out", str(out), "--epochs", "2", "--batch-size", "8"]
    main(args)
    printed = capsys.readouterr().out.splitlines()
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["train_images"] + record["val_images"] == 16  # of 18 files
    # Two epochs met each bad image twice: the merged table holds each once, and no pieces are left.
    assert [p.name for p in (out / "_rejected").iterdir()] == ["rejected.parquet"]
    rows = pq.read_table(out / "_rejected" / "rejected.parquet").to_pylist()
    assert [(r["key"], r["reason"].split(":")[0]) for r in rows] == [
        ("zz_empty", "empty"),
        ("zz_truncated", "truncated"),
    ]
    assert all(r["source"].endswith(f"{r['key']}.png") for r in rows)
    line = f"  rejected: 2 images could not be used (empty 1, truncated 1), listed in {out}/_rejected/"
    assert printed.count(line) == 1
    assert printed.index(line) < next(i for i, p in enumerate(printed) if p.startswith("model bundle: "))


def test_a_clean_run_has_no_rejected_folder_or_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    config = TrainConfig(
        data="builtin:digits",
        model="conv",
        out=str(out),
        limit=64,
        epochs=1,
        batch_size=16,
        image_size=(28, 28),
    )
    run_plain(config)
    assert "rejected" not in capsys.readouterr().out
    assert not (out / "_rejected").exists()
