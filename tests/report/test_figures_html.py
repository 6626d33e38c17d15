"""Figures, the t-SNE map and the self-contained HTML page, without Ray."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raeflow.data import images
from raeflow.report.figures import GridItem, comparison_grid, embedding_map, metric_histograms
from raeflow.report.html import render_report
from raeflow.report.tsne import embed_2d, neighbour_agreement


def _colours(png: bytes) -> int:
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    return len(np.unique(pixels, axis=0))


def _digit_items(n: int) -> list[GridItem]:
    from sklearn.datasets import load_digits

    x = (load_digits().images[:n] * 16).clip(0, 255).astype(np.uint8)
    return [
        GridItem(
            key=f"digits/{i}",
            versions={
                "original": images.encode_image(x[i][..., None], "png"),
                "output": images.encode_image((255 - x[i])[..., None], "png"),
            },
            caption=f"{20 + i:.1f} dB",
        )
        for i in range(n)
    ]


def test_grid_draws_every_image_and_wraps() -> None:
    small = comparison_grid(_digit_items(3), ["original", "output"], "three digits")
    wide = comparison_grid(_digit_items(12), ["original", "output"], "twelve digits")
    for png in (small, wide):
        assert png.startswith(b"\x89PNG") and _colours(png) > 20
    with Image.open(io.BytesIO(small)) as a, Image.open(io.BytesIO(wide)) as b:
        assert b.height > a.height  # 12 images wrap into a second block of rows


def test_tsne_separates_digit_classes_deterministically() -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = x[:300], y[:300]
    points = embed_2d(x, seed=0)
    assert points.shape == (300, 2)
    np.testing.assert_array_equal(points, embed_2d(x, seed=0))
    # Real digits form clusters: a point's nearest neighbour on the map mostly has its label.
    assert neighbour_agreement(points, y) > 0.8
    assert (
        neighbour_agreement(points, np.random.default_rng(0).permutation(y)) < 0.3
    )  # labels that do not fit
    png = embedding_map(points, y, "digits")
    assert _colours(png) > 10
    with pytest.raises(ValueError, match="t-SNE takes"):
        embed_2d(x[:3])


def _page(tmp_path: Path) -> Path:
    hist = metric_histograms(
        {
            "PSNR (dB)": {
                "output": (np.array([2, 5, 3]), np.array([18.0, 20.0, 22.0, 24.0])),
                "noisy input": (np.array([4, 6]), np.array([14.0, 16.0, 18.0])),
            }
        }
    )
    summary = {
        "data": "builtin:digits",
        "model": {"arch": "conv", "uri": "runs/m", "fingerprint": "ab" * 32},
        "noise": "gaussian:0.1",
        "counts": {"rows_in": 10, "rows_out": 10, "rows_rejected": 0},
        "metrics": {"psnr": {"mean": 21.2, "std": 1.5, "p5": 18.9, "p50": 21.0, "p95": 23.4}},
        "settings": {"note": "<script>alert(1)</script> must be escaped"},
    }
    figures = {
        "gallery": comparison_grid(_digit_items(4), ["original", "output"], "sample"),
        "histograms": hist,
    }
    page = tmp_path / "report.html"
    page.write_text(render_report(summary, figures, {"tsne": "no labels"}), encoding="utf-8")
    return page


def test_html_is_self_contained(tmp_path: Path) -> None:
    html = _page(tmp_path).read_text(encoding="utf-8")
    assert not re.search(r"https?://", html)
    assert "<script" not in html and "&lt;script&gt;" in html  # user text is escaped, never run
    sources = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "no labels" in html and "gaussian:0.1" in html


def test_html_shows_its_images_in_a_browser(tmp_path: Path, open_in_browser) -> None:
    view = open_in_browser(_page(tmp_path))
    assert len(view.image_widths) == 2 and all(w > 0 for w in view.image_widths)
    non_white = np.any(view.screenshot < 240, axis=-1).mean()
    assert non_white > 0.03
    assert len(np.unique(view.screenshot.reshape(-1, 3), axis=0)) > 50


def _width_and_colours(png: bytes) -> tuple[int, int, set[tuple[int, ...]]]:
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB"))
    return pixels.shape[1], pixels.shape[0], {tuple(c) for c in np.unique(pixels.reshape(-1, 3), axis=0)}


def _has_colour(colours: set[tuple[int, ...]], rgb: tuple[int, int, int]) -> bool:
    return any(max(abs(int(a) - b) for a, b in zip(c, rgb, strict=True)) <= 40 for c in colours)


TAB10_FIRST = ((31, 119, 180), (255, 127, 14), (44, 160, 44))
"""tab10's colours of labels 0, 1, 2 (blue, orange, green)."""


