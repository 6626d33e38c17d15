"""The report's per-shard files, written on the driver as each input shard finishes.

    _parts/metrics-00003.parquet   one row per scored image of shard 3 (the columns of metrics.parquet)
    _parts/samples-00003.parquet   the few rows of shard 3 that may appear in the report, with pixels

The runner writes these before the shard's manifest record, so a rerun that skips finished
shards still has everything it needs to assemble the report: the final `metrics.parquet` and
figures are built from the parts at the end of every run (`raeflow.report.assemble`). A shard's
sample part holds at most gallery + worst-k + map rows: the selection of `SampleKeeper` over
that shard's rows, which contains every image of the global selection that came from that shard.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow import __version__
from raeflow.batch.output import OutputDir
from raeflow.batch.runner import JobSummary, ShardWriter
from raeflow.data.sources.base import Shard
from raeflow.report.predictor import NOISY_COLUMNS
from raeflow.report.samples import SampleKeeper, gallery_rank, worst_rank

PARTS_DIR = "_parts"


def metrics_part(index: int) -> str:
    """Relative path of shard `index`'s metrics part."""
    return f"{PARTS_DIR}/metrics-{index:05d}.parquet"


def samples_part(index: int) -> str:
    """Relative path of shard `index`'s sample part."""
    return f"{PARTS_DIR}/samples-{index:05d}.parquet"


def metrics_schema(*, with_labels: bool, with_noise: bool, fingerprint: str) -> pa.Schema:
    """`metrics.parquet` columns: key, [label], mse, psnr, ssim, [noisy_psnr, noisy_ssim]."""
    fields = [pa.field("key", pa.string(), nullable=False)]
    if with_labels:
        fields.append(pa.field("label", pa.int64()))
    fields += [pa.field(name, pa.float64()) for name in ("mse", "psnr", "ssim")]
    if with_noise:
        fields += [pa.field(name, pa.float64()) for name in NOISY_COLUMNS]
    return pa.schema(fields, metadata={"raeflow.model": fingerprint, "raeflow.version": __version__})


SAMPLES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("label", pa.int64()),
        ("mse", pa.float64()),
        ("psnr", pa.float64()),
        ("ssim", pa.float64()),
        ("noisy_psnr", pa.float64()),
        ("clean_png", pa.binary()),
        ("noisy_png", pa.binary()),
        ("output_png", pa.binary()),
        ("embedding", pa.list_(pa.float32())),
        ("map_png", pa.binary()),
    ]
)
"""Columns of a sample part (thumbnails null for map-only rows, embedding and map_png null for
picture-only rows)."""


def offer_sample(keeper: SampleKeeper, row: dict) -> None:
    """Offer a sample row to the selections it can serve (pictures need thumbnails, the map an embedding)."""
    key = row["key"]
    if row.get("clean_png") is not None:
        keeper.gallery.offer(gallery_rank(key), row)
        keeper.worst.offer(worst_rank(key, row["psnr"]), row)
    if row.get("embedding") is not None:
        keeper.map.offer(gallery_rank(key), row)


def selected_rows(keeper: SampleKeeper) -> list[dict]:
    """The distinct rows a keeper selected (a row may be in several selections)."""
    seen: dict[str, dict] = {}
    for row in keeper.gallery.rows + keeper.worst.rows + keeper.map.rows:
        seen[row["key"]] = row
    return list(seen.values())


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of one Parquet file."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


class ReportWriter(ShardWriter):
    """Writes each shard's metrics and sample parts; `finish(out, summary)` assembles the report."""

    def __init__(
        self,
        schema: pa.Schema,
        keeper_sizes: dict[str, int],
        finish: Callable[[OutputDir, JobSummary], list[str]],
    ) -> None:
        self.schema = schema
        self.keeper_sizes = keeper_sizes
        self.finish = finish
        self.shard: Shard | None = None
        self.tables: list[pa.Table] = []
        self.keeper = SampleKeeper(**keeper_sizes)

    def begin_shard(self, shard: Shard) -> None:
        self.shard, self.tables = shard, []
        self.keeper = SampleKeeper(**self.keeper_sizes)

    def add_rows(self, rows: pa.Table) -> None:
        self.tables.append(rows.select(self.schema.names).cast(self.schema))
        carrying = pc.or_(rows.column("clean_png").is_valid(), rows.column("embedding").is_valid())
        if "noisy_psnr" not in rows.column_names:
            rows = rows.append_column("noisy_psnr", pa.nulls(rows.num_rows, pa.float64()))
        for row in rows.filter(carrying).select(SAMPLES_SCHEMA.names).to_pylist():
            offer_sample(self.keeper, row)
        return None

    def end_shard(self) -> tuple[str, ...]:
        assert self.shard is not None
        metrics = pa.concat_tables(self.tables) if self.tables else self.schema.empty_table()
        samples = pa.Table.from_pylist(selected_rows(self.keeper), schema=SAMPLES_SCHEMA)
        names = (metrics_part(self.shard.index), samples_part(self.shard.index))
        self.out.put(names[0], parquet_bytes(metrics.replace_schema_metadata(self.schema.metadata)))
        self.out.put(names[1], parquet_bytes(samples))
        self.tables = []
        return names

    def end_job(self, summary: JobSummary) -> list[str]:
        return self.finish(self.out, summary)
