"""A 2-D map of image embeddings with t-SNE (scikit-learn), on a bounded, deterministic sample.

t-SNE costs grow quadratically-ish with the number of points, so the report maps at most
`MAX_POINTS` embeddings (the job hands over a key-hash sample of that size). Embeddings wider
than `PCA_DIMS` are first reduced with PCA, the usual practice that keeps t-SNE fast and stable.
The seed is fixed, so the same embeddings give the same map.
"""

from __future__ import annotations

import numpy as np

MAX_POINTS = 2000
"""Most points a map shows."""
MIN_POINTS = 5
"""Fewer points than this make no meaningful map."""
PCA_DIMS = 50
"""Embeddings wider than this are reduced to this many principal components first."""


def embed_2d(embeddings: np.ndarray, *, seed: int = 0, max_points: int = MAX_POINTS) -> np.ndarray:
    """t-SNE coordinates `(N, 2)` of embeddings `(N, D)`; N must be within `MIN_POINTS..max_points`."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    points = np.asarray(embeddings, dtype=np.float32)
    if points.ndim != 2 or not MIN_POINTS <= len(points) <= max_points:
        raise ValueError(f"t-SNE takes {MIN_POINTS}..{max_points} embeddings (N, D), got {points.shape}")
    if points.shape[1] > PCA_DIMS and len(points) > PCA_DIMS:
        points = PCA(n_components=PCA_DIMS, random_state=seed).fit_transform(points)  # (N, 50)
    # Perplexity must stay below the number of points; 30 is the usual value for larger samples.
    perplexity = float(min(30.0, (len(points) - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=1000)
    return tsne.fit_transform(points).astype(np.float32)  # (N, 2)
