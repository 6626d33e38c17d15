"""Summary statistics of a metric over any number of images, in memory that does not grow with them.

Mean and standard deviation are exact (running sums in float64). Percentiles come from a fine
fixed-bin histogram, so they are exact to within one bin (0.01 dB of PSNR, 0.0002 of SSIM, 0.1% of
MSE); the same histogram, coarsened, is what the report's histogram figure shows.

    stats = MetricStats.for_metric("psnr")
    stats.add(np.array([31.2, 28.7]))
    stats.summary()      # {"count": 2, "mean": ..., "std": ..., "min": ..., "p5": ..., "p50": ..., ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raeflow.report.metrics import PSNR_CAP_DB

PERCENTILES = (5, 50, 95)
"""Percentiles every summary reports."""

_EDGES: dict[str, np.ndarray] = {
    "psnr": np.linspace(0.0, PSNR_CAP_DB, 10_001),
    "ssim": np.linspace(-1.0, 1.0, 10_001),
    "mse": np.geomspace(10.0 ** (-PSNR_CAP_DB / 10.0), 1.0, 23_027),  # ratio ~1.001 between edges
}


def edges_for(metric: str) -> np.ndarray:
    """The fine bin edges used for a metric (`psnr`, `noisy_psnr`, `ssim`, `noisy_ssim`, `mse`, ...)."""
    base = metric.removeprefix("noisy_")
    if base not in _EDGES:
        raise KeyError(f"no histogram bins defined for metric {metric!r}")
    return _EDGES[base]


@dataclass
class MetricStats:
    """Running count, sums, extremes and a fine histogram of one metric."""

    edges: np.ndarray
    """Histogram bin edges; values outside are counted in the first/last bin."""
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    low: float = float("inf")
    high: float = float("-inf")
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.counts.size == 0:
            self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)

    @classmethod
    def for_metric(cls, metric: str) -> MetricStats:
        """Empty statistics with the bins of `metric`."""
        return cls(edges=edges_for(metric))

    def add(self, values: np.ndarray) -> None:
        """Count more values (NaNs are ignored)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        self.count += int(values.size)
        self.total += float(values.sum())
        self.total_sq += float(np.square(values).sum())
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        bins = np.searchsorted(self.edges, values, side="right") - 1
        np.add.at(self.counts, np.clip(bins, 0, len(self.counts) - 1), 1)

    def merge(self, other: MetricStats) -> None:
        """Add another partial result over the same bins."""
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.counts += other.counts

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100), linearly interpolated inside its bin."""
        if self.count == 0:
            return float("nan")
        target = q / 100.0 * self.count
        cumulative = np.cumsum(self.counts)
        index = int(np.searchsorted(cumulative, target, side="left"))
        index = min(index, len(self.counts) - 1)
        before = cumulative[index - 1] if index > 0 else 0
        inside = self.counts[index]
        fraction = (target - before) / inside if inside else 0.0
        value = self.edges[index] + fraction * (self.edges[index + 1] - self.edges[index])
        return float(np.clip(value, self.low, self.high))

    def summary(self) -> dict[str, float | int]:
        """count, mean, std (population), min, max and the `PERCENTILES` as `p5`, `p50`, ..."""
        if self.count == 0:
            return {"count": 0}
        mean = self.total / self.count
        variance = max(self.total_sq / self.count - mean * mean, 0.0)
        out: dict[str, float | int] = {
            "count": self.count,
            "mean": mean,
            "std": variance**0.5,
            "min": self.low,
            "max": self.high,
        }
        out.update({f"p{q}": self.percentile(q) for q in PERCENTILES})
        return out

    def coarse_histogram(self, num_bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) over the observed range in `num_bins` bins, for a figure."""
        if self.count == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        used = np.nonzero(self.counts)[0]
        first, last = int(used[0]), int(used[-1]) + 1
        fine_counts, fine_edges = self.counts[first:last], self.edges[first : last + 1]
        groups = max(1, int(np.ceil(len(fine_counts) / num_bins)))
        padded = np.pad(fine_counts, (0, (-len(fine_counts)) % groups))
        counts = padded.reshape(-1, groups).sum(axis=1)
        edges = fine_edges[::groups]
        if len(edges) < len(counts) + 1:
            edges = np.append(edges, fine_edges[-1])
        return counts, edges[: len(counts) + 1]
