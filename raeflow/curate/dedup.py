"""`raeflow dedup`: near-duplicate groups, one image kept per group, and every image's outlier score.

    raeflow dedup --data emb/ --out dedup/ --threshold 0.95

1. The table's vectors, normalised, go into an in-memory index that keeps them whole (exact `Flat`
   below `--exact-below` vectors, an HNSW graph above), `--batch-size` rows at a time.
2. Each image's `--neighbors` nearest are searched, a batch of images at a time; their cosine
   similarities are recomputed exactly from the stored vectors (approximate search may miss a
   neighbour, never report a false one), and every pair at or above `--threshold` is joined
   (union-find: a group is a connected set of such pairs).
3. Representative of a group: the member with the highest mean cosine similarity to the group's
   members (the mean is `v . sum(group) / size`, so no pairwise matrix is built), ties going to the
   smallest key. It is kept; the other members are not.
4. Outlier score: an image's mean cosine distance (1 - similarity) to its `--outlier-k` nearest.
   The `--outlier-neighbors` most outlying images are searched again, alone, for the keys and
   similarities of those nearest (outliers.parquet's `neighbors`, `neighbor_similarity`).

Memory holds the vectors, the keys and a few numbers per image; never an n x n matrix. With
`--backend ray` (`remote.py`) the vectors and keys are held by Ray actors instead, which run the same
`Loader`, `search_range` and `write_lists`; this process keeps the few numbers per image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raeflow.curate.config import DedupSettings, parse_memory, runs_on_ray
from raeflow.curate.gallery import write_gallery
from raeflow.curate.index import Added, new_index, usable_batches
from raeflow.curate.layout import Layout, flat_only
from raeflow.curate.store import Folder, rejected_line, write_rejected
from raeflow.curate.table import EmbeddingTable, VectorBatch, open_table
from raeflow.errors import SourceError
from raeflow.progress import Progress

GROUPS_FILE, KEEP_FILE, OUTLIERS_FILE, GALLERY_FILE = (
    "groups.parquet",
    "keep.parquet",
    "outliers.parquet",
    "duplicates.html",
)


@dataclass
class Loaded:
    """The table in memory: its vectors in `index` (id i is row i of `rows`), what was left out."""

    index: faiss.Index
    layout: Layout
    rows: pa.Table  # key, and source where the table has one
    rejected: list[tuple[str, str, str]]


class UnionFind:
    """Disjoint sets over ids 0..n-1, with numpy parents (memory: one int64 per image)."""

    def __init__(self, size: int) -> None:
        self.parent = np.arange(size, dtype=np.int64)

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]  # path halving
            item = int(parent[item])
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)

    def roots(self) -> np.ndarray:
        """Each id's set, named by its smallest member."""
        parent = self.parent.copy()
        while True:  # pointer jumping: every id ends pointing at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                return parent
            parent = jumped


class Loader:
    """The table's usable, normalised vectors added to an index that keeps them whole, a few batches
    per `step`, so that whoever drives it (this process, or the driver of a Ray actor) shows progress."""

    def __init__(self, table: EmbeddingTable, settings: DedupSettings) -> None:
        memory = parse_memory(settings.max_memory)
        self.table = table
        self.layout = flat_only(table.num_rows, table.dim, memory, settings.exact_below)
        self.index = new_index(self.layout, table.dim, "cosine")
        self.added = Added()
        self.pieces: list[pa.Table] = []
        self.batches: Iterator[VectorBatch] | None = usable_batches(
            table, settings.batch_size, "cosine", set(), self.added
        )

    @property
    def rows_read(self) -> int:
        return int(self.index.ntotal) + len(self.added.rejected)

    def step(self, seconds: float) -> bool:
        """Add batches for about `seconds` (one at least); whether the whole table is in."""
        until = time.monotonic() + seconds
        while self.batches is not None:
            batch = next(self.batches, None)
            if batch is None:
                self.batches = None
                break
            self.index.add(batch.vectors)
            columns: dict[str, Any] = {"key": pa.array(batch.keys, pa.string())}
            if batch.sources is not None:
                columns["source"] = pa.array(batch.sources, pa.string())
            self.pieces.append(pa.table(columns))
            if time.monotonic() >= until:
                break
        return self.batches is None

    def loaded(self) -> Loaded:
        """The whole table, loaded (`SourceError` when no row of it was usable)."""
        if self.index.ntotal == 0:
            raise SourceError(
                f"--data {self.table.uri} holds no usable vector ({len(self.added.rejected):,} rejected)"
            )
        rows, self.pieces = pa.concat_tables(self.pieces).combine_chunks(), []
        return Loaded(self.index, self.layout, rows, self.added.rejected)


