"""An embedding table read part by part: its schema checked once, its vectors streamed in batches.

The table is what `raeflow embed` writes (`part-*.parquet`: `key`, `source`, `embedding` as
`fixed_size_list<float32>[D]`, file metadata `raeflow.model`), or any Parquet files with a string
`key` and a float list `embedding` column (NeMo Curator's and clip-retrieval's tables read as is).
A table that cannot be indexed at all (no such column, parts of two dimensions or of two models) is a
`SourceError`; single rows that cannot (null, NaN or infinite values; a zero vector under cosine; a
key seen before) are rejected with a reason and listed, and the rest goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow.data.sources.location import filesystem, list_files, to_uri
from raeflow.errors import SourceError

MODEL_METADATA = b"raeflow.model"
"""File-metadata key of the fingerprint of the bundle that computed the embeddings."""


@dataclass
class VectorBatch:
    """Consecutive rows of one part: the usable ones as vectors, the others as rejections."""

    keys: list[str]
    vectors: np.ndarray  # (n, D) float32, unit length when the table was opened for cosine
    sources: list[str] | None
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (key, source, reason)


@dataclass
class EmbeddingTable:
    """The parts of one embedding table and what they agree on."""

    uri: str
    parts: list[str]  # full URIs, sorted (the input order)
    dim: int
    num_rows: int
    fingerprint: str | None  # the bundle that computed the vectors, where the parts say
    has_source: bool

    def batches(self, batch_size: int, *, normalise: bool) -> Iterator[VectorBatch]:
        """Every row of every part in order, `batch_size` rows at a time, checked (see module)."""
        columns = ["key", "embedding"] + (["source"] if self.has_source else [])
        for part in self.parts:
            fs, path = filesystem(part)
            with fs.open(path, "rb") as handle:
                for record in pq.ParquetFile(handle).iter_batches(batch_size=batch_size, columns=columns):
                    yield self._checked(part, record, normalise)

    def _checked(self, part: str, record: pa.RecordBatch, normalise: bool) -> VectorBatch:
        keys = record.column("key").to_pylist()
        sources = record.column("source").to_pylist() if self.has_source else None
        vectors, reasons = vectors_of(record.column("embedding"), self.dim, part, normalise)
        reasons[np.array([key is None for key in keys], dtype=bool)] = "missing_key"
        usable = reasons == ""
        rows = np.flatnonzero(usable).tolist()
        return VectorBatch(
            keys=[keys[i] for i in rows],
            vectors=vectors[usable],
            sources=[sources[i] for i in rows] if sources is not None else None,
            rejected=[
                (str(keys[i]), sources[i] if sources is not None else part, str(reasons[i]))
                for i in np.flatnonzero(~usable).tolist()
            ],
        )


def vectors_of(column: pa.Array, dim: int, part: str, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
    """The rows of an embedding column as `(n, dim)` float32 and a reason per row ('' = usable)."""
    num_rows = len(column)
    reasons = np.full(num_rows, "", dtype=object)
    lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False)
    wrong = (lengths != dim) & (lengths != -1)
    if wrong.any():
        raise SourceError(
            f"{part} mixes vector dimensions: {dim} and {int(lengths[wrong][0])}; "
            "an embedding table holds vectors of one model, of one length"
        )
    reasons[lengths == -1] = "missing_vector"
    filled = pc.fill_null(column, pa.scalar([0.0] * dim, column.type)) if (lengths == -1).any() else column
    flat = pc.list_flatten(filled).to_numpy(zero_copy_only=False)
    vectors = np.array(flat, dtype=np.float32).reshape(num_rows, dim)  # (n, D), a writable copy
    finite = np.isfinite(vectors).all(axis=1)
    reasons[~finite & (reasons == "")] = "nan_vector"
    vectors[~finite] = 0.0
    if normalise:
        norms = np.linalg.norm(vectors, axis=1)
        reasons[(norms == 0) & (reasons == "")] = "zero_vector"
        vectors /= np.where(norms == 0, 1.0, norms)[:, None]
    return vectors, reasons


def open_table(uri: str, option: str = "--data") -> EmbeddingTable:
    """The table under `uri` (a folder, a Parquet file or a glob), its schema checked (see module)."""
    fs, path = filesystem(uri)
    if not fs.exists(path) and "*" not in path:
        raise SourceError(f"{option} {uri} does not exist")
    parts = [to_uri(fs, p) for p in list_files(fs, path, (".parquet",))]
    if not parts:
        raise SourceError(f"{option} {uri} holds no Parquet files; give the --out folder of `raeflow embed`")
    dims: dict[int, str] = {}
    models: dict[str, str] = {}
    num_rows, has_source = 0, True
    for part in parts:
        part_fs, part_path = filesystem(part)
        with part_fs.open(part_path, "rb") as handle:
            meta = pq.ParquetFile(handle)
            schema = meta.schema_arrow
            dim = _dimension(part, schema, meta)
            num_rows += meta.metadata.num_rows
        dims.setdefault(dim, part)
        model = (schema.metadata or {}).get(MODEL_METADATA)
        if model:
            models.setdefault(model.decode(), part)
        has_source = has_source and "source" in schema.names
    if len(dims) > 1:
        (d1, p1), (d2, p2) = list(dims.items())[:2]
        raise SourceError(f"{option} {uri} mixes vector dimensions: {p1} has {d1}, {p2} has {d2}")
    if len(models) > 1:
        (m1, p1), (m2, p2) = list(models.items())[:2]
        raise SourceError(
            f"{option} {uri} mixes the embeddings of two models: {p1} ({m1[:12]}) and {p2} ({m2[:12]})"
        )
    fingerprint = next(iter(models), None)
    return EmbeddingTable(uri, parts, next(iter(dims)), num_rows, fingerprint, has_source)


def _dimension(part: str, schema: pa.Schema, meta: pq.ParquetFile) -> int:
    """The vector length of one part (read from its first non-empty row for variable-length lists)."""
    if "embedding" not in schema.names or "key" not in schema.names:
        missing = "embedding" if "embedding" not in schema.names else "key"
        raise SourceError(
            f"{part} is not an embedding table: it has no `{missing}` column "
            f"(columns: {', '.join(schema.names)}); give the --out folder of `raeflow embed`"
        )
    kind = schema.field("embedding").type
    is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not is_list or not pa.types.is_floating(kind.value_type):
        raise SourceError(f"{part}: the `embedding` column is {kind}, not a list of floats")
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    for record in meta.iter_batches(batch_size=1024, columns=["embedding"]):
        lengths = pc.drop_null(pc.list_value_length(record.column("embedding")))
        if len(lengths):
            return int(lengths[0].as_py())
    raise SourceError(f"{part} holds no vectors")
