"""The end of `raeflow report`: per-shard parts -> metrics.parquet, summary.json, figures, report.html.

Runs on the driver after every shard is finished (also on a rerun that found nothing to do). It
reads one part at a time: the metrics parts stream into `metrics.parquet` and into running
statistics, the sample parts into a `SampleKeeper`, so memory stays bounded however many images
the report covers. With --neighbors each metrics part is joined with dedup's outlier scores on
the way (`raeflow.report.outliers`), and the top outliers' nearest images are read back from their
sources as thumbnails for the page.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from raeflow import __version__
from raeflow.batch.manifest import REJECTED_DIR, Manifest
from raeflow.batch.output import TEMP_MARK, OutputDir
from raeflow.batch.summary import JobSummary
from raeflow.curate.thumbnails import Item, Thumbnail
from raeflow.report import figures as draw
from raeflow.report.config import ReportConfig
from raeflow.report.html import render_report
from raeflow.report.metrics import PSNR_CAP_DB
from raeflow.report.outliers import (
    DISTANCE,
    RANK,
    OutlierTable,
    Relation,
    neighbour_thumbnails,
    outlier_summary,
    read_neighbours,
    verified_top,
)
from raeflow.report.parts import PARTS_DIR, offer_sample
from raeflow.report.samples import SampleKeeper
from raeflow.report.stats import MetricStats
from raeflow.report.tsne import draw_maps

MAX_REJECTED_LISTED = 200
"""Most rejected images the page and summary.json name (all are in `_rejected/`)."""
METRICS_FILE = "metrics.parquet"
SUMMARY_FILE = "summary.json"
HTML_FILE = "report.html"
FIGURES_DIR = "figures"


@dataclass
class ReportContext:
    """What the assembly needs to know besides the parts: settings, model, source, start time."""

    config: ReportConfig
    """The report's settings."""
    model: dict[str, Any]
    """Facts about the model: uri, arch, arch_args, fingerprint, input_contract, training."""
    source: str
    """One-line description of the source."""
    has_labels: bool
    """Whether the source has labels (the map is coloured by them)."""
    metric_names: tuple[str, ...]
    """Metric columns of metrics.parquet (mse, psnr, ssim, and with noise noisy_psnr, noisy_ssim)."""
    started: float
    """`time.monotonic()` when the command started."""
    map_note: str | None = None
    """A note for the t-SNE section decided before the job ran (how a fully convolutional model's
    codes were made comparable)."""
    label_names: list[str] | None = None
    """Class name of each label where the source knows them (folder class subfolders), for the legend."""


def assemble_report(out: OutputDir, job: JobSummary, context: ReportContext) -> list[str]:
    """Write metrics.parquet, figures/*.png, summary.json and report.html; return the URIs to show."""
    began = time.monotonic()
    records = Manifest(out).finished()
    parts = [name for index in sorted(records) for name in records[index].outputs]
    metrics = [name for name in parts if name.startswith(f"{PARTS_DIR}/metrics-")]
    samples = [name for name in parts if name.startswith(f"{PARTS_DIR}/samples-")]
    neighbors = context.config.neighbors
    table = OutlierTable.read(neighbors) if neighbors else None
    stats, relation = _merge_metrics(out, metrics, context.metric_names, table)
    keeper = _collect_samples(out, samples, context.config)
    figures, notes, tsne_seconds = _draw_figures(keeper, stats, context)
    outliers: dict[str, Any] | None = None
    thumbnails: dict[Item, Thumbnail] = {}  # the top outliers' and their nearest images'
    if neighbors and table is not None:
        outliers, thumbnails = _outliers(neighbors, table, relation, keeper, stats, context, figures)
    for name, png in figures.items():
        out.put(f"{FIGURES_DIR}/{name}.png", png)
    summary = _summary(job, stats, context, figures, notes)
    if outliers is not None:
        summary["outliers"] = outliers
    summary["worst"] = [
        {name: row[name] for name in ("key", "psnr", "ssim") if name in row} for row in keeper.worst.rows
    ]
    if job.images_rejected:
        summary["rejected"] = _rejected(out)
    summary["timings"].update(
        tsne_seconds=round(tsne_seconds, 3),
        assemble_seconds=round(time.monotonic() - began, 3),
        total_seconds=round(time.monotonic() - context.started, 3),
    )
    out.put(SUMMARY_FILE, json.dumps(summary, indent=1, sort_keys=True).encode())
    out.put(HTML_FILE, render_report(summary, figures, notes, thumbnails).encode("utf-8"))
    return [out.url(METRICS_FILE), out.url(SUMMARY_FILE), out.url(FIGURES_DIR + "/")]


