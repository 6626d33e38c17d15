"""`raeflow index`: a faiss index over an embedding table, its keys beside it, its recall measured.

    raeflow index --data emb/ --out emb-index/ [--metric cosine|l2] [--append]

IDX/index.faiss holds the vectors (faiss id i is row i of IDX/keys.parquet: `key`, and `source`
where the table has one); IDX/index.json says what was built (kind, metric, dimension, model,
recall@10 on a sample, the tables added); IDX/_rejected/rejected.parquet lists rows left out.
The table is read twice at most (once more to train a compressed index), `--batch-size` rows at a
time; only the index itself grows with the table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raeflow import __version__
from raeflow.curate.config import IndexSettings, parse_memory, runs_on_ray
from raeflow.curate.layout import HNSW_EF_SEARCH, Layout, choose_layout
from raeflow.curate.recall import exact_top_k, recall_at_k
from raeflow.curate.store import Folder, rejected_line, write_rejected
from raeflow.curate.table import EmbeddingTable, VectorBatch, open_table
from raeflow.errors import ConfigError, SourceError
from raeflow.progress import Progress

RECALL_K = 10
INDEX_FILE, KEYS_FILE, META_FILE = "index.faiss", "keys.parquet", "index.json"
NEXT_KEYS = "_next/keys.parquet"
"""Where the keys of an index being written wait until its index.faiss is in place."""


@dataclass
class Added:
    """What one pass of a table into an index did."""

    num_added: int = 0
    num_present: int = 0  # keys the index already held (--append)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    sample_ids: list[int] = field(default_factory=list)
    sample_vectors: list[np.ndarray] = field(default_factory=list)


def new_index(layout: Layout, dim: int, metric: str) -> faiss.Index:
    """An empty faiss index of `layout` for `dim`-float vectors compared by `metric`."""
    kind = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    index = faiss.index_factory(dim, layout.factory, kind)
    set_search_params(index, layout.kind, layout.nprobe)
    return index


def set_search_params(index: faiss.Index, kind: str, nprobe: int) -> None:
    """The search settings faiss does not keep in the file (HNSW's breadth, IVF's clusters visited)."""
    if kind == "hnsw":
        graph: Any = faiss.downcast_index(index)  # IndexHNSWFlat
        graph.hnsw.efSearch = HNSW_EF_SEARCH
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = nprobe


def usable_batches(
    table: EmbeddingTable, batch_size: int, metric: str, present: set[str], added: Added
) -> Iterator[VectorBatch]:
    """The table's batches without rejected rows, keys seen earlier in the table, or keys in `present`."""
    seen: set[str] = set()
    for batch in table.batches(batch_size, normalise=metric == "cosine"):
        added.rejected += batch.rejected
        rows = []
        for i, key in enumerate(batch.keys):
            if key in present:
                added.num_present += 1
            elif key in seen:
                source = batch.sources[i] if batch.sources else table.uri
                added.rejected.append((key, source, "duplicate_key"))
            else:
                seen.add(key)
                rows.append(i)
        if len(rows) < len(batch.keys):
            batch.keys = [batch.keys[i] for i in rows]
            batch.sources = [batch.sources[i] for i in rows] if batch.sources is not None else None
            batch.vectors = batch.vectors[rows]
        if batch.keys:
            yield batch


def train_sample(table: EmbeddingTable, size: int, batch_size: int, metric: str) -> np.ndarray:
    """About `size` vectors drawn evenly at random from the whole table, to train a quantizer on."""
    rng = np.random.default_rng(0)
    share = min(1.0, size / max(1, table.num_rows))
    picked = [
        batch.vectors[rng.random(len(batch.vectors)) < share]
        for batch in table.batches(batch_size, normalise=metric == "cosine")
    ]
    return np.concatenate(picked) if picked else np.empty((0, table.dim), np.float32)


def add_table(
    index: faiss.Index,
    table: EmbeddingTable,
    settings: IndexSettings,
    present: set[str],
    keys: pq.ParquetWriter,
) -> Added:
    """Add every usable row of `table` to `index` (ids follow on), its key to `keys`; keep a recall sample."""
    added = Added()
    first_id = index.ntotal
    rng = np.random.default_rng(1)
    share = min(1.0, settings.recall_sample / max(1, table.num_rows))
    with Progress("index", total=table.num_rows, unit="vectors") as progress:
        metric = settings.metric or "cosine"
        for batch in usable_batches(table, settings.batch_size, metric, present, added):
            start = index.ntotal
            index.add(batch.vectors)
            keys.write_table(keys_table(batch, keys.schema))
            picked = np.flatnonzero(rng.random(len(batch.keys)) < share)
            added.sample_ids += (start + picked).tolist()
            added.sample_vectors.append(batch.vectors[picked])
            rows_read = index.ntotal - first_id + len(added.rejected) + added.num_present
            progress.advance(rows_read - progress.done, rejected=len(added.rejected) - progress.rejected)
    added.num_added = index.ntotal - first_id
    return added


