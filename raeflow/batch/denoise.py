"""`raeflow denoise`: the same images, denoised, in the same layout, names, sizes, modes and formats.

    raeflow denoise --data ./scans --model runs/photos/model --out ./scans-clean

The output mirrors the input (see `raeflow.batch.mirror`). Fully convolutional models (`unet`)
run on every image at its own size, tiled with blended overlaps above a pixel budget; a
fixed-size model is refused on other sizes unless `--resize`.
"""

from __future__ import annotations

from raeflow.batch.config import DenoiseConfig
from raeflow.batch.decoding import DecodeSpec
from raeflow.batch.mirror import FolderMirror, ParquetMirror, WebDatasetMirror
from raeflow.batch.output import OutputDir
from raeflow.batch.predictors import DenoisePredictor
from raeflow.batch.runner import BatchJob, JobSummary, run_batch_job
from raeflow.batch.worker import PartWriter
from raeflow.data import images
from raeflow.data.sources import open_source
from raeflow.data.sources.base import Source
from raeflow.data.sources.folder import FULL_SIZE_BYTES_PER_SHARD
from raeflow.errors import ConfigError
from raeflow.models import Bundle, load_bundle

DENOISE_BLOCK_BYTES = 8 * 1024 * 1024
"""Decoded pixels per block: a few photos, so images of mixed sizes spread over every actor (a larger
photo makes a block of its own)."""


def run_denoise(config: DenoiseConfig) -> JobSummary:
    """Denoise every image of `config.data` with the bundle `config.model` into `config.out`."""
    config.validate()
    bundle = load_bundle(config.model)
    source = open_source(
        config.data,
        config.source_format,
        image_column=config.image_column,
        bytes_per_shard=FULL_SIZE_BYTES_PER_SHARD,
    )
    _check_first_image(bundle, source, config)
    predictor_kwargs = {
        "bundle": config.model,
        "out_format": config.format,
        "resize": config.resize,
        "tile": config.tile,
        "tile_overlap": config.tile_overlap,
        "max_pixels_per_pass": config.max_pixels_per_pass,
        "jpeg_quality": config.jpeg_quality,
        "worker_memory_gb": config.run.worker_memory_gb,
    }
    job = BatchJob(
        name="denoise",
        source=source,
        out=OutputDir(config.out),
        fingerprint=bundle.fingerprint,
        settings=config.output_settings(),
        # each image keeps its own size, mode, alpha and 16-bit grey
        decode=DecodeSpec(
            keep_mode=True, worker_memory_gb=config.run.worker_memory_gb, worker_cpus=config.run.worker_cpus
        ),
        predictor=DenoisePredictor,
        predictor_kwargs=predictor_kwargs,
        writer=mirror_writer(source, config.image_column),
        run=config.run,
        block_bytes=DENOISE_BLOCK_BYTES,
    )
    return run_batch_job(job)


def mirror_writer(source: Source, image_column: str | None = None) -> PartWriter:
    """The writer that reproduces `source`'s layout."""
    if source.kind == "folder":
        return FolderMirror(keep_names=True)
    if source.kind == "webdataset":
        return WebDatasetMirror(source)
    if source.kind == "parquet":
        return ParquetMirror(source, image_column)
    return FolderMirror(keep_names=False)


def _check_first_image(bundle: Bundle, source: Source, config: DenoiseConfig) -> None:
    """Refuse up front a fixed-size model on images of another size (unless --resize)."""
    contract = bundle.input_contract
    if "any" in (contract["height"], contract["width"]) or config.resize:
        return
    for shard in source.list_shards()[:1]:
        for table in source.read_shard(shard, batch_rows=16):
            for key, data in zip(
                table.column("key").to_pylist(), table.column("image").to_pylist(), strict=True
            ):
                try:
                    header = images.probe_image(data)
                except images.ImageRejected:
                    continue
                height, width = header.upright_size  # as decoded: EXIF orientation applied
                if (height, width) != (contract["height"], contract["width"]):
                    raise ConfigError(
                        f"model {config.model} takes {contract['height']}x{contract['width']} images but "
                        f"{key} is {height}x{width}; pass --resize to resize each image to "
                        "the model's size and back, or use a fully convolutional model (unet)"
                    )
                return
            return
