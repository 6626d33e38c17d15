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
from raeflow.report.tsne import embed_2d


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
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert np.mean(y[distances.argmin(axis=1)] == y) > 0.8
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
