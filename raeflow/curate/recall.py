"""Exact k-nearest neighbours of a few queries over a stream of vectors, and recall@k against them.

The stream is read chunk by chunk and only the best `k` per query are kept, so measuring the recall
of an index of any size holds `queries x (k + chunk)` scores at a time, never the whole table.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def exact_top_k(
    queries: np.ndarray, chunks: Iterable[tuple[int, np.ndarray]], k: int, metric: str
) -> np.ndarray:
    """Ids of the `k` exact nearest vectors of each query, `(q, k)`; `chunks` yields (first id, vectors)."""
    num_queries = len(queries)
    best_ids = np.full((num_queries, 0), -1, dtype=np.int64)
    best_scores = np.empty((num_queries, 0), dtype=np.float32)
    for first, vectors in chunks:
        scores = _scores(queries, vectors, metric)  # (q, chunk): larger is nearer
        ids = np.broadcast_to(np.arange(first, first + len(vectors), dtype=np.int64), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, ids], axis=1)
        if best_scores.shape[1] > k:
            keep = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep, axis=1)
            best_ids = np.take_along_axis(best_ids, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)


def _scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":  # minus the squared distance, so that larger is nearer as for cosine
        return -(
            (queries**2).sum(1)[:, None] - 2 * queries @ vectors.T + (vectors**2).sum(1)[None, :]
        ).astype(np.float32)
    return (queries @ vectors.T).astype(np.float32)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """The mean share of each query's exact neighbours that the index found, `(q, k)` id arrays."""
    if len(exact) == 0:
        return 1.0
    hits = [
        len(set(f.tolist()) & set(e.tolist()) - {-1}) / max(1, (e >= 0).sum())
        for f, e in zip(found, exact, strict=True)
    ]
    return float(np.mean(hits))
