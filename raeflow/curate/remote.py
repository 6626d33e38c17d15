"""`raeflow dedup` and `raeflow index` on Ray (`--backend ray`): the table is read, indexed and searched
in Ray actors and tasks, never in the command's own process.

    raeflow dedup --data s3://b/emb/ --out s3://b/dedup/ --backend ray --address HEAD:6379
    raeflow index --data s3://b/emb/ --out s3://b/emb-index/ --backend ray

dedup: one `DedupBuilder` actor reads the table's parts itself and builds the index `dedup.load`
builds (same layout rule, normalised vectors), keeping the keys and sources beside it. Serialised,
the index goes through the object store to further `DedupSearcher` actors, as many as the cluster's
free CPUs and memory allow. The driver hands out ranges of ids and gets back, per range, only the
pairs at or above --threshold and the outlier scores: it holds a union-find parent and a score per
image (12 bytes), never the vectors or the keys. The builder then writes groups, keep and outliers
with the local path's own functions (the same files); the driver writes duplicates.html from the
groups it is sent.

index: see `run_index_on_ray`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import ray

from raeflow.connection import connect_ray
from raeflow.curate import dedup
from raeflow.curate.config import DedupSettings, IndexSettings, parse_memory
from raeflow.curate.gallery import write_gallery
from raeflow.curate.index import (
    NEXT_KEYS,
    RECALL_K,
    Added,
    IndexResult,
    append_index,
    build_index,
    keys_schema,
    keys_table,
    new_index,
    new_meta,
    save_index,
    set_search_params,
    table_chunks,
    train_sample,
    usable_batches,
)
from raeflow.curate.layout import Layout, choose_layout
from raeflow.curate.recall import exact_top_k, recall_at_k
from raeflow.curate.store import Folder
from raeflow.curate.table import EmbeddingTable, open_table
from raeflow.errors import RaeflowError, SourceError
from raeflow.progress import Progress

RANGE_STEPS = 8
"""Search batches (of up to 1,024 images) per range of ids handed to a search actor."""
IN_FLIGHT = 2
"""Ranges queued at each search actor, so it never waits for the driver."""
LOAD_STEP_S = 1.0
"""Seconds of loading per call to the builder, so the driver can show progress in between."""


def get(refs: Any) -> Any:
    """`ray.get`, with a raeflow error raised in an actor or task re-raised as itself (one line)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, RaeflowError):
            raise err.cause from None
        raise


def on_this_node(out: str) -> dict[str, Any]:
    """Actor options that keep a writer on the driver's node when `out` is a local path: another
    node would write into its own disk. A bucket (any URI with a scheme) is written from anywhere."""
    if "://" in out and not out.startswith("file://"):
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


# --- dedup ------------------------------------------------------------------------------------------


class DedupSearcher:
    """A search actor: a copy of the index (ids only; no keys), searching ranges of ids."""

    def __init__(self, serialised: np.ndarray, layout: Layout, settings: DedupSettings, threads: int) -> None:
        faiss.omp_set_num_threads(threads)
        index = faiss.deserialize_index(serialised)
        set_search_params(index, layout.kind, layout.nprobe)  # not kept in the serialised index
        self.loaded = dedup.Loaded(index, layout, pa.table({"key": pa.array([], pa.string())}), [])
        self.settings = settings

    def ready(self) -> bool:
        return True

    def search(self, first: int, count: int) -> tuple[int, np.ndarray, np.ndarray]:
        pairs, scores = dedup.search_range(self.loaded, self.settings, first, count)
        return first, pairs, scores


class DedupBuilder(DedupSearcher):
    """The actor that reads the table, holds its index and keys, searches too, and writes the lists."""

    def __init__(self, table: EmbeddingTable, settings: DedupSettings) -> None:  # noqa: D107
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # the build: nothing else of this job runs yet
        self.settings, self.table = settings, table
        self.loader: dedup.Loader | None = dedup.Loader(table, settings)

    def load(self) -> tuple[int, int | None]:
        """Load for a while: (rows read, vectors in the index once the table is in, else None)."""
        assert self.loader is not None
        if not self.loader.step(LOAD_STEP_S):
            return self.loader.rows_read, None
        self.loaded = self.loader.loaded()
        rows_read, self.loader = self.loader.rows_read, None
        faiss.omp_set_num_threads(1)  # from now on one search thread per actor, one actor per CPU
        return rows_read, int(self.loaded.index.ntotal)

    def layout(self) -> Layout:
        return self.loaded.layout

    def serialised(self) -> np.ndarray:
        """The index as bytes, for the search actors (through the object store)."""
        return faiss.serialize_index(self.loaded.index)

    def write_lists(self, roots: np.ndarray, scores: np.ndarray, out: str) -> dedup.Lists:
        """groups, keep, outliers and the rejected rows written to `out` (`dedup.write_lists`)."""
        return dedup.write_lists(self.loaded, roots, scores, self.settings, Folder(out))


