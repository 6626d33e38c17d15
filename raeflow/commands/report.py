"""`raeflow report`: parse options, build a `ReportConfig`, run the report job, print a summary.

raeflow report --data builtin:mnist --model runs/mnist/model --out report/ --noise gaussian:0.1 --tsne

Options are generated from `ReportConfig` and its `RunOptions` (names, defaults, help).
"""

from __future__ import annotations

from typing import Any

import click

from raeflow.commands.batch import BATCH_SPECS, RUN_SKIP, prepare, print_summary, start_ray
from raeflow.commands.options import OptionSpec, console_options, settings_from, settings_options
from raeflow.report.config import ReportConfig


def check_map(config: ReportConfig) -> None:
    """Refuse --tsne before Ray starts for a model whose embeddings have no common length, by the
    rule `raeflow embed` follows (`raeflow.models.embedding.embedding_rule`)."""
    if not config.tsne:
        return
    from raeflow.models.bundle import read_bundle_meta
    from raeflow.models.embedding import embedding_rule

    meta = read_bundle_meta(config.model)
    contract = meta.get("input_contract") or {}
    if "any" in (contract.get("height"), contract.get("width")):  # pooled codes are mapped, others refused
        embedding_rule(config.model, contract, meta.get("embedding_dim"))


def check_neighbors(config: ReportConfig) -> None:
    """Refuse --neighbors before Ray starts unless it is a folder holding dedup's outliers.parquet."""
    if not config.neighbors:
        return
    from raeflow.data.sources.object_store import probe
    from raeflow.report.outliers import check_outliers

    probe(config.neighbors, "--neighbors")
    check_outliers(config.neighbors)


@click.command("report")
@settings_options(
    ReportConfig,
    skip=RUN_SKIP,
    specs={
        **BATCH_SPECS,
        "noise": OptionSpec(metavar="SPEC"),
        "limit": OptionSpec(metavar="N"),
        "neighbors": OptionSpec(metavar="DIR"),
        "top_outliers": OptionSpec(metavar="N"),
        "gallery_size": OptionSpec(names=("--gallery-size", "--gallery")),
    },
)
@console_options
def report(**options: Any) -> None:
    """Measure how well a model reconstructs a source's images, with an HTML report.

    Writes under --out: metrics.parquet (per image: key, label where the source has labels, mse,
    psnr, ssim, with --noise noisy_psnr, noisy_ssim, with --neighbors DIR (a `raeflow dedup` folder)
    outlier_distance, outlier_rank), summary.json (means, std, p5/p50/p95,
    counts, model, data, timings), figures/*.png and report.html (self-contained, opens offline),
    plus _manifest/, _rejected/ and _SUCCESS. Rerunning the same command resumes.
    """
    config = prepare(settings_from(ReportConfig, options))
    check_map(config)
    check_neighbors(config)
    start_ray(config)
    from raeflow.report.job import run_report

    result = run_report(config)
    print_summary(result.lines())


COMMANDS: list[click.Command] = [report]
