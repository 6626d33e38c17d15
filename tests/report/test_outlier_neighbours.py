"""The top outliers' nearest images on the report page, without Ray: `raeflow dedup` lists them in
outliers.parquet, the report reads them (and their sources' thumbnails) back and renders them; an
outliers.parquet of an older dedup, without those columns, still renders, with a note."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from raeflow.batch.embed import embedding_schema
from raeflow.cli import main
from raeflow.report.html import render_report
from raeflow.report.outliers import (
    OutlierTable,
    Relation,
    neighbour_thumbnails,
    outlier_summary,
    read_neighbours,
)

ODD = 'odd<script>"one"'
"""The planted outlier's key: markup in a key must reach the page escaped."""


@pytest.fixture(scope="module")
def dedup_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dd/: dedup of a 12-image table whose sources are real PNG files (one of them deleted since),
    the planted outlier first; its 6 nearest listed for the 2 most outlying images."""
    root = tmp_path_factory.mktemp("neighbours")
    rng = np.random.default_rng(4)
    keys = [f"shape/{i:02d}" for i in range(11)] + [ODD]
    sources = []
    for i in range(len(keys)):
        path = root / "images" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
        sources.append(str(path))
    centre = rng.normal(size=16)
    vectors = centre + 0.3 * rng.normal(size=(12, 16))
    vectors[-1] = -centre + 0.1 * rng.normal(size=16)  # opposite every other: the outlier
    schema = embedding_schema(16, with_labels=False, fingerprint="b" * 64)
    flat = pa.array(vectors.astype(np.float32).ravel())
    table = pa.table(
        {"key": keys, "source": sources, "embedding": pa.FixedSizeListArray.from_arrays(flat, 16)},
        schema=schema,
    )
    (root / "emb").mkdir()
    pq.write_table(table, root / "emb" / "part-00000-000000.parquet")
    args = ["dedup", "--data", str(root / "emb"), "--out", str(root / "dd"), "-q", "--html-thumbnails", "0"]
    result = CliRunner().invoke(main, [*args, "--outlier-k", "6", "--outlier-neighbors", "2"])
    assert result.exit_code == 0, result.output
    ranked = pq.read_table(root / "dd" / "outliers.parquet").to_pylist()
    assert ranked[0]["key"] == ODD
    Path(ranked[0]["neighbors"][2].replace("shape/", str(root / "images") + "/") + ".png").unlink()
    return root / "dd"


def _top(folder: Path, num: int) -> list[dict]:
    """The `num` most outlying rows as the report's top outliers (metrics made up)."""
    rows = pq.read_table(folder / "outliers.parquet").to_pylist()[:num]
    return [
        {"key": r["key"], "outlier_rank": r["rank"], "outlier_distance": r["mean_distance"], "psnr": 20.0}
        for r in rows
    ]


def _page(folder: Path, top: list[dict]) -> tuple[dict, str]:
    """summary.json's outliers section and report.html, as the report's assembly makes them."""
    neighbours = read_neighbours(str(folder), [row["key"] for row in top])
    section = outlier_summary(
        str(folder),
        OutlierTable.read(str(folder)),
        Relation(),
        top,
        median_psnr=None,
        worst_keys=[],
        neighbours=neighbours,
    )
    summary = {"model": {"arch": "conv"}, "data": "d", "outliers": section}
    return section, render_report(summary, {}, {}, neighbour_thumbnails(neighbours))


def test_the_top_outlier_is_shown_beside_its_five_nearest_with_keys_and_similarities(
    dedup_folder: Path,
) -> None:
    listed = pq.read_table(dedup_folder / "outliers.parquet").to_pylist()[0]
    section, page = _page(dedup_folder, _top(dedup_folder, 1))
    near = section["top"][0]["neighbors"]
    assert [n["key"] for n in near] == listed["neighbors"][:5]  # 5 of the 6 dedup lists, nearest first
    assert [n["similarity"] for n in near] == pytest.approx(listed["neighbor_similarity"][:5])
    assert section["top"][0]["source"].endswith("images/11.png")
    assert all(n["source"].endswith(f"images/{n['key'][-2:]}.png") for n in near)
    block = page.split('id="outlier-neighbours"', 1)[1].split("</div>\n", 1)[0]
    figures = re.findall(r"<figure.*?</figure>", block)
    assert len(figures) == 6 and 'class="keep"' in figures[0]  # the outlier, framed, then its 5 nearest
    for figure, n in zip(figures[1:], near, strict=True):
        assert f"{n['key']}<br>similarity {n['similarity']:.3f}" in figure
    # Thumbnails are data URIs; the deleted neighbour's placeholder says why.
    assert sum('src="data:image/jpeg;base64,' in f for f in figures) == 5
    assert "no thumbnail: not_found:" in figures[3]
    assert "odd&lt;script&gt;&quot;one&quot;" in figures[0] and "<script" not in page
    assert not re.search(r'src="(?!data:)', page) and "http" not in page


def test_a_top_outlier_beyond_the_listed_ranks_is_said_to_have_none(dedup_folder: Path) -> None:
    section, page = _page(dedup_folder, _top(dedup_folder, 3))
    assert [bool(row["neighbors"]) for row in section["top"]] == [True, True, False]
    assert "1 of the 3 have none listed" in section["neighbours"]
    block = page.split('id="outlier-neighbours"', 1)[1]
    assert block.count('class="thumbs neighbours"') == 2


def test_an_outliers_table_without_neighbours_still_renders_with_a_note(
    dedup_folder: Path, tmp_path: Path
) -> None:
    old = pq.read_table(dedup_folder / "outliers.parquet").drop_columns(["neighbors", "neighbor_similarity"])
    pq.write_table(old, tmp_path / "outliers.parquet")
    assert read_neighbours(str(tmp_path), [ODD]) is None
    section, page = _page(tmp_path, _top(tmp_path, 2))
    assert all(row["neighbors"] is None for row in section["top"])
    assert 'id="outlier-neighbours"' not in page and "<figure" not in page
    note = re.findall(r'<p class="note" id="neighbours-note">(.*?)</p>', page)
    assert len(note) == 1 and "written by an older `raeflow dedup`" in note[0]
    assert 'id="outlier-keys"' in page  # the rest of the section as before