def _merge_metrics(
    out: OutputDir, parts: list[str], names: tuple[str, ...], table: OutlierTable | None
) -> tuple[dict[str, MetricStats], Relation]:
    """Stream every metrics part, in input order, into one metrics.parquet and running statistics;
    with `table` (--neighbors) each part gains its outlier columns and feeds the `Relation`."""
    stats = {name: MetricStats.for_metric(name) for name in names}
    relation = Relation()
    writer: pq.ParquetWriter | None = None
    with out.open_atomic(METRICS_FILE) as handle:
        for name in parts:
            part = pq.read_table(io.BytesIO(out.read(name)))
            if table is not None:
                part, hashes, rows = table.join(part)
                relation.add(part, hashes, rows)
            if writer is None:
                writer = pq.ParquetWriter(handle, part.schema)
            writer.write_table(part)
            for name in names:
                stats[name].add(part.column(name).to_numpy(zero_copy_only=False).astype(np.float64))
        if writer is not None:
            writer.close()
    return stats, relation


def _collect_samples(out: OutputDir, parts: list[str], config: ReportConfig) -> SampleKeeper:
    """The global sample: the selection over every shard's sample part, one part at a time."""
    keeper = SampleKeeper(
        gallery_size=config.gallery_size,
        worst_k=config.worst_k,
        map_size=config.tsne_points if config.tsne else 0,
        outliers_size=config.top_outliers if config.neighbors else 0,
    )
    for name in parts:
        for row in pq.read_table(io.BytesIO(out.read(name))).to_pylist():
            offer_sample(keeper, row)
    return keeper


def _rejected(out: OutputDir) -> dict[str, Any]:
    """The `_rejected/` table in brief: count, count per reason, and the first rows (input order)."""
    by_reason: Counter[str] = Counter()
    listed: list[dict[str, Any]] = []
    for name in out.list(REJECTED_DIR):
        if not name.endswith(".parquet") or TEMP_MARK in name:
            continue
        for row in pq.read_table(io.BytesIO(out.read(f"{REJECTED_DIR}/{name}"))).to_pylist():
            by_reason[str(row.get("reason") or "unknown").split(":", 1)[0].strip()] += 1
            if len(listed) < MAX_REJECTED_LISTED:
                listed.append({k: row.get(k) for k in ("key", "reason", "source")})
    return {
        "count": sum(by_reason.values()),
        "by_reason": dict(by_reason.most_common()),
        "listed": listed,
        "table": out.url(REJECTED_DIR + "/"),
    }


def _grid_items(rows: list[dict], caption_key: bool) -> list[draw.GridItem]:
    items = []
    for rank, row in enumerate(rows, 1):
        caption = f"{row['psnr']:.1f} dB"
        if caption_key:  # the whole key, wrapped (the page's table below the grid has it on one line)
            caption = f"#{rank}  {caption}\n" + "\n".join(draw.wrap_key(row["key"]))
        versions = {"original": row["clean_png"], "noisy": row["noisy_png"], "output": row["output_png"]}
        items.append(draw.GridItem(key=row["key"], versions=versions, caption=caption))
    return items


def _outliers(
    uri: str,
    table: OutlierTable,
    relation: Relation,
    keeper: SampleKeeper,
    stats: dict[str, MetricStats],
    context: ReportContext,
    figures: dict[str, bytes],
) -> tuple[dict[str, Any], dict[Item, Thumbnail]]:
    """summary.json's `outliers`; draws the top outliers' grid into `figures`; the thumbnails of the
    top outliers and of their nearest images (read from the sources outliers.parquet names)."""
    top = verified_top(table, keeper.outliers.rows, context.config.top_outliers)
    neighbours = read_neighbours(uri, [row["key"] for row in top])
    thumbnails = neighbour_thumbnails(neighbours)
    if top:
        versions = ["original", "noisy", "output"] if context.config.noise_spec else ["original", "output"]
        items = []
        for row in top:
            caption = f"#{row[RANK]}  d {row[DISTANCE]:.3f}\n{row['psnr']:.1f} dB\n" + "\n".join(
                draw.wrap_key(row["key"])
            )
            shown = {"original": row["clean_png"], "noisy": row["noisy_png"], "output": row["output_png"]}
            items.append(draw.GridItem(key=row["key"], versions=shown, caption=caption))
        title = f"The {len(top)} most outlying images (rank, distance d, PSNR)"
        figures["outliers"] = draw.comparison_grid(items, versions, title)
    psnr = stats.get("psnr")
    summary = outlier_summary(
        uri,
        table,
        relation,
        top,
        median_psnr=psnr.percentile(50) if psnr is not None and psnr.count else None,
        worst_keys=[row["key"] for row in keeper.worst.rows],
        neighbours=neighbours,
    )
    return summary, thumbnails


