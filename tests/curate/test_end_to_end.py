"""From images to a keep-list: `raeflow embed` (Ray Data, the shared local Ray) with a shipped model,
then `raeflow index` and `raeflow dedup` on the table it wrote. Exact copies of three digits must land
in their originals' groups, and every image is either kept or removed, never both, never lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.datasets import load_digits

from raeflow.batch.config import EmbedConfig, RunOptions
from raeflow.batch.embed import run_embed
from raeflow.cli import main

pytestmark = pytest.mark.slow


def write_digits_with_copies(folder: Path, num: int = 60) -> dict[str, str]:
    """`num` scikit-learn digits as PNGs under d/, and byte-identical copies of three under copy/."""
    pixels = load_digits().images[:num]  # (num, 8, 8), values 0..16
    for sub in ("d", "copy"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    copies = {}
    for i, image in enumerate(pixels):
        data = Image.fromarray((image * 15.9).astype(np.uint8)).resize((28, 28))
        data.save(folder / "d" / f"{i:02d}.png")
        if i in (0, 1, 2):
            data.save(folder / "copy" / f"{i:02d}.png")
            copies[f"copy/{i:02d}"] = f"d/{i:02d}"
    return copies


def test_embed_then_index_and_dedup(ray_session: None, tmp_path: Path) -> None:
    copies = write_digits_with_copies(tmp_path / "digits")
    run_embed(
        EmbedConfig(
            data=str(tmp_path / "digits"),
            model="builtin:mnist-conv",
            out=str(tmp_path / "emb"),
            run=RunOptions(quiet=True),
        )
    )
    runner = CliRunner()
    built = runner.invoke(
        main, ["index", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"), "-q"]
    )
    assert built.exit_code == 0, built.output
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["num_vectors"] == 63 and meta["kind"] == "flat" and meta["model"]
    done = runner.invoke(
        main, ["dedup", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "dd"), "-q"]
    )
    assert done.exit_code == 0, done.output
    assert "63 images" in done.stdout
    groups = pq.read_table(tmp_path / "dd" / "groups.parquet").to_pylist()
    group_of = {row["key"]: row["group"] for row in groups}
    for copy, original in copies.items():
        assert group_of[copy] == group_of[original]
    kept = [row["key"] for row in groups if row["keep"]]
    assert len(kept) == len(set(group_of.values()))
    keep = set(pq.read_table(tmp_path / "dd" / "keep.parquet").column("key").to_pylist())
    removed = {row["key"] for row in groups if not row["keep"]}
    assert not keep & removed and len(keep) + len(removed) == 63
    assert len(pq.read_table(tmp_path / "dd" / "outliers.parquet")) == 63