def keys_table(batch: VectorBatch, schema: pa.Schema) -> pa.Table:
    columns: dict[str, Any] = {"key": batch.keys}
    if "source" in schema.names:
        columns["source"] = batch.sources if batch.sources is not None else [None] * len(batch.keys)
    return pa.table(columns, schema=schema)


def keys_schema(has_source: bool) -> pa.Schema:
    """keys.parquet: row i is the key (and source) of faiss id i."""
    fields = [pa.field("key", pa.string())] + ([pa.field("source", pa.string())] if has_source else [])
    return pa.schema(fields)


@dataclass
class IndexResult:
    """What `raeflow index` built or added, for the summary."""

    out: str
    meta: dict[str, Any]
    added: Added
    rejected_line: str | None

    def lines(self) -> list[str]:
        """The one-screen summary."""
        meta, recall = self.meta, self.meta.get("recall_at_10")
        verb = "appended to" if self.meta.get("appends") else "built"
        lines = [
            f"index {verb} {self.out}: {meta['num_vectors']:,} vectors of dimension {meta['dim']} "
            f"({meta['metric']}), "
            f"{meta['factory']} ({meta['kind']}), {self.added.num_added:,} added",
            "recall@10: "
            + (
                f"{recall:.3f} on {meta['recall_sample']:,} sampled vectors"
                if recall is not None
                else "not measured"
            ),
        ]
        if self.added.num_present:
            lines.append(f"skipped: {self.added.num_present:,} keys already in the index")
        if self.rejected_line:
            lines.append(self.rejected_line)
        return lines


def run_index(settings: IndexSettings) -> IndexResult:
    """Build the index of `settings.data` in `settings.out`, or add to it with `settings.append`;
    in this process, or on Ray (`--backend`, `remote.run_index_on_ray`)."""
    settings.validate()
    folder = Folder(settings.out)
    meta = _index_on_record(settings, folder)
    table = open_table(settings.data)
    if runs_on_ray(settings.backend, settings.address, table.num_rows, settings.exact_below):
        from raeflow.curate.remote import run_index_on_ray

        return run_index_on_ray(settings, table, meta)
    if meta is not None:
        return append_index(settings, table, meta)
    return build_index(settings, table)


def _index_on_record(settings: IndexSettings, folder: Folder) -> dict[str, Any] | None:
    """index.json of the index to --append to (its metric set in `settings`), None for a new index;
    refuses an --append without an index, and a new index over one."""
    if not settings.append:
        if folder.exists(META_FILE):
            raise ConfigError(
                f"--out {settings.out} already holds an index; add --append to add this table to it, "
                "or give another folder"
            )
        settings.metric = settings.metric or "cosine"
        return None
    if not folder.exists(META_FILE):
        raise ConfigError(
            f"--out {settings.out} holds no index (no {META_FILE}); leave out --append to build one"
        )
    meta: dict[str, Any] = folder.get_json(META_FILE)
    if settings.metric not in (None, meta["metric"]):
        raise ConfigError(
            f"--metric {settings.metric}: the index in {settings.out} compares by {meta['metric']}"
        )
    settings.metric = meta["metric"]
    return meta


def build_index(settings: IndexSettings, table: EmbeddingTable, *, backend: str = "local") -> IndexResult:
    """A new index of `table` in `settings.out`: built, its recall measured, its files written."""
    folder = Folder(settings.out)
    started = time.monotonic()
    layout = choose_layout(table.num_rows, table.dim, parse_memory(settings.max_memory), settings.exact_below)
    index = new_index(layout, table.dim, settings.metric or "cosine")
    if layout.train_size:
        index.train(train_sample(table, layout.train_size, settings.batch_size, settings.metric or "cosine"))
    with folder.parquet_writer(NEXT_KEYS, keys_schema(table.has_source)) as keys:
        added = add_table(index, table, settings, set(), keys)
    if added.num_added == 0:
        raise SourceError(f"--data {settings.data} holds no usable vector ({len(added.rejected):,} rejected)")
    recall = measure_recall(index, layout, settings, added, table)
    meta = new_meta(settings, table, layout, int(index.ntotal), started, backend) | recall
    return save_index(folder, index, meta, added, settings)


def new_meta(
    settings: IndexSettings,
    table: EmbeddingTable,
    layout: Layout,
    num_vectors: int,
    started: float,
    backend: str,
) -> dict[str, Any]:
    """index.json of a new index (without its recall)."""
    return {
        "format": "raeflow.index/1",
        "metric": settings.metric,
        "dim": table.dim,
        "factory": layout.factory,
        "kind": layout.kind,
        "nprobe": layout.nprobe,
        "num_vectors": num_vectors,
        "model": table.fingerprint,
        "data": [table.uri],
        "appends": 0,
        "max_memory": settings.max_memory,
        "estimated_bytes": layout.num_bytes,
        "build_seconds": round(time.monotonic() - started, 2),
        "backend": backend,
        "raeflow_version": __version__,
    }


