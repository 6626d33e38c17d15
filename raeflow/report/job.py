"""`raeflow report`: how good is this model on that data? Per-image metrics, a summary, an HTML page.

    raeflow report --data builtin:mnist --model runs/mnist/model --out report/ --noise gaussian:0.1 --tsne

A batch job on the shared runner (`raeflow.batch.runner`): the source's shards are decoded and
fitted to the model, the `ReportPredictor` actors score each image (the model gets the noisy
input with --noise; metrics compare its output to the clean image), and the driver writes small
per-shard parts; when every shard is done `assemble_report` writes the folder:

    metrics.parquet     key, [label], mse, psnr, ssim, [noisy_psnr, noisy_ssim],
                        [outlier_distance, outlier_rank (--neighbors)]: one row per image
    summary.json        means, std, p5/p50/p95, counts, model, data, noise, timings, settings
    figures/*.png       gallery, histograms, worst, [outliers], [tsne]
    report.html         everything above on one self-contained page
    _manifest/ _rejected/ _parts/ _SUCCESS   the batch-job files (rerun = resume)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from raeflow import console
from raeflow.batch.decoding import DecodeSpec
from raeflow.batch.output import OutputDir
from raeflow.batch.runner import BatchJob, JobSummary, run_batch_job
from raeflow.data.sources import open_source
from raeflow.data.sources.folder import FULL_SIZE_BYTES_PER_SHARD
from raeflow.errors import ConfigError
from raeflow.models import load_bundle
from raeflow.models.embedding import embedding_rule, model_embedding_dim
from raeflow.report.assemble import HTML_FILE, SUMMARY_FILE, ReportContext, assemble_report
from raeflow.report.config import ReportConfig
from raeflow.report.limit import LimitedSource
from raeflow.report.outliers import plan_outliers
from raeflow.report.parts import ReportWriter, metrics_schema
from raeflow.report.predictor import METRIC_COLUMNS, NOISY_COLUMNS, ReportPredictor


@dataclass
class ReportResult:
    """What `run_report` did: the batch job's summary and the report's own (summary.json)."""

    job: JobSummary
    """Counts, shards, speed and output URIs of the batch job."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The content of summary.json."""

    def lines(self) -> list[str]:
        """A one-screen, human-readable summary."""
        text = self.job.lines()
        metrics = self.summary.get("metrics", {})
        for name, label in (("psnr", "PSNR dB"), ("ssim", "SSIM"), ("noisy_psnr", "noisy input PSNR dB")):
            values = metrics.get(name, {})
            if values.get("count"):
                text.append(
                    f"  {label + ':':<21}mean {values['mean']:.3f}  p5 {values['p5']:.3f}  "
                    f"p50 {values['p50']:.3f}  p95 {values['p95']:.3f}"
                )
        outliers = self.summary.get("outliers")
        if outliers:
            text.append(f"  outliers: {outliers['coverage']}")
            rho = outliers.get("spearman_distance_mse")
            if rho is not None:
                text.append(
                    f"  outliers: Spearman(outlier distance, MSE) {rho:+.2f} "
                    f"over {outliers['spearman_images']:,} images"
                )
            if outliers.get("top"):
                top = outliers["top"][0]
                text.append(
                    f"  outliers: most outlying {top['key']} (rank {top['outlier_rank']}), "
                    f"PSNR {top['psnr']:.2f} dB"
                )
        return text


def run_report(config: ReportConfig) -> ReportResult:
    """Score every image of `config.data` with the bundle `config.model`; write the report to `config.out`."""
    started = time.monotonic()
    config.validate()
    bundle = load_bundle(config.model)
    model = bundle.model
    contract = model.input_contract
    source = open_source(
        config.data,
        config.source_format,
        image_column=config.image_column,
        bytes_per_shard=FULL_SIZE_BYTES_PER_SHARD,
    )
    if model.conditional and not source.has_labels:
        raise ConfigError(
            f"model {config.model} is conditional (it decodes with the label) but {config.data} has no "
            "labels; report it on labelled data"
        )
    label_names = getattr(source, "label_names", None)  # class folders: label i is label_names[i]
    # The source's keys must be in the dedup table; the actors get the keys it ranks highest.
    candidates = plan_outliers(config.neighbors, source, config.limit) if config.neighbors else None
    if config.limit is not None:
        source = LimitedSource(source, config.limit)
    any_size = "any" in (contract["height"], contract["width"])
    map_note = None
    if config.tsne:  # the map's vectors are the embeddings `raeflow embed` writes, by the same rule
        rule = embedding_rule(config.model, contract, model_embedding_dim(model))
        map_note = rule.notice(config.model, purpose="for the t-SNE map ", resize_hint=False)
        if map_note and not config.run.quiet:
            console.notice(map_note)
    noise = config.noise_spec
    metric_names = METRIC_COLUMNS + (NOISY_COLUMNS if noise else ())
    sizes = {
        "gallery_size": config.gallery_size,
        "worst_k": config.worst_k,
        "map_size": config.tsne_points if config.tsne else 0,
        "outliers_size": config.top_outliers if config.neighbors else 0,
    }
    context = ReportContext(
        config=config,
        model={
            "uri": config.model,
            "arch": model.arch_name,
            "arch_args": model.arch_args,
            "fingerprint": bundle.fingerprint,
            "input_contract": contract,
            "training": bundle.meta.get("training"),
        },
        source=source.describe(),
        has_labels=source.has_labels,
        label_names=label_names,
        metric_names=metric_names,
        started=started,
        map_note=map_note,
    )
    schema = metrics_schema(
        with_labels=source.has_labels,
        with_noise=bool(noise),
        fingerprint=bundle.fingerprint,
        label_names=label_names,
    )
    writer = ReportWriter(schema, sizes, lambda out, job: assemble_report(out, job, context))
    job = BatchJob(
        name="report",
        source=source,
        out=OutputDir(config.out),
        fingerprint=bundle.fingerprint,
        settings=config.output_settings(),
        decode=DecodeSpec(
            channels=contract["channels"],
            height=None if any_size else contract["height"],
            width=None if any_size else contract["width"],
            fit="resize",
            worker_memory_gb=config.run.worker_memory_gb,
            worker_cpus=config.run.worker_cpus,
        ),
        predictor=ReportPredictor,
        predictor_kwargs={
            "bundle": config.model,
            "noise": noise,
            "worker_memory_gb": config.run.worker_memory_gb,
            "outliers": candidates,
            **sizes,
        },
        writer=writer,
        run=config.run,
        outputs_hint=HTML_FILE,
    )
    summary = run_batch_job(job)
    return ReportResult(job=summary, summary=json.loads(OutputDir(config.out).read(SUMMARY_FILE)))
