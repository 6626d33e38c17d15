"""`raeflow report --neighbors DIR`: dedup's outlier scores joined to the metrics, the top outliers shown.

Digits with three planted noise images: `raeflow embed` (builtin:mnist-conv, the shared local Ray)
then `raeflow dedup` rank the noise images as the top outliers, and the report over the same folder
shows them first, with their metrics, and relates outlier score to reconstruction error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.stats import spearmanr
from sklearn.datasets import load_digits

from raeflow.batch.config import EmbedConfig, RunOptions
from raeflow.batch.embed import run_embed
from raeflow.cli import main
from tests.curate.tables import planted

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

NOISE = ["noise0", "noise1", "noise2"]
MODEL = "builtin:mnist-conv"


def write_digits_and_noise(folder: Path, num: int = 60) -> None:
    """`num` scikit-learn digits as 28x28 PNGs, and three images of uniform noise."""
    folder.mkdir(parents=True)
    for i, image in enumerate(load_digits().images[:num]):  # (8, 8), values 0..16
        Image.fromarray((image * 15.9).astype(np.uint8)).resize((28, 28)).save(folder / f"digit{i:02d}.png")
    rng = np.random.default_rng(0)
    for name in NOISE:
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{name}.png")


def _run(args: list[str]):
    result = CliRunner().invoke(main, args)
    return result


@pytest.fixture(scope="module")
def curated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ (60 digits, 3 noise images), emb/ (its embedding table), dd/ (dedup of it)."""
    root = tmp_path_factory.mktemp("curated")
    write_digits_and_noise(root / "data")
    run_embed(
        EmbedConfig(data=str(root / "data"), model=MODEL, out=str(root / "emb"), run=RunOptions(quiet=True))
    )
    done = _run(["dedup", "--data", str(root / "emb"), "--out", str(root / "dd"), "-q"])
    assert done.exit_code == 0, done.output
    return root


