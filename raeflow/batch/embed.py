"""`raeflow embed`: one embedding row per image, as a Parquet table of one or more parts per input shard.

    raeflow embed --data builtin:mnist --model runs/mnist/model --out emb/

Each `part-SSSSS-RRRRRR.parquet` (shard SSSSS, from its row RRRRRR; sorted names give the input
order) is written by the predictor actor that computed it and has the columns `key`, `source`,
`embedding` (plain Arrow `fixed_size_list<float32>[D]`) and, where the source has labels, `label`;
its file metadata carries `raeflow.model` (the bundle's fingerprint), `raeflow.version`,
`raeflow.precision` (bf16 or fp32: what the actor that wrote the part computed it in; actors on
different nodes may differ) and, where the source names its classes (class folders),
`raeflow.labels` (JSON: label id -> class name).
"""

from __future__ import annotations

import json

import pyarrow as pa

from raeflow import __version__, console
from raeflow.batch.config import EmbedConfig
from raeflow.batch.decoding import DecodeSpec
from raeflow.batch.output import OutputDir
from raeflow.batch.predictors import EncodePredictor
from raeflow.batch.runner import BatchJob, JobSummary, run_batch_job
from raeflow.batch.worker import PartWriter, parquet_bytes, piece_stem
from raeflow.data.sources import open_source
from raeflow.models import load_bundle
from raeflow.models.embedding import embedding_rule, model_embedding_dim

LABELS_METADATA = "raeflow.labels"
"""File-metadata key of the class names by label id (JSON), where the source names its classes."""


def embedding_schema(
    dim: int, *, with_labels: bool, fingerprint: str, label_names: list[str] | None = None
) -> pa.Schema:
    """The schema of every part of an embedding table of dimension `dim`.

    With `label_names` (class folders) the file metadata also carries `raeflow.labels`, the JSON
    mapping of each label id to its class name (`{"0": "everyday", "1": "science"}`).
    """
    fields = [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
    ]
    if with_labels:
        fields.append(pa.field("label", pa.int64()))
    metadata = {"raeflow.model": fingerprint, "raeflow.version": __version__}
    if with_labels and label_names:
        metadata[LABELS_METADATA] = labels_json(label_names)
    return pa.schema(fields, metadata=metadata)


def labels_json(label_names: list[str]) -> str:
    """Class names by label as the JSON object of `raeflow.labels`: `{"0": "cats", "1": "dogs"}`."""
    return json.dumps({str(i): name for i, name in enumerate(label_names)}, ensure_ascii=False)


def part_metadata(schema: pa.Schema, rows: pa.Table) -> dict[bytes, bytes]:
    """The file metadata of one part: the table's own (model, version, labels) and the `raeflow.*`
    keys of the predictor's result, e.g. `raeflow.precision` (the precision this actor computed in)."""
    computed = {k: v for k, v in (rows.schema.metadata or {}).items() if k.startswith(b"raeflow.")}
    return {**computed, **(schema.metadata or {})}


class EmbeddingWriter(PartWriter):
    """Writes each piece's embeddings as `part-SSSSS-RRRRRR.parquet`, in one atomic put, from the actor."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema

    def part_prefixes(self) -> list[tuple[str, str]]:
        return [("", "part-")]

    def write_part(
        self, out: OutputDir, shard: int, first_row: int, rows: pa.Table
    ) -> tuple[list[str], int, pa.Table | None]:
        table = rows.select(self.schema.names).cast(self.schema)
        data = parquet_bytes(table.replace_schema_metadata(part_metadata(self.schema, rows)))
        name = f"part-{piece_stem(shard, first_row)}.parquet"
        out.put(name, data)
        return [name], len(data), None


def run_embed(config: EmbedConfig) -> JobSummary:
    """Embed every image of `config.data` with the bundle `config.model` into `config.out`."""
    return run_batch_job(embed_job(config))


def embed_job(config: EmbedConfig) -> BatchJob:
    """The batch job `run_embed` runs (checks the bundle against the settings, lists nothing yet).

    The embedding follows `raeflow.models.embedding.embedding_rule`: a fully convolutional model's
    code is averaged over space, at each image's own size unless --image-size resizes first; the
    job says so in one line before it starts.
    """
    config.run.validate()
    bundle = load_bundle(config.model)
    contract = bundle.model.input_contract
    channels = contract["channels"]
    if config.image_size is not None:
        bundle.check_input(channels, *config.image_size)
    rule = embedding_rule(config.model, contract, model_embedding_dim(bundle.model), config.image_size)
    notice = rule.notice(config.model)
    if notice and not config.run.quiet:
        console.notice(notice)
    size = rule.size
    source = open_source(config.data, config.source_format, image_column=config.image_column)
    schema = embedding_schema(
        rule.dim,
        with_labels=source.has_labels,
        fingerprint=bundle.fingerprint,
        label_names=getattr(source, "label_names", None),  # class folders: label i is label_names[i]
    )
    writer = EmbeddingWriter(schema)
    return BatchJob(
        name="embed",
        source=source,
        out=OutputDir(config.out),
        fingerprint=bundle.fingerprint,
        settings=config.output_settings(),
        decode=DecodeSpec(
            channels=channels,
            height=size and size[0],
            width=size and size[1],
            fit="resize",
            worker_memory_gb=config.run.worker_memory_gb,
            worker_cpus=config.run.worker_cpus,
        ),
        predictor=EncodePredictor,
        predictor_kwargs={
            "bundle": config.model,
            "image_size": size,
            "worker_memory_gb": config.run.worker_memory_gb,
        },
        writer=writer,
        run=config.run,
        outputs_hint="part-*.parquet",
    )