def save_index(
    folder: Folder, index: faiss.Index, meta: dict[str, Any], added: Added, settings: IndexSettings
) -> IndexResult:
    folder.put(INDEX_FILE, faiss.serialize_index(index).tobytes())
    folder.fs.mv(folder.path(NEXT_KEYS), folder.path(KEYS_FILE))
    if folder.exists("_next"):  # the emptied folder, on a local disk
        folder.fs.rm(folder.path("_next"), recursive=True)
    write_rejected(folder, added.rejected, keep_old=settings.append)
    folder.put_json(META_FILE, meta)  # last: an index folder with index.json is complete
    return IndexResult(settings.out, meta, added, rejected_line(added.rejected, folder))


def measure_recall(
    index: faiss.Index, layout: Layout, settings: IndexSettings, added: Added, table: EmbeddingTable | None
) -> dict[str, Any]:
    """recall@10 of `index` on the sampled vectors against exact search (1 for a flat index).

    The exact neighbours come from the index's own vectors where it keeps them (flat, HNSW), else
    from a second pass over `table`; without either (a compressed index after --append) nothing is
    measured and the recall on record stays.
    """
    queries = (
        np.concatenate(added.sample_vectors) if added.sample_vectors else np.empty((0, index.d), np.float32)
    )
    if layout.kind == "flat":
        return {"recall_at_10": 1.0, "recall_sample": len(queries), "recall_measured_at": int(index.ntotal)}
    if not layout.stores_vectors and table is None:
        return {}
    k = min(RECALL_K, int(index.ntotal))
    found = index.search(queries, k)[1]
    chunks = (
        _stored_chunks(index, settings.batch_size) if layout.stores_vectors else table_chunks(table, settings)
    )
    exact = exact_top_k(queries, chunks, k, settings.metric or "cosine")
    return {
        "recall_at_10": round(recall_at_k(found, exact), 4),
        "recall_sample": len(queries),
        "recall_measured_at": int(index.ntotal),
    }


def _stored_chunks(index: faiss.Index, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    for first in range(0, index.ntotal, batch_size):
        yield first, index.reconstruct_n(first, min(batch_size, index.ntotal - first))


def table_chunks(table: EmbeddingTable | None, settings: IndexSettings) -> Iterator[tuple[int, np.ndarray]]:
    assert table is not None
    first = 0
    for batch in usable_batches(table, settings.batch_size, settings.metric or "cosine", set(), Added()):
        yield first, batch.vectors
        first += len(batch.vectors)


def append_index(
    settings: IndexSettings, table: EmbeddingTable, meta: dict[str, Any], *, backend: str = "local"
) -> IndexResult:
    """Add the table's new keys to the index in --out (`meta`: its index.json), without retraining
    or rebuilding it."""
    folder = Folder(settings.out)
    _check_same_vectors(table, meta, settings.out)
    started = time.monotonic()
    index = faiss.deserialize_index(np.frombuffer(folder.get(INDEX_FILE), dtype=np.uint8))
    set_search_params(index, meta["kind"], meta.get("nprobe", 0))
    old_keys = folder.read_table(KEYS_FILE)
    if not index.ntotal == len(old_keys) == meta["num_vectors"]:  # an append stopped between two files
        raise ConfigError(
            f"the index in {settings.out} is inconsistent ({index.ntotal:,} vectors, {len(old_keys):,} keys, "
            f"{meta['num_vectors']:,} in {META_FILE}); build it again into an empty folder"
        )
    present = set(old_keys.column("key").to_pylist())
    with folder.parquet_writer(NEXT_KEYS, old_keys.schema) as keys:
        keys.write_table(old_keys)
        added = add_table(index, table, settings, present, keys)
    del old_keys, present
    layout = Layout(
        meta["factory"], meta["kind"], meta.get("estimated_bytes", 0), nprobe=meta.get("nprobe", 0)
    )
    meta.update(measure_recall(index, layout, settings, added, None) if added.num_added else {})
    meta.update(
        num_vectors=int(index.ntotal),
        data=[*meta["data"], table.uri],
        appends=meta.get("appends", 0) + 1,
        append_seconds=round(time.monotonic() - started, 2),
        model=meta.get("model") or table.fingerprint,
        backend=backend,
    )
    return save_index(folder, index, meta, added, settings)


def _check_same_vectors(table: EmbeddingTable, meta: dict[str, Any], out: str) -> None:
    """Refuse a table whose vectors cannot sit beside the index's: another length or another model."""
    if table.dim != meta["dim"]:
        raise SourceError(
            f"--data {table.uri} holds vectors of {table.dim}; the index in {out} holds {meta['dim']}"
        )
    if table.fingerprint and meta.get("model") and table.fingerprint != meta["model"]:
        raise SourceError(
            f"--data {table.uri} was embedded by another model ({table.fingerprint[:12]}) "
            f"than the index in {out} ({meta['model'][:12]}); their vectors cannot be compared"
        )
