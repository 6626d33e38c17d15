"""Settings of `raeflow index` and `raeflow dedup` (the CLI generates its options from these fields)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from raeflow.errors import ConfigError

METRICS = ("cosine", "l2")
BACKENDS = ("auto", "local", "ray")
RAY_ABOVE = 100_000
"""Without --address, `--backend auto` runs on Ray only for tables above this many rows (and above
--exact-below): smaller tables are quicker in the command's own process than a Ray start."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str) -> int:
    """`4G`, `512M`, `1.5GiB` or a number of bytes -> bytes (binary units)."""
    match = _SIZE.match(str(text))
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"--max-memory takes a size such as 4G or 512M, not {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass
class IndexSettings:
    """What `raeflow index` indexes, where, and how."""

    data: str
    """The embedding table: the --out folder of `raeflow embed` (or Parquet files with key and embedding)."""
    out: str
    """Index folder: index.faiss, keys.parquet (the key of each vector id), index.json, _rejected/."""
    metric: str | None = None
    """Similarity: cosine (vectors normalised, inner product; the default) or l2 (Euclidean distance).
    With --append the index's own metric is kept."""
    append: bool = False
    """Add the table's vectors to the index already in --out (keys already present are skipped)."""
    max_memory: str = "4G"
    """Memory the index may take; above it a compressed index (IVF-PQ) is chosen."""
    exact_below: int = 100_000
    """Tables with fewer vectors get an exact (flat) index; larger ones an approximate one (HNSW)."""
    recall_sample: int = 1000
    """Vectors searched both ways to measure recall@10 of an approximate index (index.json)."""
    batch_size: int = 16_384
    """Rows read and added at a time (memory grows with it, never with the table)."""
    backend: str = "auto"
    """Where the work runs: local (this process, no Ray), ray (Ray tasks and actors; a cluster with
    --address), or auto: ray when --address / $RAY_ADDRESS is given or the table has more rows than
    --exact-below and 100,000."""
    address: str | None = None
    """Ray cluster to run on (ray backend); default: $RAY_ADDRESS, else a private local Ray."""

    def validate(self) -> IndexSettings:
        """Raise `ConfigError` for values that cannot work; returns self."""
        if self.metric is not None:
            check_metric(self.metric)
        parse_memory(self.max_memory)
        check_backend(self.backend)
        _at_least(
            1, exact_below=self.exact_below, recall_sample=self.recall_sample, batch_size=self.batch_size
        )
        return self


@dataclass
class DedupSettings:
    """What `raeflow dedup` groups, where its lists go, and how close is a duplicate."""

    data: str
    """The embedding table: the --out folder of `raeflow embed` (or Parquet files with key and embedding)."""
    out: str
    """Output folder: groups.parquet, keep.parquet, outliers.parquet, duplicates.html, _rejected/."""
    threshold: float = 0.95
    """Cosine similarity at or above which two images are near-duplicates, in (0, 1]."""
    neighbors: int = 20
    """Neighbours searched per image; a group grows further through its members' own neighbours."""
    outlier_k: int = 10
    """Neighbours whose mean cosine distance is an image's outlier score."""
    outlier_neighbors: int = 1000
    """Most outlying images whose --outlier-k nearest (keys, similarities) outliers.parquet lists; 0: none."""
    max_memory: str = "4G"
    """Memory the in-memory index may take (it keeps every vector, float32)."""
    exact_below: int = 100_000
    """Tables with fewer vectors are searched exactly; larger ones through an HNSW graph."""
    batch_size: int = 16_384
    """Rows read, and images searched, at a time (memory grows with it, never with the table)."""
    html_groups: int = 5000
    """Groups shown in duplicates.html, largest first (groups.parquet lists them all)."""
    html_thumbnails: int = 2000
    """Images shown as thumbnails (read from their sources) in duplicates.html, largest groups first."""
    backend: str = "auto"
    """Where the work runs: local (this process, no Ray), ray (Ray tasks and actors; a cluster with
    --address), or auto: ray when --address / $RAY_ADDRESS is given or the table has more rows than
    --exact-below and 100,000."""
    address: str | None = None
    """Ray cluster to run on (ray backend); default: $RAY_ADDRESS, else a private local Ray."""

    def validate(self) -> DedupSettings:
        """Raise `ConfigError` for values that cannot work; returns self."""
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"--threshold must be in (0, 1] (a cosine similarity), not {self.threshold:g}")
        parse_memory(self.max_memory)
        check_backend(self.backend)
        _at_least(
            1,
            neighbors=self.neighbors,
            outlier_k=self.outlier_k,
            exact_below=self.exact_below,
            batch_size=self.batch_size,
        )
        _at_least(
            0,
            outlier_neighbors=self.outlier_neighbors,
            html_groups=self.html_groups,
            html_thumbnails=self.html_thumbnails,
        )
        return self


def check_backend(backend: str) -> None:
    """Raise `ConfigError` unless `backend` is one `index` and `dedup` run on."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")


def runs_on_ray(backend: str, address: str | None, num_rows: int, exact_below: int) -> bool:
    """Whether a command with these settings runs on Ray: `ray`, or `auto` with a cluster to join
    (--address / $RAY_ADDRESS) or a table of more rows than --exact-below and `RAY_ABOVE`."""
    if backend != "auto":
        return backend == "ray"
    from raeflow.connection import resolve_address  # no Ray import: it reads the option and environment

    return resolve_address(address) is not None or num_rows > max(exact_below, RAY_ABOVE)


def check_metric(metric: str) -> None:
    """Raise `ConfigError` unless `metric` is one raeflow indexes with."""
    if metric not in METRICS:
        raise ConfigError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")


def _at_least(low: int, **values: int) -> None:
    for name, value in values.items():
        if value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, not {value}")


@dataclass
class NeighborSettings:
    """Which image's neighbours `raeflow neighbors` lists, from which index."""

    index: str
    """Index folder written by `raeflow index`."""
    key: str | None = None
    """Key of an image in the index (a row of IDX/keys.parquet) whose nearest images to list."""
    image: str | None = None
    """An image file (path or URI) to embed with --model and search by, instead of --key."""
    model: str | None = None
    """The bundle that embedded the index's table (with --image): a folder or builtin:NAME."""
    k: int = 20
    """Neighbours to list."""
    out: str | None = None
    """Also write them as a Parquet file here (rank, key, similarity or distance, source)."""
    html: bool = False
    """With --out, also write a page of their thumbnails beside it (FILE.parquet -> FILE.html)."""

    def validate(self) -> NeighborSettings:
        """Raise `ConfigError` for values that cannot work; returns self."""
        _at_least(1, k=self.k)
        if (self.key is None) == (self.image is None):
            raise ConfigError(
                "give either --key KEY (an image in the index) or --image FILE --model BUNDLE, not "
                + ("both" if self.key is not None else "neither")
            )
        if self.image is not None and self.model is None:
            raise ConfigError("--image needs --model: the bundle that embedded the index's table")
        if self.model is not None and self.image is None:
            raise ConfigError("--model is used with --image only (a --key's vector is in the index)")
        if self.html and not self.out:
            raise ConfigError("--html needs --out FILE.parquet: the page is written beside it (FILE.html)")
        return self
