"""Settings of the batch jobs (`raeflow embed`, `raeflow denoise`), one dataclass per job.

The CLI, the Ray job entrypoints in `jobs/` and the demo build these and hand them to
`run_embed` / `run_denoise`; field docstrings double as the CLI help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raeflow.errors import ConfigError
from raeflow.hardware import check_precision


@dataclass
class RunOptions:
    """How a batch job runs on Ray: batch size, actor count, GPUs, failure threshold."""

    batch_size: int = 256
    """Images per predictor call (one `map_batches` batch)."""
    workers: int | None = None
    """Most predictor actors: the pool grows from one to one per CPU (per GPU with --gpu), at most this."""
    gpu: bool = False
    """Give each predictor actor one GPU."""
    worker_cpus: float = 1.0
    """CPUs Ray reserves for each predictor actor (below 1 lets actors share cores with the read tasks)."""
    worker_memory_gb: float | None = None
    """GiB one worker may use for its images and model passes, beyond the model it loaded; default:
    65 % of its node's memory shared by the workers the node's CPUs hold. A larger batch is split to
    fit it, a larger image tiled (denoise) or rejected as too_large_for_memory."""
    precision: str = "auto"
    """Model arithmetic: auto (bf16 where the CPU/GPU runs it natively, else fp32), bf16 or fp32."""
    address: str | None = None
    """Ray cluster to connect to; default: $RAY_ADDRESS, else a local Ray."""
    max_rejected: float | None = None
    """Fail (non-zero exit) when more than this fraction of the images was rejected."""
    quiet: bool = False
    """Print no progress lines (the summary is still returned)."""
    verbose: bool = False
    """Show Ray's own log lines on the console (otherwise they stay in Ray's log folder)."""

    def validate(self) -> None:
        """Raise `ConfigError` for values that cannot work."""
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")
        if self.worker_cpus <= 0:
            raise ConfigError(f"--worker-cpus must be positive, got {self.worker_cpus}")
        check_precision(self.precision)
        if self.worker_memory_gb is not None and self.worker_memory_gb <= 0:
            raise ConfigError(f"--worker-memory-gb must be positive, got {self.worker_memory_gb}")
        if self.max_rejected is not None and not 0.0 <= self.max_rejected <= 1.0:
            raise ConfigError(f"--max-rejected is a fraction between 0 and 1, got {self.max_rejected}")


@dataclass
class EmbedConfig:
    """`raeflow embed`: one embedding row per image of a source, Parquet, one or more parts per shard."""

    data: str
    """URI of the image source (folder, Parquet, WebDataset, dataset layout, builtin:NAME)."""
    model: str
    """Model bundle folder (local or in a bucket)."""
    out: str
    """Output folder URI for `part-SSSSS-RRRRRR.parquet`, `_manifest/`, `_rejected/`, `_SUCCESS`."""
    source_format: str | None = None
    """Force the source kind (folder, parquet, webdataset, ...) instead of detecting it."""
    image_column: str | None = None
    """Image-bytes column of a Parquet source (default: image, jpg or png)."""
    image_size: tuple[int, int] | None = None
    """Resize images to HxW before encoding. Default: a fixed-size model's own size; a fully convolutional
    model's code is averaged over space, at each image's own size (slow on large photos: give a size)."""
    run: RunOptions = field(default_factory=RunOptions)
    """How the job runs on Ray."""

    def validate(self) -> None:
        """Raise `ConfigError` for values that cannot work."""
        self.run.validate()
        if self.image_size is not None and min(self.image_size) < 1:
            height, width = self.image_size
            raise ConfigError(f"--image-size must be at least 1x1, got {height}x{width}")

    def output_settings(self) -> dict[str, Any]:
        """The settings that shape the output; a rerun into the same --out must match them."""
        return {
            "data": self.data,
            "source_format": self.source_format,
            "image_column": self.image_column,
            "image_size": list(self.image_size) if self.image_size else None,
        }


OUTPUT_FORMATS = ("same", "png", "jpeg")
"""Values of `denoise --format`: keep each image's own format, or write all as PNG / JPEG."""


@dataclass
class DenoiseConfig:
    """`raeflow denoise`: the same images, denoised, in the same layout, names and sizes."""

    data: str
    """URI of the image source (folder, Parquet or WebDataset)."""
    model: str
    """Model bundle folder (local or in a bucket)."""
    out: str
    """Output folder URI; mirrors the input layout, plus `_manifest/`, `_rejected/`, `_SUCCESS`."""
    format: str = "same"
    """Output image format: same (each image keeps its own), png or jpeg."""
    resize: bool = False
    """Let a fixed-size model run on other sizes: resize to its input size and back."""
    tile: int | None = None
    """Tile side in pixels for fully convolutional models; default: tile only above --max-pixels-per-pass."""
    tile_overlap: int = 32
    """Pixels shared by neighbouring tiles, blended linearly so no seam shows."""
    max_pixels_per_pass: int = 1024 * 1024
    """Images with more pixels (height x width) than this are tiled (when --tile is not given)."""
    jpeg_quality: int = 95
    """Quality of JPEG outputs."""
    source_format: str | None = None
    """Force the source kind (folder, parquet, webdataset) instead of detecting it."""
    image_column: str | None = None
    """Image-bytes column of a Parquet source (default: image, jpg or png)."""
    run: RunOptions = field(default_factory=lambda: RunOptions(batch_size=8))
    """How the job runs on Ray (small batches: images can be large)."""

    def validate(self) -> None:
        """Raise `ConfigError` for values that cannot work."""
        self.run.validate()
        if self.format not in OUTPUT_FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {self.format!r}")
        if self.tile is not None and self.tile <= 2 * self.tile_overlap:
            raise ConfigError(
                f"--tile {self.tile} must be larger than twice the tile overlap ({self.tile_overlap})"
            )
        if self.tile_overlap < 0:
            raise ConfigError(f"--tile-overlap must be >= 0, got {self.tile_overlap}")
        if self.max_pixels_per_pass < 1:
            raise ConfigError(f"--max-pixels-per-pass must be at least 1, got {self.max_pixels_per_pass}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"--jpeg-quality must be within 1..100, got {self.jpeg_quality}")

    def output_settings(self) -> dict[str, Any]:
        """The settings that shape the output; a rerun into the same --out must match them."""
        return {
            "data": self.data,
            "source_format": self.source_format,
            "image_column": self.image_column,
            "format": self.format,
            "resize": self.resize,
            "jpeg_quality": self.jpeg_quality,
        }