@pytest.fixture(scope="module")
def report(curated: Path):
    out = curated / "report"
    args = ["report", "--data", str(curated / "data"), "--model", MODEL, "--out", str(out)]
    result = _run([*args, "--neighbors", str(curated / "dd"), "--top-outliers", "5", "-q"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_dedup_ranks_the_planted_noise_images_first(curated: Path) -> None:
    outliers = pq.read_table(curated / "dd" / "outliers.parquet").sort_by("rank")
    assert sorted(outliers.column("key").to_pylist()[:3]) == NOISE


def test_metrics_table_gains_each_images_outlier_columns(curated: Path, report) -> None:
    out, _ = report
    metrics = pq.read_table(out / "metrics.parquet")
    assert metrics.column_names == ["key", "mse", "psnr", "ssim", "outlier_distance", "outlier_rank"]
    assert metrics.num_rows == 63
    scores = {r["key"]: r for r in pq.read_table(curated / "dd" / "outliers.parquet").to_pylist()}
    for row in metrics.to_pylist():
        assert row["outlier_rank"] == scores[row["key"]]["rank"]
        assert row["outlier_distance"] == pytest.approx(scores[row["key"]]["mean_distance"], rel=1e-6)


def test_report_shows_the_top_outliers_with_their_metrics(curated: Path, report) -> None:
    out, output = report
    summary = json.loads((out / "summary.json").read_text())
    section = summary["outliers"]
    ranked = pq.read_table(curated / "dd" / "outliers.parquet").sort_by("rank").column("key").to_pylist()
    top = section["top"]
    assert [row["key"] for row in top] == ranked[:5] and sorted(r["key"] for r in top[:3]) == NOISE
    assert [row["outlier_rank"] for row in top] == [1, 2, 3, 4, 5]
    metrics = {r["key"]: r for r in pq.read_table(out / "metrics.parquet").to_pylist()}
    for row in top:
        assert row["psnr"] == pytest.approx(metrics[row["key"]]["psnr"]) and row["ssim"] is not None
    # The noise images are the worst reconstructed too: an MNIST model cannot draw noise.
    assert max(metrics[k]["psnr"] for k in NOISE) < min(
        m["psnr"] for k, m in metrics.items() if k not in NOISE
    )
    assert section["joined"] == section["scored"] == section["table_rows"] == 63
    # The relation is a number computed over the joined rows, the same as from metrics.parquet.
    frame = pq.read_table(out / "metrics.parquet").to_pandas()
    rho = spearmanr(frame["outlier_distance"], frame["mse"]).statistic
    assert section["spearman_distance_mse"] == pytest.approx(rho) and section["spearman_images"] == 63
    assert f"{rho:+.2f}" in section["relation"] and "63 of the 63 scored images" in output
    assert (
        "figures/outliers.png" in summary["figures"] and (out / "figures" / "outliers.png").stat().st_size > 0
    )
    html = (out / "report.html").read_text()
    assert "<h2>Top outliers</h2>" in html and 'id="fig-outliers"' in html
    table = html.split('id="outlier-keys"', 1)[1].split("</table>", 1)[0]
    assert all(key in table for key in NOISE) and f"{rho:+.2f}" in html


def test_partial_overlap_is_stated_and_the_top_is_exact(curated: Path, report) -> None:
    out = curated / "report-first-30"
    args = ["report", "--data", str(curated / "data"), "--model", MODEL, "--out", str(out), "--limit", "30"]
    result = _run([*args, "--neighbors", str(curated / "dd"), "--top-outliers", "4", "-q"])
    assert result.exit_code == 0, result.output
    section = json.loads((out / "summary.json").read_text())["outliers"]
    scored = set(pq.read_table(out / "metrics.parquet").column("key").to_pylist())
    assert len(scored) == 30 and not scored & set(NOISE)
    ranked = pq.read_table(curated / "dd" / "outliers.parquet").sort_by("rank").to_pylist()
    expected = [row["key"] for row in ranked if row["key"] in scored][:4]
    assert [row["key"] for row in section["top"]] == expected
    assert (
        section["joined"] == 30 and "ranks 63 images (33 of them not in this report)" in section["coverage"]
    )


def test_neighbors_mistakes_are_one_line_errors(curated: Path, tmp_path: Path) -> None:
    base = ["report", "--data", str(curated / "data"), "--model", MODEL, "--out", str(tmp_path / "r")]
    no_file = _run([*base, "--neighbors", str(curated / "emb")])
    missing = _run([*base, "--neighbors", str(tmp_path / "nothing")])
    planted(tmp_path / "other-emb")  # an embedding table of other keys (plain/0000, ...)
    assert (
        _run(
            ["dedup", "--data", str(tmp_path / "other-emb"), "--out", str(tmp_path / "other"), "-q"]
        ).exit_code
        == 0
    )
    other = _run([*base, "--neighbors", str(tmp_path / "other")])
    for result, says in (
        (no_file, "holds no outliers.parquet"),
        (missing, "no such folder"),
        (other, "it was written for another table"),
    ):
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: --neighbors ") and says in result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_the_page_shows_each_top_outlier_beside_its_nearest_images(curated: Path, report) -> None:
    out, _ = report
    listed = {r["key"]: r for r in pq.read_table(curated / "dd" / "outliers.parquet").to_pylist()}
    top = json.loads((out / "summary.json").read_text())["outliers"]["top"]
    html = (out / "report.html").read_text()
    rows = html.split('id="outlier-neighbours"', 1)[1].split('class="thumbs neighbours"')[1:]
    assert len(rows) == len(top) == 5
    for row, shown in zip(top, rows, strict=True):
        near = listed[row["key"]]
        assert [n["key"] for n in row["neighbors"]] == near["neighbors"][:5]  # nearest first
        assert [n["similarity"] for n in row["neighbors"]] == pytest.approx(near["neighbor_similarity"][:5])
        assert all(n["source"] == listed[n["key"]]["source"] for n in row["neighbors"])
        figures = shown.split("<figure")[1:]
        assert len(figures) == 6 and f"#{row['outlier_rank']} {row['key']}" in figures[0]
        for figure, n in zip(figures[1:], row["neighbors"], strict=True):
            assert f"{n['key']}<br>similarity {n['similarity']:.3f}" in figure
        # Every image was read back from its PNG file in data/.
        assert all('src="data:image/jpeg;base64,' in figure for figure in figures)


def test_an_outliers_table_from_an_older_dedup_still_gives_a_report(curated: Path, tmp_path: Path) -> None:
    older = pq.read_table(curated / "dd" / "outliers.parquet").drop_columns(
        ["neighbors", "neighbor_similarity"]
    )
    (tmp_path / "old-dd").mkdir()
    pq.write_table(older, tmp_path / "old-dd" / "outliers.parquet")
    out = tmp_path / "report"
    args = ["report", "--data", str(curated / "data"), "--model", MODEL, "--out", str(out), "-q"]
    result = _run([*args, "--neighbors", str(tmp_path / "old-dd"), "--top-outliers", "3"])
    assert result.exit_code == 0, result.output
    section = json.loads((out / "summary.json").read_text())["outliers"]
    assert sorted(row["key"] for row in section["top"]) == NOISE
    assert all(row["neighbors"] is None for row in section["top"])
    html = (out / "report.html").read_text()
    assert 'id="fig-outliers"' in html and 'id="outlier-neighbours"' not in html
    assert html.count('id="neighbours-note"') == 1 and "written by an older `raeflow dedup`" in html