def _draw_figures(
    keeper: SampleKeeper, stats: dict[str, MetricStats], context: ReportContext
) -> tuple[dict[str, bytes], dict[str, str], float]:
    """The report's PNG figures by name, notes on figures that could not be drawn, t-SNE seconds."""
    config = context.config
    versions = ["original", "noisy", "output"] if config.noise_spec else ["original", "output"]
    figures: dict[str, bytes] = {}
    notes: dict[str, str] = {}
    if keeper.gallery.rows:
        figures["gallery"] = draw.comparison_grid(
            _grid_items(keeper.gallery.rows, False), versions, "Sample images (PSNR of the output)"
        )
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for metric, title in (("psnr", "PSNR (dB)"), ("ssim", "SSIM")):
        if stats[metric].count:
            panels[title] = {"model output": stats[metric].coarse_histogram()}
            if f"noisy_{metric}" in stats:
                panels[title]["noisy input"] = stats[f"noisy_{metric}"].coarse_histogram()
    if panels:
        figures["histograms"] = draw.metric_histograms(panels)
    if keeper.worst.rows:
        figures["worst"] = draw.comparison_grid(
            _grid_items(keeper.worst.rows, True), versions, f"The {len(keeper.worst.rows)} lowest-PSNR images"
        )
    tsne_seconds = 0.0
    if config.tsne:
        began = time.monotonic()
        figure, note = _tsne_figure(keeper.map.rows, context)
        tsne_seconds = time.monotonic() - began
        if figure is not None:
            figures["tsne"] = figure
        if note:
            notes["tsne"] = note
    return figures, notes, tsne_seconds


def _tsne_figure(rows: list[dict], context: ReportContext) -> tuple[bytes | None, str | None]:
    figure, note = draw_maps(rows, has_labels=context.has_labels, label_names=context.label_names)
    notes = [text for text in (context.map_note and context.map_note + ".", note) if text]
    return figure, " ".join(notes) or None


def _compute(job: JobSummary) -> dict[str, Any] | None:
    """How the reconstructions were computed (precision per node, torch threads per actor), as the
    workers' records say; None when they do not. Metrics are float32 whatever the precision."""
    line = job.compute_line()
    if line is None:
        return None
    return {
        "precision": job.precision,
        "threads": job.threads,
        "slow_bf16_nodes": job.slow_bf16_nodes,
        "description": line,
    }


def _summary(
    job: JobSummary,
    stats: dict[str, MetricStats],
    context: ReportContext,
    figures: dict[str, bytes],
    notes: dict[str, str],
) -> dict[str, Any]:
    """The content of summary.json (also what the HTML page shows)."""
    metrics = {name: s.summary() for name, s in stats.items()}
    summary: dict[str, Any] = {
        "job": "report",
        "raeflow_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": context.config.data,
        "source": context.source,
        "model": context.model,
        "noise": context.config.noise_spec,
        "psnr_cap_db": PSNR_CAP_DB,
        "labels": (
            {str(i): name for i, name in enumerate(context.label_names)} if context.label_names else None
        ),
        "counts": {
            "rows_in": job.images_in,
            "rows_out": job.images_out,
            "rows_rejected": job.images_rejected,
            "shards": job.num_shards,
            "shards_skipped": job.num_shards_skipped,
            "store_retries": job.store_retries,
        },
        "compute": _compute(job),
        "metrics": metrics,
        "figures": [f"{FIGURES_DIR}/{name}.png" for name in figures],
        "notes": notes,
        "timings": {"job_seconds": job.seconds, "images_per_second": job.images_per_second},
        "settings": context.config.as_dict(),
    }
    if "noisy_psnr" in metrics and metrics["noisy_psnr"].get("count"):
        summary["psnr_gain_db"] = metrics["psnr"]["mean"] - metrics["noisy_psnr"]["mean"]
    return summary
