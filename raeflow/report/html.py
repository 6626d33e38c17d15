"""`report.html`: one self-contained page, readable offline in any browser.

Every figure is embedded as a `data:image/png;base64` URI and the styling is inline, so the page
references nothing outside itself (no scripts, fonts, stylesheets or remote images): it can be
mailed, attached to a ticket or opened from a bucket download as is. The top outliers' nearest
images are small JPEG thumbnails, data URIs too (`raeflow.curate.thumbnails`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from raeflow.curate.thumbnails import THUMBNAIL_STYLE, Item, Thumbnail, figure_html
from raeflow.report.outliers import NEIGHBOUR_THUMBNAIL_SIDE

FIGURE_ORDER = (
    (
        "gallery",
        "Sample: original / noisy / output",
        "A fixed sample of the data (the same keys on every run).",
    ),
    ("histograms", "Metric histograms", "Distribution of the per-image metrics over every scored image."),
    ("worst", "Worst images by PSNR", "The images the model reconstructs worst, lowest PSNR first."),
    (
        "outliers",
        "Top outliers",
        "The images `raeflow dedup` ranked least like any other (largest mean cosine distance to their "
        "nearest neighbours in the embedding table), most outlying first, with the model's output.",
    ),
    (
        "tsne",
        "t-SNE maps: original pixels vs embeddings",
        "Two t-SNE maps of the same sample of images side by side: left the original pixels, right "
        "the model's embeddings, coloured by label where the data has labels. Classes that form "
        "tighter, better separated clusters on the right than on the left show what the embedding "
        "adds; each panel gives how often a point's nearest neighbour on the map has its label.",
    ),
)
"""Sections of the page: figure name, heading, one-line explanation."""

METRIC_LABELS = {
    "psnr": "PSNR of the output (dB)",
    "ssim": "SSIM of the output",
    "mse": "MSE of the output",
    "noisy_psnr": "PSNR of the noisy input (dB)",
    "noisy_ssim": "SSIM of the noisy input",
}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1d1d1f; background: #fff; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.lead { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f5; }
table.facts td { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
pre { background: #f6f6f8; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
table.keys { width: 100%; table-layout: fixed; }
table.keys td.key, table.keys td.text, table.facts td { text-align: left; overflow-wrap: anywhere;
       word-break: break-all; }
table.keys td.key { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.95em; }
table.keys th.num { width: 3em; } table.keys th.metric { width: 6em; }
"""
_SIDE = NEIGHBOUR_THUMBNAIL_SIDE
_NEIGHBOURS_STYLE = (
    THUMBNAIL_STYLE
    + f"""
.neighbours figure {{ width: {_SIDE + 4}px; }}
.neighbours figure .box {{ width: {_SIDE}px; height: {_SIDE}px; }}
.neighbours figure img {{ max-width: {_SIDE}px; max-height: {_SIDE}px; margin: 0; display: inline; }}
.neighbours figure img.small {{ width: {_SIDE - 16}px; height: auto; }}
"""
)
"""The top outliers' rows of small thumbnails (`figure_html`, as on dedup's pages, at a smaller size)."""


def data_uri(png: bytes) -> str:
    """PNG bytes as a `data:` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return escape(str(value))


def _metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    columns = ("mean", "std", "p5", "p50", "p95", "min", "max")
    head = "".join(f"<th>{name}</th>" for name in ("metric", *columns))
    rows = []
    for name, stats in metrics.items():
        cells = "".join(f"<td>{_number(stats.get(c, ''))}</td>" for c in columns)
        rows.append(f"<tr><td>{escape(METRIC_LABELS.get(name, name))}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _facts_table(facts: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{_number(v)}</td></tr>" for k, v in facts.items())
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def _compute_fact(compute: Mapping[str, Any] | None) -> str | None:
    """The precision (and threads) the model ran in, e.g. `bf16 autocast, 2 threads per actor;
    metrics in float32`; None when the job's records do not say."""
    if not compute or not compute.get("description"):
        return None
    return f"{compute['description']}; metrics in float32"


