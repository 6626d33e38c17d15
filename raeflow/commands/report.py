"""`raeflow report`: parse options, build a `ReportConfig`, run the report job, print a summary.

raeflow report --data builtin:mnist --model runs/mnist/model --out report/ --noise gaussian:0.1 --tsne

Options are generated from `ReportConfig` and its `RunOptions` (names, defaults, help).
"""

from __future__ import annotations

from typing import Any

import click

from raeflow.commands.batch import BATCH_SPECS, RUN_SKIP, prepare, print_summary, start_ray
from raeflow.commands.options import OptionSpec, console_options, settings_from, settings_options
from raeflow.errors import ConfigError
from raeflow.report.config import ReportConfig


def check_map(config: ReportConfig) -> None:
    """Refuse --tsne for a model whose codes grow with the image (no common length to map)."""
    if not config.tsne:
        return
    from raeflow.models.bundle import read_bundle_meta

    contract = read_bundle_meta(config.model).get("input_contract", {})
    if "any" in (contract.get("height"), contract.get("width")):
        raise ConfigError(
            f"--tsne needs codes of one length, but {config.model} is fully convolutional (its codes grow "
            "with the image); drop --tsne, or report a fixed-size model"
        )


@click.command("report")
@settings_options(
    ReportConfig,
    skip=RUN_SKIP,
    specs={
        **BATCH_SPECS,
        "noise": OptionSpec(metavar="SPEC"),
        "limit": OptionSpec(metavar="N"),
        "gallery_size": OptionSpec(names=("--gallery-size", "--gallery")),
    },
)
@console_options
def report(**options: Any) -> None:
    """Measure how well a model reconstructs a source's images, with an HTML report.

    Writes under --out: metrics.parquet (per image: key, label where the source has labels, mse,
    psnr, ssim, and with --noise noisy_psnr, noisy_ssim), summary.json (means, std, p5/p50/p95,
    counts, model, data, timings), figures/*.png and report.html (self-contained, opens offline),
    plus _manifest/, _rejected/ and _SUCCESS. Rerunning the same command resumes.
    """
    config = prepare(settings_from(ReportConfig, options))
    check_map(config)
    start_ray(config)
    from raeflow.report.job import run_report

    result = run_report(config)
    print_summary(result.lines())


COMMANDS: list[click.Command] = [report]
