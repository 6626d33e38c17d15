"""`raeflow report`: parse options, build a `ReportConfig`, run the report job, print a summary.

raeflow report --data builtin:mnist --model runs/mnist/model --out report/ --noise gaussian:0.1 --tsne
"""

from __future__ import annotations

from typing import Any

import click

# The options every batch job shares (data, model, out, Ray, batch size, rejects, input kind).
from raeflow.commands.batch import batch_job_options, run_options_from


@click.command("report")
@batch_job_options
@click.option(
    "--noise",
    default=None,
    metavar="SPEC",
    help="Give the model a noisy input (gaussian:0.1, saltpepper:0.05, mask:0.25), seeded per image "
    "by its key; metrics compare the output to the clean image.",
)
@click.option("--tsne", is_flag=True, help="Add a t-SNE map of the model's codes, coloured by label.")
@click.option(
    "--tsne-points", type=int, default=2000, show_default=True, help="Most images on the t-SNE map."
)
@click.option(
    "--worst-k", type=int, default=16, show_default=True, help="How many lowest-PSNR images to show."
)
@click.option(
    "--gallery", "gallery_size", type=int, default=16, show_default=True, help="Sample images in the grid."
)
@click.option("--limit", type=int, default=None, metavar="N", help="Score only the first N images.")
def report(**options: Any) -> None:
    """Measure how well a model reconstructs a source's images, with an HTML report.

    Writes under --out: metrics.parquet (per image: key, label where the source has labels, mse,
    psnr, ssim, and with --noise noisy_psnr, noisy_ssim), summary.json (means, std, p5/p50/p95,
    counts, model, data, timings), figures/*.png and report.html (self-contained, opens offline),
    plus _manifest/, _rejected/ and _SUCCESS. Rerunning the same command resumes.
    """
    from raeflow.report.config import ReportConfig
    from raeflow.report.job import run_report

    run = run_options_from(options, default_batch=256)
    config = ReportConfig(
        data=options["data"],
        model=options["model"],
        out=options["out"],
        noise=options["noise"],
        tsne=options["tsne"],
        tsne_points=options["tsne_points"],
        worst_k=options["worst_k"],
        gallery_size=options["gallery_size"],
        limit=options["limit"],
        source_format=options["source_format"],
        image_column=options["image_column"],
        run=run,
    )
    result = run_report(config)
    click.echo("\n".join(result.lines()))


COMMANDS: list[click.Command] = [report]
