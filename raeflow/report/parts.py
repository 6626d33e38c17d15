"""The report's per-piece files, written by the predictor actors as they score each block.

    _parts/metrics-00003-000512.parquet   one row per scored image of shard 3 from row 512 (the
                                          columns of metrics.parquet)
    _parts/samples-00003-000512.parquet   the few of those rows that may appear in the report, with pixels

The shard's manifest record lists its parts, so a rerun that skips finished shards still has
everything it needs to assemble the report: the final `metrics.parquet` and figures are built
from the parts at the end of every run (`raeflow.report.assemble`). A sample part holds at most
gallery + worst-k + map (+ top outliers with --neighbors) rows: the selection of `SampleKeeper`
over that piece's rows, which contains every image of the global selection that came from that piece.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from raeflow import __version__
from raeflow.batch.embed import LABELS_METADATA, labels_json, part_metadata
from raeflow.batch.output import OutputDir
from raeflow.batch.summary import JobSummary
from raeflow.batch.worker import PartWriter, parquet_bytes, piece_stem
from raeflow.report.predictor import NOISY_COLUMNS, OUTLIER_RANK_COLUMN
from raeflow.report.samples import SampleKeeper, gallery_rank, outlier_rank, worst_rank

PARTS_DIR = "_parts"


def metrics_part(shard: int, first_row: int) -> str:
    """Relative path of a piece's metrics part."""
    return f"{PARTS_DIR}/metrics-{piece_stem(shard, first_row)}.parquet"


def samples_part(shard: int, first_row: int) -> str:
    """Relative path of a piece's sample part."""
    return f"{PARTS_DIR}/samples-{piece_stem(shard, first_row)}.parquet"


def metrics_schema(
    *, with_labels: bool, with_noise: bool, fingerprint: str, label_names: list[str] | None = None
) -> pa.Schema:
    """`metrics.parquet` columns: key, [label], mse, psnr, ssim, [noisy_psnr, noisy_ssim].

    File metadata: `raeflow.model`, `raeflow.version` and, where the source names its classes,
    `raeflow.labels` (JSON: label id -> class name), as in the embedding table.
    """
    fields = [pa.field("key", pa.string(), nullable=False)]
    if with_labels:
        fields.append(pa.field("label", pa.int64()))
    fields += [pa.field(name, pa.float64()) for name in ("mse", "psnr", "ssim")]
    if with_noise:
        fields += [pa.field(name, pa.float64()) for name in NOISY_COLUMNS]
    metadata = {"raeflow.model": fingerprint, "raeflow.version": __version__}
    if with_labels and label_names:
        metadata[LABELS_METADATA] = labels_json(label_names)
    return pa.schema(fields, metadata=metadata)


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
        (OUTLIER_RANK_COLUMN, pa.int64()),
    ]
)
"""Columns of a sample part (thumbnails null for map-only rows, embedding and map_png null for
picture-only rows, outlier_rank null but for dedup's outlier candidates with --neighbors)."""


def offer_sample(keeper: SampleKeeper, row: dict) -> None:
    """Offer a sample row to the selections it can serve (pictures need thumbnails, the map an embedding)."""
    key = row["key"]
    if row.get("clean_png") is not None:
        keeper.gallery.offer(gallery_rank(key), row)
        keeper.worst.offer(worst_rank(key, row["psnr"]), row)
        if row.get(OUTLIER_RANK_COLUMN) is not None:  # parts written before --neighbors existed lack it
            keeper.outliers.offer(outlier_rank(key, row[OUTLIER_RANK_COLUMN]), row)
    if row.get("embedding") is not None:
        keeper.map.offer(gallery_rank(key), row)


def selected_rows(keeper: SampleKeeper) -> list[dict]:
    """The distinct rows a keeper selected (a row may be in several selections)."""
    seen: dict[str, dict] = {}
    for row in keeper.gallery.rows + keeper.worst.rows + keeper.map.rows + keeper.outliers.rows:
        seen[row["key"]] = row
    return list(seen.values())


class ReportWriter(PartWriter):
    """Writes each piece's metrics and sample parts (in the actors); `finish` assembles the report."""

    def __init__(
        self,
        schema: pa.Schema,
        keeper_sizes: dict[str, int],
        finish: Callable[[OutputDir, JobSummary], list[str]],
    ) -> None:
        self.schema = schema
        self.keeper_sizes = keeper_sizes
        self.finish = finish

    def part_prefixes(self) -> list[tuple[str, str]]:
        return [(PARTS_DIR, "metrics-"), (PARTS_DIR, "samples-")]

    def write_part(
        self, out: OutputDir, shard: int, first_row: int, rows: pa.Table
    ) -> tuple[list[str], int, pa.Table | None]:
        metrics = rows.select(self.schema.names).cast(self.schema)
        keeper = SampleKeeper(**self.keeper_sizes)
        carrying = pc.or_(rows.column("clean_png").is_valid(), rows.column("embedding").is_valid())
        for name in ("noisy_psnr", OUTLIER_RANK_COLUMN):
            if name not in rows.column_names:
                rows = rows.append_column(name, pa.nulls(rows.num_rows, SAMPLES_SCHEMA.field(name).type))
        for row in rows.filter(carrying).select(SAMPLES_SCHEMA.names).to_pylist():
            offer_sample(keeper, row)
        samples = pa.Table.from_pylist(selected_rows(keeper), schema=SAMPLES_SCHEMA)
        names = [metrics_part(shard, first_row), samples_part(shard, first_row)]
        datas = [
            parquet_bytes(metrics.replace_schema_metadata(part_metadata(self.schema, rows))),
            parquet_bytes(samples),
        ]
        for name, data in zip(names, datas, strict=True):
            out.put(name, data)
        return names, sum(len(d) for d in datas), None

    def end_job(self, out: OutputDir, summary: object) -> list[str]:
        return self.finish(out, summary)  # type: ignore[arg-type]
