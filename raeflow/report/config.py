"""Settings of `raeflow report`: one dataclass, built by the CLI, `jobs/` and the demo.

Field docstrings double as the CLI help; the settings are written into `summary.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from raeflow.batch.config import RunOptions
from raeflow.batch.location import resolved_uri
from raeflow.data.noise import parse_noise
from raeflow.errors import ConfigError
from raeflow.report.tsne import MAX_POINTS, MIN_POINTS


@dataclass
class ReportConfig:
    """`raeflow report`: per-image metrics of a model on a source, summary, figures, report.html."""

    data: str
    """URI of the image source (folder, Parquet, WebDataset, dataset layout, builtin:NAME)."""
    model: str
    """Model bundle folder (local or in a bucket)."""
    out: str
    """Output folder URI for metrics.parquet, summary.json, figures/, report.html and the job files."""
    noise: str | None = None
    """Corrupt the model's input with this noise (gaussian:0.1, saltpepper:0.05, mask:0.25); metrics
    compare the output to the clean image."""
    tsne: bool = False
    """Add a t-SNE map of the model's codes for a sample of the images, coloured by label (a fully
    convolutional model's code is averaged over space, as embed does)."""
    tsne_points: int = MAX_POINTS
    """Most images on the t-SNE map (a fixed key-hash sample)."""
    worst_k: int = 16
    """How many lowest-PSNR images the report shows."""
    gallery_size: int = 16
    """How many sample images the original / noisy / output grid shows."""
    limit: int | None = None
    """Score only the first N images of the source (a quick look)."""
    neighbors: str | None = None
    """A `raeflow dedup` output folder: join its outliers.parquet (outlier_distance, outlier_rank) to
    the metrics and show the top outliers."""
    top_outliers: int = 12
    """How many of the most outlying images the report shows (with --neighbors)."""
    source_format: str | None = None
    """Force the source kind (folder, parquet, webdataset, ...) instead of detecting it."""
    image_column: str | None = None
    """Image-bytes column of a Parquet source (default: image, jpg or png)."""
    run: RunOptions = field(default_factory=RunOptions)
    """How the job runs on Ray."""

    def validate(self) -> None:
        """Raise `ConfigError` for values that cannot work."""
        self.run.validate()
        parse_noise(self.noise)  # raises ConfigError naming the valid forms
        if not 0 <= self.worst_k <= 256:
            raise ConfigError(f"--worst-k must be within 0..256, got {self.worst_k}")
        if not 1 <= self.gallery_size <= 256:
            raise ConfigError(f"--gallery-size must be within 1..256, got {self.gallery_size}")
        if not MIN_POINTS <= self.tsne_points <= 20_000:
            raise ConfigError(f"--tsne-points must be within {MIN_POINTS}..20000, got {self.tsne_points}")
        if not 1 <= self.top_outliers <= 256:
            raise ConfigError(f"--top-outliers must be within 1..256, got {self.top_outliers}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")

    @property
    def noise_spec(self) -> str | None:
        """The canonical noise spec (`gaussian:0.1`), or None without noise."""
        spec = parse_noise(self.noise).spec
        return None if spec == "none" else spec

    def output_settings(self) -> dict[str, Any]:
        """The settings that shape the per-shard outputs; a rerun into the same --out must match them."""
        settings = {
            "data": self.data,
            "source_format": self.source_format,
            "image_column": self.image_column,
            "noise": self.noise_spec,
            "map_size": self.tsne_points if self.tsne else 0,
            "worst_k": self.worst_k,
            "gallery_size": self.gallery_size,
            "limit": self.limit,
        }
        if self.neighbors:  # only then: folders written before --neighbors existed still resume
            settings["neighbors"] = resolved_uri(self.neighbors)
            settings["top_outliers"] = self.top_outliers
        return settings

    def as_dict(self) -> dict[str, Any]:
        """All settings, JSON-serialisable (written to summary.json)."""
        return asdict(self)
