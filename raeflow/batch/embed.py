"""`raeflow embed`: one embedding row per image, as a Parquet table with one part per input shard.

    raeflow embed --data builtin:mnist --model runs/mnist/model --out emb/

Each `part-NNNNN.parquet` (NNNNN = the input shard's index) has the columns `key`, `source`,
`embedding` (plain Arrow `fixed_size_list<float32>[D]`) and, where the source has labels, `label`;
its file metadata carries `raeflow.model` (the bundle's fingerprint) and `raeflow.version`.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from raeflow import __version__
from raeflow.batch.config import EmbedConfig
from raeflow.batch.decoding import DecodeSpec
from raeflow.batch.output import OutputDir
from raeflow.batch.predictors import EncodePredictor, embedding_dim
from raeflow.batch.runner import BatchJob, JobSummary, ShardWriter, run_batch_job
from raeflow.data.sources import open_source
from raeflow.data.sources.base import Shard
from raeflow.models import load_bundle


def embedding_schema(dim: int, *, with_labels: bool, fingerprint: str) -> pa.Schema:
    """The schema of every part of an embedding table of dimension `dim`."""
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
    ]
    if with_labels:
        fields.append(pa.field("label", pa.int64()))
    return pa.schema(fields, metadata={"raeflow.model": fingerprint, "raeflow.version": __version__})


class EmbeddingWriter(ShardWriter):
    """Collects one shard's embeddings and writes them as `part-NNNNN.parquet` in one atomic put."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.shard: Shard | None = None
        self.tables: list[pa.Table] = []

    def begin_shard(self, shard: Shard) -> None:
        self.shard, self.tables = shard, []

    def add_rows(self, rows: pa.Table) -> None:
        self.tables.append(rows.select(self.schema.names).cast(self.schema))
        return None

    def end_shard(self) -> tuple[str, ...]:
        assert self.shard is not None
        table = pa.concat_tables(self.tables) if self.tables else self.schema.empty_table()
        buffer = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(self.schema.metadata), buffer)
        name = f"part-{self.shard.index:05d}.parquet"
        self.out.put(name, buffer.getvalue())
        self.tables = []
        return (name,)


def run_embed(config: EmbedConfig) -> JobSummary:
    """Embed every image of `config.data` with the bundle `config.model` into `config.out`."""
    config.run.validate()
    bundle = load_bundle(config.model)
    contract = bundle.model.input_contract
    channels, height, width = contract["channels"], contract["height"], contract["width"]
    if config.image_size is not None:
        bundle.check_input(channels, *config.image_size)
        height, width = config.image_size
    # A fully convolutional model without --image-size embeds each image at its own size.
    size = (height, width) if "any" not in (height, width) else None
    source = open_source(config.data, config.source_format, image_column=config.image_column)
    dim = embedding_dim(bundle.model, channels, *(size or (None, None)))
    schema = embedding_schema(dim, with_labels=source.has_labels, fingerprint=bundle.fingerprint)
    writer = EmbeddingWriter(schema)
    job = BatchJob(
        name="embed",
        source=source,
        out=OutputDir(config.out),
        fingerprint=bundle.fingerprint,
        settings=config.output_settings(),
        decode=DecodeSpec(channels=channels, height=size and size[0], width=size and size[1], fit="resize"),
        predictor=EncodePredictor,
        predictor_kwargs={"bundle": config.model, "image_size": size},
        writer=writer,
        run=config.run,
        outputs_hint="part-*.parquet",
    )
    return run_batch_job(job)