def test_maps_of_pixels_and_embeddings_side_by_side(digits_bundle: str, digit_rows) -> None:
    from raeflow.report.predictor import MAP_COLUMN, ReportPredictor
    from raeflow.report.tsne import draw_maps

    table = ReportPredictor(digits_bundle, map_size=40)(digit_rows)
    rows = [row for row in table.to_pylist() if row["embedding"] is not None]
    # The rows that entered the actor's running map sample carry an embedding and a map thumbnail.
    assert len(rows) >= 40 and all(row[MAP_COLUMN] is not None for row in rows)
    assert all(Image.open(io.BytesIO(row[MAP_COLUMN])).size == (8, 8) for row in rows)  # small: kept as is

    both, note = draw_maps(rows, has_labels=True)
    assert both is not None and note is None
    one, one_note = draw_maps([{**row, MAP_COLUMN: None} for row in rows], has_labels=True)
    assert one is not None and "Only the embeddings" in (one_note or "")
    width_two, height_two, colours = _width_and_colours(both)
    width_one, height_one, _ = _width_and_colours(one)
    assert height_two == height_one and width_two > 1.6 * width_one  # two panels, side by side
    assert all(_has_colour(colours, rgb) for rgb in TAB10_FIRST)  # coloured by label

    plain, plain_note = draw_maps(rows, has_labels=False)
    assert plain is not None and "no labels" in (plain_note or "")
    assert not _has_colour(_width_and_colours(plain)[2], TAB10_FIRST[1])  # no orange: not coloured
    assert draw_maps(rows[:3], has_labels=True) == (
        None,
        "Only 3 images could be mapped; t-SNE needs at least 5.",
    )


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_report_of_a_class_folder_maps_pixels_and_embeddings_by_label(
    digits_bundle: str, tmp_path: Path
) -> None:
    import json

    import pyarrow.parquet as pq
    from click.testing import CliRunner
    from sklearn.datasets import load_digits

    from raeflow.cli import main

    digits = load_digits()
    for i in range(40):
        folder = tmp_path / "digits" / ("even" if digits.target[i] % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).save(folder / f"d{i:02d}.png")
    out = tmp_path / "report"
    args = ["report", "--data", str(tmp_path / "digits"), "--model", digits_bundle, "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--tsne", "--quiet"])
    assert result.exit_code == 0, result.output

    table = pq.read_table(out / "metrics.parquet").to_pandas()
    expected = {
        f"{'even' if t % 2 == 0 else 'odd'}/d{i:02d}": int(t % 2) for i, t in enumerate(digits.target[:40])
    }
    assert dict(zip(table["key"], table["label"], strict=True)) == expected  # even -> 0, odd -> 1
    summary = json.loads((out / "summary.json").read_text())
    assert "2 classes from subfolder names: 0=even, 1=odd" in summary["source"]
    assert "tsne" not in summary["notes"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="fig-tsne" alt="t-SNE maps: original pixels vs embeddings"' in html
    assert "0=even, 1=odd" in html
    width, height, colours = _width_and_colours((out / "figures" / "tsne.png").read_bytes())
    assert width > 1.6 * height  # two square-ish maps side by side
    assert _has_colour(colours, TAB10_FIRST[0]) and _has_colour(colours, TAB10_FIRST[1])