def run_dedup_on_ray(settings: DedupSettings, table: EmbeddingTable | None = None) -> dedup.DedupResult:
    """`dedup.run_dedup` with the table read, indexed and searched in Ray actors (see module)."""
    settings.validate()
    table = table or open_table(settings.data)
    folder = Folder(settings.out)
    connect_ray(settings.address)
    actor: Any = ray.remote(DedupBuilder)
    builder = actor.options(num_cpus=1, **on_this_node(settings.out)).remote(table, settings)
    searchers: list[Any] = []
    try:
        with Progress("load", total=table.num_rows, unit="vectors") as progress:
            num = None
            while num is None:
                rows_read, num = get(builder.load.remote())
                progress.advance(rows_read - progress.done)
        layout = get(builder.layout.remote())
        searchers = _start_searchers(builder, layout, settings, num)
        roots, scores, num_actors = _search(builder, searchers, settings, num)
        lists: dedup.Lists = get(builder.write_lists.remote(roots, scores, settings.out))
    finally:
        for started in [builder, *searchers]:
            ray.kill(started)
    folder.put(dedup.GALLERY_FILE, write_gallery(lists.groups, settings, table.uri).encode())
    return dedup.DedupResult.of(lists, settings, layout, ray_actors=num_actors)


def _start_searchers(builder: Any, layout: Layout, settings: DedupSettings, num: int) -> list[Any]:
    """Search actors beside the builder: one per free CPU, as many as the free memory holds copies."""
    free = ray.available_resources()
    copy_bytes = layout.num_bytes * 1.25  # the deserialised index, and some room to search
    count = min(int(free.get("CPU", 0)), int(free.get("memory", 0) // max(copy_bytes, 1)))
    ranges = -(-num // (dedup.search_step(settings) * RANGE_STEPS))
    count = min(count, ranges - 1)  # the builder searches too: no more actors than ranges
    if count <= 0:
        return []
    serialised = builder.serialised.remote()  # stays in the object store; the driver never fetches it
    actor = ray.remote(DedupSearcher).options(num_cpus=1, memory=int(copy_bytes))
    return [actor.remote(serialised, layout, settings, 1) for _ in range(count)]


def _search(
    builder: Any, searchers: list[Any], settings: DedupSettings, num: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every image's group (`UnionFind.roots`) and outlier score, the ranges searched by every actor
    that is up; and how many actors searched.

    A search actor gets ranges once it has answered `ready` (its copy of the index is in), so one
    that the cluster cannot place never holds up the job. A search actor that is lost (its node
    gone, killed for memory) has its ranges searched by the others; the builder holds the keys, so
    losing it ends the job.
    """
    size = dedup.search_step(settings) * RANGE_STEPS
    todo = deque((first, min(size, num - first)) for first in range(0, num, size))
    sets, scores = dedup.UnionFind(num), np.zeros(num, dtype=np.float32)
    waiting = {actor.ready.remote(): actor for actor in searchers}
    working: list[Any] = [builder]
    running: dict[Any, tuple[Any, int, int]] = {}  # search call -> (actor, first id, count)
    searched: set[int] = set()

    def feed(actor: Any) -> None:
        while todo and sum(1 for busy, *_ in running.values() if busy is actor) < IN_FLIGHT:
            first, count = todo.popleft()
            running[actor.search.remote(first, count)] = (actor, first, count)

    with Progress("dedup", total=num, unit="images") as progress:
        feed(builder)
        while running:
            done, _ = ray.wait([*running, *waiting], num_returns=1)
            ref = done[0]
            if ref in waiting:
                actor = waiting.pop(ref)
                try:
                    get(ref)
                except ray.exceptions.RayActorError:
                    continue  # lost before it was up: the others search without it
                working.append(actor)
                feed(actor)
                continue
            actor, first, count = running.pop(ref)
            try:
                start, pairs, part = get(ref)
            except ray.exceptions.RayActorError:
                if actor is builder:
                    raise
                todo.appendleft((first, count))  # searched again by an actor still up
                working = [other for other in working if other is not actor]
                for other in working:
                    feed(other)
                continue
            for a, b in pairs.tolist():
                sets.union(a, b)
            scores[start : start + len(part)] = part
            searched.add(id(actor))
            progress.advance(len(part))
            feed(actor)
    return sets.roots(), scores, len(searched)


# --- index ------------------------------------------------------------------------------------------


def run_index_on_ray(
    settings: IndexSettings, table: EmbeddingTable, meta: dict[str, Any] | None
) -> IndexResult:
    """`index.run_index` on Ray. A compressed index (IVF-PQ): its quantizer trained on a sample in one
    task, the vectors added in tasks over groups of the table's parts (each a partial index with that
    quantizer), the partial indexes merged here in table order. A flat or HNSW index, and every
    --append: built in one task that reads the parts and writes the files itself, so the vectors never
    pass through this process."""
    connect_ray(settings.address)
    layout = choose_layout(table.num_rows, table.dim, parse_memory(settings.max_memory), settings.exact_below)
    if meta is None and layout.kind == "ivfpq":
        return _build_ivfpq(settings, table, layout)
    task = ray.remote(_whole_index_task).options(num_cpus=1, **on_this_node(settings.out))
    with Progress("index", total=None, unit="vectors") as progress:
        progress.say(f"indexing {table.num_rows:,} rows in one Ray task (it reads the table itself)")
        result: IndexResult = get(task.remote(settings, table, meta))
    return result


def _whole_index_task(
    settings: IndexSettings, table: EmbeddingTable, meta: dict[str, Any] | None
) -> IndexResult:
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # one task does all the work: every core of its node
    if meta is not None:
        return append_index(settings, table, meta, backend="ray")
    return build_index(settings, table, backend="ray")


def _build_ivfpq(settings: IndexSettings, table: EmbeddingTable, layout: Layout) -> IndexResult:
    started = time.monotonic()
    folder = Folder(settings.out)
    trained = ray.remote(_train_task).options(num_cpus=1).remote(table, layout, settings)
    groups = _part_groups(table)
    share = min(1.0, settings.recall_sample / max(1, table.num_rows))
    add = ray.remote(_add_task).options(num_cpus=1)
    pending = [
        add.remote(trained, replace(table, parts=parts), settings, share, seed)
        for seed, parts in enumerate(groups)
    ]
    index = faiss.deserialize_index(get(trained))
    set_search_params(index, layout.kind, layout.nprobe)
    added, seen = Added(), set[str]()
    with (
        folder.parquet_writer(NEXT_KEYS, keys_schema(table.has_source)) as keys,
        Progress("index", total=table.num_rows, unit="vectors") as progress,
    ):
        while pending:  # in table order: vector id i stays row i of keys.parquet
            part: Partial = get(pending.pop(0))  # its reference dropped: the object store may free it
            partial, rows = part.index(), part.keys
            repeated = np.flatnonzero([key in seen for key in rows.column("key").to_pylist()])
            if len(repeated):  # a key an earlier group holds: left out, as `usable_batches` does
                sources = rows.column("source").to_pylist() if "source" in rows.column_names else None
                added.rejected += [
                    (rows.column("key")[i].as_py(), sources[i] if sources else table.uri, "duplicate_key")
                    for i in repeated
                ]
                part.sample_ids, part.sample_vectors = _drop_from_sample(part, repeated)
                _drop_ids(partial, repeated, len(rows))
                rows = rows.filter(pa.array(~np.isin(np.arange(len(rows)), repeated)))
            seen.update(rows.column("key").to_pylist())
            added.sample_ids += (index.ntotal + part.sample_ids).tolist()
            added.sample_vectors.append(part.sample_vectors)
            added.rejected += part.rejected
            faiss.merge_into(index, partial, True)  # the partial's ids shifted past the ones merged
            keys.write_table(rows.cast(keys.schema))
            progress.advance(part.rows_read, rejected=len(part.rejected) + len(repeated))
    added.num_added = int(index.ntotal)
    if added.num_added == 0:
        raise SourceError(f"--data {settings.data} holds no usable vector ({len(added.rejected):,} rejected)")
    queries = np.concatenate(added.sample_vectors)
    k = min(RECALL_K, int(index.ntotal))
    found = index.search(queries, k)[1]
    exact = get(ray.remote(_exact_task).options(num_cpus=1).remote(queries, table, settings, k))
    recall = {
        "recall_at_10": round(recall_at_k(found, exact), 4),
        "recall_sample": len(queries),
        "recall_measured_at": int(index.ntotal),
    }
    meta = new_meta(settings, table, layout, int(index.ntotal), started, "ray") | recall
    return save_index(folder, index, meta, added, settings)


def _part_groups(table: EmbeddingTable) -> list[list[str]]:
    """The table's parts in consecutive groups, one add task each: about two per free CPU."""
    count = max(1, min(len(table.parts), 2 * int(ray.available_resources().get("CPU", 1))))
    bounds = np.linspace(0, len(table.parts), count + 1).round().astype(int)
    return [table.parts[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _train_task(table: EmbeddingTable, layout: Layout, settings: IndexSettings) -> np.ndarray:
    """An empty index of `layout` with its quantizer trained on a sample of the table, serialised."""
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the add tasks wait for it: every core of its node
    metric = settings.metric or "cosine"
    index = new_index(layout, table.dim, metric)
    index.train(train_sample(table, layout.train_size, settings.batch_size, metric))
    return faiss.serialize_index(index)


@dataclass
class Partial:
    """One add task's result: a partial index (ids 0..n-1, its rows' order), its keys, a recall sample."""

    serialised: np.ndarray
    keys: pa.Table
    rejected: list[tuple[str, str, str]]
    sample_ids: np.ndarray
    sample_vectors: np.ndarray
    rows_read: int

    def index(self) -> faiss.Index:
        return faiss.deserialize_index(self.serialised)


def _add_task(
    trained: np.ndarray, table: EmbeddingTable, settings: IndexSettings, share: float, seed: int
) -> Partial:
    """The usable rows of `table` (a group of parts) added to a copy of the trained index."""
    index = faiss.deserialize_index(trained)
    added, pieces, picked_ids, picked = Added(), [], [], []
    rng = np.random.default_rng([1, seed])
    schema = keys_schema(table.has_source)
    for batch in usable_batches(table, settings.batch_size, settings.metric or "cosine", set(), added):
        choice = np.flatnonzero(rng.random(len(batch.keys)) < share)
        picked_ids.append(index.ntotal + choice)
        picked.append(batch.vectors[choice])
        index.add(batch.vectors)
        pieces.append(keys_table(batch, schema))
    return Partial(
        serialised=faiss.serialize_index(index),
        keys=pa.concat_tables(pieces) if pieces else schema.empty_table(),
        rejected=added.rejected,
        sample_ids=np.concatenate(picked_ids) if picked_ids else np.zeros(0, np.int64),
        sample_vectors=np.concatenate(picked) if picked else np.zeros((0, table.dim), np.float32),
        rows_read=int(index.ntotal) + len(added.rejected),
    )


def _drop_from_sample(part: Partial, dropped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The recall sample of `part` without the dropped rows, its ids renumbered as `_drop_ids` does."""
    kept = ~np.isin(part.sample_ids, dropped)
    return part.sample_ids[kept] - np.searchsorted(dropped, part.sample_ids[kept]), part.sample_vectors[kept]


def _drop_ids(index: faiss.Index, dropped: np.ndarray, num: int) -> None:
    """Remove ids `dropped` (sorted) from an IVF index of ids 0..num-1; the others are renumbered
    0..num-len(dropped)-1 in their order, so they stay the rows of the keys that remain."""
    ivf = faiss.extract_index_ivf(index)
    ivf.remove_ids(faiss.IDSelectorBatch(dropped.astype(np.int64)))
    renumbered = np.arange(num, dtype=np.int64) - np.searchsorted(dropped, np.arange(num), side="right")
    lists: Any = ivf.invlists
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(number), size)  # a view of the list's ids
            ids[:] = renumbered[ids]


def _exact_task(queries: np.ndarray, table: EmbeddingTable, settings: IndexSettings, k: int) -> np.ndarray:
    """The exact `k` nearest vector ids of `queries`, by a pass over the table (`exact_top_k`)."""
    return exact_top_k(queries, table_chunks(table, settings), k, settings.metric or "cosine")