def _worst_table(worst: Sequence[Mapping[str, Any]]) -> str:
    """The worst images' whole keys (wrapped, never cut), in the grid's order, with their metrics."""
    head = '<th class="num">#</th><th>key</th><th class="metric">PSNR (dB)</th><th class="metric">SSIM</th>'
    rows = "".join(
        f'<tr><td>{rank}</td><td class="key">{escape(str(row.get("key", "")))}</td>'
        f"<td>{_number(row.get('psnr', ''), 2)}</td><td>{_number(row.get('ssim', ''), 3)}</td></tr>"
        for rank, row in enumerate(worst, 1)
    )
    return f'<table class="keys" id="worst-keys"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _outliers_notes(outliers: Mapping[str, Any], thumbnails: Mapping[Item, Thumbnail]) -> list[str]:
    """How outlier score and reconstruction error relate, the coverage, the top outliers' table and
    each top outlier beside its nearest images."""
    parts = [
        f'<p id="outlier-relation">{escape(str(outliers.get("relation", "")))}</p>',
        f'<p class="note">{escape(str(outliers.get("coverage", "")))} Scores: '
        f"{escape(str(outliers.get('table', '')))}; metrics.parquet has them per image "
        "(outlier_distance, outlier_rank).</p>",
    ]
    head = (
        '<th class="num">#</th><th>key</th><th class="metric">outlier rank</th>'
        '<th class="metric">mean distance</th><th class="metric">PSNR (dB)</th><th class="metric">SSIM</th>'
    )
    rows = "".join(
        f'<tr><td>{n}</td><td class="key">{escape(str(row.get("key", "")))}</td>'
        f"<td>{_number(row.get('outlier_rank', ''))}</td>"
        f"<td>{_number(row.get('outlier_distance', ''), 4)}</td>"
        f"<td>{_number(row.get('psnr', ''), 2)}</td><td>{_number(row.get('ssim', ''), 3)}</td></tr>"
        for n, row in enumerate(outliers.get("top", []), 1)
    )
    if rows:
        parts.append(
            f'<table class="keys" id="outlier-keys"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )
    if outliers.get("neighbours"):
        parts.append(f'<p class="note" id="neighbours-note">{escape(str(outliers["neighbours"]))}.</p>')
    rows_shown = [row for row in outliers.get("top", []) if row.get("neighbors")]
    if rows_shown:
        parts.append('<div id="outlier-neighbours">')
        parts.extend(_neighbours_row(row, thumbnails) for row in rows_shown)
        parts.append("</div>")
    return parts


def _neighbours_row(row: Mapping[str, Any], thumbnails: Mapping[Item, Thumbnail]) -> str:
    """One top outlier (framed) and its nearest images, each a thumbnail with its key and similarity."""
    key = str(row.get("key", ""))
    own = figure_html(
        thumbnails.get((key, row.get("source"))),
        f"<b>#{_number(row.get('outlier_rank', ''))} {escape(key)}</b><br>"
        f"mean distance {_number(row.get('outlier_distance', ''), 3)}",
        css_class="keep",
        alt=key,
    )
    nearest = "".join(
        figure_html(
            thumbnails.get((str(near["key"]), near.get("source"))),
            f"{escape(str(near['key']))}<br>similarity {float(near['similarity']):.3f}",
            alt=str(near["key"]),
        )
        for near in row["neighbors"]
    )
    return f'<div class="thumbs neighbours">{own}{nearest}</div>'


def _rejected_section(rejected: Mapping[str, Any]) -> list[str]:
    """Which images could not be used and why: counts per reason, then the listed rows."""
    count = int(rejected.get("count", 0))
    listed = rejected.get("listed", [])
    reasons = ", ".join(f"{escape(str(r))}: {n:,}" for r, n in rejected.get("by_reason", {}).items())
    parts = [
        "<h2>Rejected images</h2>",
        f'<p class="note">{count:,} image(s) could not be used ({reasons}); the full table, with '
        f"each image's source, is {escape(str(rejected.get('table', '_rejected/')))}.</p>",
    ]
    rows = "".join(
        f'<tr><td class="key">{escape(str(row.get("key", "")))}</td>'
        f'<td class="text">{escape(str(row.get("reason", "")))}</td></tr>'
        for row in listed
    )
    parts.append(
        f'<table class="keys" id="rejected"><thead><tr><th>key</th><th>reason</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    if count > len(listed):
        parts.append(f'<p class="note">... and {count - len(listed):,} more, listed in that table.</p>')
    return parts


def render_report(
    summary: Mapping[str, Any],
    figures: Mapping[str, bytes],
    notes: Mapping[str, str],
    thumbnails: Mapping[Item, Thumbnail] | None = None,
) -> str:
    """The HTML page for a report `summary` (as in summary.json) with its PNG `figures` embedded.

    `notes` explain a missing figure (e.g. why there is no t-SNE map) under its heading;
    `thumbnails` (by key and source) picture the top outliers and their nearest images.
    """
    model = summary.get("model", {})
    counts = summary.get("counts", {})
    title = f"Reconstruction report: {model.get('arch', '?')} on {summary.get('data', '?')}"
    facts = {
        "data": summary.get("data"),
        "source (labels)": summary.get("source"),
        "class names (label=name)": ", ".join(f"{i}={n}" for i, n in (summary.get("labels") or {}).items())
        or None,
        "model": model.get("uri"),
        "architecture": model.get("arch"),
        "model fingerprint": str(model.get("fingerprint", ""))[:16],
        "reconstructions computed in": _compute_fact(summary.get("compute")),
        "noise on the input": summary.get("noise") or "none",
        "images read": counts.get("rows_in"),
        "images scored": counts.get("rows_out"),
        "images rejected": counts.get("rows_rejected"),
        "PSNR gain over the noisy input (dB)": summary.get("psnr_gain_db"),
        "wall time (s)": summary.get("timings", {}).get("total_seconds"),
    }
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_STYLE}{_NEIGHBOURS_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="lead">Generated by raeflow {escape(str(summary.get("raeflow_version", "")))} '
        f"at {escape(str(summary.get('created', '')))}.</p>",
        "<h2>Summary</h2>",
        _facts_table({k: v for k, v in facts.items() if v is not None}),
        _metrics_table(summary.get("metrics", {})),
    ]
    for name, heading, explanation in FIGURE_ORDER:
        section = summary.get(name) if name == "outliers" else None
        if name not in figures and name not in notes and not section:
            continue
        parts.append(f"<h2>{escape(heading)}</h2>")
        parts.append(f'<p class="note">{escape(explanation)}</p>')
        if name in figures:
            parts.append(f'<img id="fig-{name}" alt="{escape(heading)}" src="{data_uri(figures[name])}">')
        if name in notes:
            parts.append(f'<p class="note">{escape(notes[name])}</p>')
        if name == "worst" and summary.get("worst"):
            parts.append(_worst_table(summary["worst"]))
        if section:
            parts.extend(_outliers_notes(section, thumbnails or {}))
    if summary.get("rejected"):
        parts.extend(_rejected_section(summary["rejected"]))
    parts.append("<h2>Settings</h2>")
    parts.append(f"<pre>{escape(json.dumps(summary.get('settings', {}), indent=2, sort_keys=True))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