def load(table: EmbeddingTable, settings: DedupSettings) -> Loaded:
    """Every usable, normalised vector of `table` in an index that keeps them whole."""
    loader = Loader(table, settings)
    with Progress("load", total=table.num_rows, unit="vectors") as progress:
        done = False
        while not done:
            done = loader.step(0.5)
            progress.advance(loader.rows_read - progress.done)
    return loader.loaded()


def neighbours(loaded: Loaded, first: int, count: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine similarities and ids of the `k` nearest other images of ids first..first+count-1.

    Both `(count, k)`, nearest first; a neighbour the search did not return has id -1, similarity -inf.
    """
    queries = loaded.index.reconstruct_n(first, count)  # (b, D)
    return _nearest_others(loaded.index, queries, np.arange(first, first + count), k)


def neighbours_of(loaded: Loaded, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`neighbours` of the images `ids` (any ids, in any order): both `(len(ids), k)`, nearest first."""
    ids = np.asarray(ids, dtype=np.int64)
    return _nearest_others(loaded.index, loaded.index.reconstruct_batch(ids), ids, k)


def _nearest_others(
    index: faiss.Index, queries: np.ndarray, own: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest of each query vector (the stored vector of id `own[i]`) but itself, re-ranked
    by exact cosine similarity."""
    count = len(own)
    _, found = index.search(queries, k + 1)  # (b, k + 1), usually itself first
    is_self = found == own[:, None]
    is_self[~is_self.any(axis=1), -1] = True  # itself not found: drop the farthest instead
    ids = found[~is_self].reshape(count, k)
    stored = index.reconstruct_batch(np.where(ids < 0, 0, ids).ravel()).reshape(count, k, -1)  # (b, k, D)
    sims = np.einsum("bd,bkd->bk", queries, stored)  # exact, whatever the search computed
    sims[ids < 0] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def search(loaded: Loaded, settings: DedupSettings) -> tuple[np.ndarray, np.ndarray]:
    """Each image's group (`UnionFind.roots`) and outlier score (mean cosine distance to its nearest)."""
    num = int(loaded.index.ntotal)
    sets, scores = UnionFind(num), np.zeros(num, dtype=np.float32)
    step = search_step(settings)
    with Progress("dedup", total=num, unit="images") as progress:
        for first in range(0, num, step):
            count = min(step, num - first)
            pairs, scores[first : first + count] = search_range(loaded, settings, first, count)
            for a, b in pairs.tolist():
                sets.union(a, b)
            progress.advance(count)
    return sets.roots(), scores


def search_step(settings: DedupSettings) -> int:
    """Images searched at a time: (step, k, D) floats are held while re-ranking."""
    return max(1, min(settings.batch_size, 1024))


def search_range(
    loaded: Loaded, settings: DedupSettings, first: int, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """The search of ids first..first+count-1, `search_step` at a time: the pairs (a, b), `(p, 2)`, at
    or above --threshold among each image's --neighbors nearest, and each image's outlier score."""
    num = int(loaded.index.ntotal)
    k = max(1, min(num - 1, max(settings.neighbors, settings.outlier_k)))
    step = search_step(settings)
    pairs, scores = [np.zeros((0, 2), np.int64)], np.zeros(count, dtype=np.float32)
    for start in range(first, first + count, step):
        size = min(step, first + count - start)
        sims, ids = neighbours(loaded, start, size, k) if num > 1 else _alone(size)
        rows, cols = np.nonzero(sims[:, : settings.neighbors] >= settings.threshold)
        pairs.append(np.stack([start + rows, ids[rows, cols]], axis=1).astype(np.int64))
        near = sims[:, : settings.outlier_k]
        finite = np.isfinite(near)
        scores[start - first : start - first + size] = np.where(
            finite.any(axis=1),
            (np.where(finite, 1.0 - near, 0.0).sum(1) / np.maximum(finite.sum(1), 1)),
            1.0,
        )
    return np.concatenate(pairs), scores


def _alone(count: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((count, 1), -np.inf, dtype=np.float32), np.full((count, 1), -1, dtype=np.int64)


def group_table(loaded: Loaded, roots: np.ndarray, batch_size: int) -> pa.Table:
    """Members of every group of two or more: id, group (1 = largest), similarity to its representative,
    keep (true for the representative only), ordered by group, representative first."""
    index = loaded.index
    _, first_of, sizes = np.unique(roots, return_index=True, return_counts=True)
    big = sizes >= 2
    members = np.flatnonzero(big[np.searchsorted(roots[first_of], roots)])  # ids in groups of 2+
    if len(members) == 0:
        return _groups(members, members, np.zeros(0, np.float32), np.zeros(0, bool), loaded)
    compact = np.searchsorted(np.unique(roots[members]), roots[members])  # 0..G-1 per member
    totals = np.zeros((compact.max() + 1, index.d), dtype=np.float64)  # sum of each group's vectors
    for start in range(0, len(members), batch_size):
        chunk = slice(start, start + batch_size)
        np.add.at(totals, compact[chunk], index.reconstruct_batch(members[chunk]))
    score = np.concatenate(
        [
            np.einsum(
                "bd,bd->b",
                index.reconstruct_batch(members[s : s + batch_size]),
                totals[compact[s : s + batch_size]],
            )
            for s in range(0, len(members), batch_size)
        ]
    )  # v . sum(group): the mean similarity to the group, times its size
    keys = loaded.rows.column("key").take(pa.array(members))
    ranked = pa.table({"g": compact, "score": score, "key": keys, "at": np.arange(len(members))}).sort_by(
        [("g", "ascending"), ("score", "descending"), ("key", "ascending")]
    )
    order = ranked.column("at").to_numpy()
    g_sorted = compact[order]
    is_rep = np.ones(len(order), dtype=bool)
    is_rep[1:] = g_sorted[1:] != g_sorted[:-1]
    rep_of_group = members[order[is_rep]]  # (G,) ids, by compact group
    similarity = np.concatenate(
        [
            np.einsum(
                "bd,bd->b",
                index.reconstruct_batch(members[order][s : s + batch_size]),
                index.reconstruct_batch(rep_of_group[g_sorted[s : s + batch_size]]),
            )
            for s in range(0, len(order), batch_size)
        ]
    )
    return _groups(members[order], g_sorted, similarity.astype(np.float32), is_rep, loaded)


def _groups(
    ids: np.ndarray, compact: np.ndarray, similarity: np.ndarray, keep: np.ndarray, loaded: Loaded
) -> pa.Table:
    """groups.parquet's rows: groups numbered from 1 by size (largest first), then representative key."""
    rows = loaded.rows.take(pa.array(ids, pa.int64()))
    sizes = np.bincount(compact) if len(compact) else np.zeros(0, np.int64)
    reps = pa.table({"g": compact[keep], "key": rows.column("key").filter(pa.array(keep))})
    reps = reps.append_column("size", pa.array(sizes[compact[keep]])).sort_by(
        [("size", "descending"), ("key", "ascending")]
    )
    number = np.zeros(len(sizes), dtype=np.int64)
    number[reps.column("g").to_numpy()] = np.arange(1, len(reps) + 1)
    table = pa.table(
        {
            "key": rows.column("key"),
            "group": pa.array(number[compact], pa.int64()),
            "similarity": pa.array(similarity, pa.float32()),
            "keep": pa.array(keep, pa.bool_()),
        }
    )
    if "source" in rows.column_names:
        table = table.append_column("source", rows.column("source"))
    return table.sort_by(
        [("group", "ascending"), ("keep", "descending"), ("similarity", "descending"), ("key", "ascending")]
    )


def outlier_table(loaded: Loaded, scores: np.ndarray, settings: DedupSettings) -> pa.Table:
    """outliers.parquet's rows: every key, its mean cosine distance to nearest, rank (1: farthest),
    source, and for the `--outlier-neighbors` first ranks the keys and similarities of the nearest
    (`outlier_neighbours`; null below them)."""
    table = loaded.rows.select(["key"]).append_column("mean_distance", pa.array(scores, pa.float32()))
    if "source" in loaded.rows.column_names:
        table = table.append_column("source", loaded.rows.column("source"))
    table = table.append_column("id", pa.array(np.arange(len(table), dtype=np.int64)))
    table = table.sort_by([("mean_distance", "descending"), ("key", "ascending")])
    table = table.add_column(2, "rank", pa.array(np.arange(1, len(table) + 1, dtype=np.int64)))
    top = table.column("id").to_numpy()[: settings.outlier_neighbors]
    keys, similarity = outlier_neighbours(loaded, top, settings, len(table))
    table = table.drop_columns(["id"])
    return table.append_column("neighbors", keys).append_column("neighbor_similarity", similarity)


def outlier_neighbours(
    loaded: Loaded, ids: np.ndarray, settings: DedupSettings, num_rows: int
) -> tuple[pa.Array, pa.Array]:
    """outliers.parquet's `neighbors` (list<string>) and `neighbor_similarity` (list<float32>) columns,
    `num_rows` long: the keys and exact cosine similarities of the `--outlier-k` nearest other images
    of each of `ids` (its first rows), nearest first; null for the rows after them.

    Searched again for these ids only, a batch at a time with the k `search` used (so the mean of
    `1 - neighbor_similarity` is the row's `mean_distance`); memory grows with len(ids) * k only.
    """
    num = int(loaded.index.ntotal)
    k = max(1, min(num - 1, max(settings.neighbors, settings.outlier_k)))  # as `search` searched
    step = max(1, min(settings.batch_size, 1024))  # (step, k, D) floats are held while re-ranking
    found_ids, found_sims, lengths = [], [], np.zeros(len(ids), dtype=np.int32)
    for first in range(0, len(ids) if num > 1 else 0, step):
        batch = ids[first : first + step]
        sims, near = neighbours_of(loaded, batch, k)
        sims, near = sims[:, : settings.outlier_k], near[:, : settings.outlier_k]  # (b, outlier_k)
        found = np.isfinite(sims)  # a neighbour the search did not return is left out
        lengths[first : first + len(batch)] = found.sum(axis=1)
        found_ids.append(near[found])
        found_sims.append(sims[found].astype(np.float32))
    offsets = np.zeros(num_rows + 1, dtype=np.int32)
    offsets[1 : len(ids) + 1] = np.cumsum(lengths)
    offsets[len(ids) + 1 :] = offsets[len(ids)]
    shown = np.concatenate(found_ids) if found_ids else np.zeros(0, np.int64)
    missing = pa.array(np.arange(num_rows) >= len(ids))  # null: not among the first ranks
    keys = loaded.rows.column("key").take(pa.array(shown, pa.int64())).combine_chunks()
    similarity = pa.array(np.concatenate(found_sims) if found_sims else np.zeros(0, np.float32), pa.float32())
    return (
        pa.ListArray.from_arrays(pa.array(offsets), keys.cast(pa.string()), mask=missing),
        pa.ListArray.from_arrays(pa.array(offsets), similarity, mask=missing),
    )


def keep_table(loaded: Loaded, groups: pa.Table) -> pa.Table:
    """keep.parquet's rows: every key but the non-representative members of a group, in table order."""
    removed = groups.filter(pc.invert(groups.column("keep"))).column("key")
    return loaded.rows.filter(pc.invert(pc.is_in(loaded.rows.column("key"), value_set=removed)))


@dataclass
class Lists:
    """What `write_lists` wrote, for duplicates.html and the summary."""

    groups: pa.Table
    num_images: int
    num_groups: int
    num_removed: int
    top_outlier: tuple[str, float] | None
    rejected_line: str | None


def write_lists(
    loaded: Loaded, roots: np.ndarray, scores: np.ndarray, settings: DedupSettings, folder: Folder
) -> Lists:
    """groups.parquet, keep.parquet, outliers.parquet and the rejected rows, written to `folder`."""
    groups = group_table(loaded, roots, settings.batch_size)
    keep = keep_table(loaded, groups)
    outliers = outlier_table(loaded, scores, settings)
    folder.write_table(GROUPS_FILE, groups)
    folder.write_table(KEEP_FILE, keep)
    folder.write_table(OUTLIERS_FILE, outliers)
    write_rejected(folder, loaded.rejected)
    num_groups = int(pc.sum(groups.column("keep")).as_py() or 0)
    top = outliers.slice(0, 1).select(["key", "mean_distance"]).to_pylist()
    num = int(loaded.index.ntotal)
    return Lists(
        groups=groups,
        num_images=num,
        num_groups=num_groups,
        num_removed=len(groups) - num_groups,
        top_outlier=(top[0]["key"], top[0]["mean_distance"]) if top and num > 1 else None,
        rejected_line=rejected_line(loaded.rejected, folder),
    )


@dataclass
class DedupResult:
    """What `raeflow dedup` found and wrote, for the summary."""

    out: str
    settings: DedupSettings
    layout: Layout
    num_images: int
    num_groups: int
    num_removed: int
    top_outlier: tuple[str, float] | None
    rejected_line: str | None
    ray_actors: int = 0  # the search actors on Ray (the builder among them); 0: in this process

    @classmethod
    def of(cls, lists: Lists, settings: DedupSettings, layout: Layout, ray_actors: int = 0) -> DedupResult:
        return cls(
            out=settings.out,
            settings=settings,
            layout=layout,
            num_images=lists.num_images,
            num_groups=lists.num_groups,
            num_removed=lists.num_removed,
            top_outlier=lists.top_outlier,
            rejected_line=lists.rejected_line,
            ray_actors=ray_actors,
        )

    def lines(self) -> list[str]:
        """The one-screen summary."""
        search = (
            "exact"
            if self.layout.kind == "flat"
            else f"approximate ({self.layout.factory}), exact cosine re-rank"
        )
        nearest = min(self.settings.outlier_k, self.num_images - 1)
        lines = [
            f"dedup {self.out}: {self.num_images:,} images, {self.num_groups:,} groups of near-duplicates "
            f"(cosine >= {self.settings.threshold:g}), {self.num_removed:,} images removed, "
            f"{self.num_images - self.num_removed:,} kept",
            f"search: {search}, {self.settings.neighbors} neighbours per image"
            + (
                f", on Ray ({self.ray_actors} actor{'s' if self.ray_actors > 1 else ''})"
                if self.ray_actors
                else ""
            ),
        ]
        if self.top_outlier:
            key, distance = self.top_outlier
            lines.append(
                f"outliers: farthest {key} (mean cosine distance {distance:.3f} to its "
                f"{nearest} nearest); {OUTLIERS_FILE} ranks every image"
            )
        if self.rejected_line:
            lines.append(self.rejected_line)
        lines.append(f"wrote: {GROUPS_FILE}, {KEEP_FILE}, {OUTLIERS_FILE}, {GALLERY_FILE}")
        return lines


def run_dedup(settings: DedupSettings) -> DedupResult:
    """Group the near-duplicates of `settings.data`, rank its outliers, write the lists to `settings.out`;
    in this process, or on Ray (`--backend`, `remote.run_dedup_on_ray`)."""
    settings.validate()
    table = open_table(settings.data)
    if runs_on_ray(settings.backend, settings.address, table.num_rows, settings.exact_below):
        from raeflow.curate.remote import run_dedup_on_ray

        return run_dedup_on_ray(settings, table)
    folder = Folder(settings.out)
    loaded = load(table, settings)
    roots, scores = search(loaded, settings)
    lists = write_lists(loaded, roots, scores, settings, folder)
    folder.put(GALLERY_FILE, write_gallery(lists.groups, settings, table.uri).encode())
    return DedupResult.of(lists, settings, loaded.layout)
