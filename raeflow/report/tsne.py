"""2-D maps of images with t-SNE (scikit-learn), on a bounded, deterministic sample.

The report draws two maps of the same sampled images side by side, as the MNIST write-up does:
one of the original pixels, one of the model's embeddings (`draw_maps`), coloured by label where
the data has labels, each saying how often a point's nearest neighbour shares its label.

t-SNE costs grow quadratically-ish with the number of points, so the report maps at most
`MAX_POINTS` embeddings (the job hands over a key-hash sample of that size). Embeddings wider
than `PCA_DIMS` are first reduced with PCA, the usual practice that keeps t-SNE fast and stable.
The seed is fixed, so the same embeddings give the same map.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_POINTS = 2000
"""Most points a map shows."""
MIN_POINTS = 5
"""Fewer points than this make no meaningful map."""
PCA_DIMS = 50
"""Embeddings wider than this are reduced to this many principal components first."""
MAP_SIDE = 32
"""Side of the square that pixel thumbnails of different sizes are resized to before mapping."""


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


def neighbour_agreement(points: np.ndarray, labels: np.ndarray) -> float:
    """Share of points `(N, 2)` whose nearest other point on the map has the same label."""
    distances = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)  # (N, N)
    np.fill_diagonal(distances, np.inf)
    return float(np.mean(labels[distances.argmin(axis=1)] == labels))


def pixel_vectors(pngs: list[bytes]) -> np.ndarray:
    """The small map thumbnails (PNG bytes) as float vectors `(N, H*W*C)` in [0, 1].

    Thumbnails of one size (fixed-size models) are used as they are; photos of different sizes or
    shapes (fully convolutional models) are first resized to one `MAP_SIDE` x `MAP_SIDE` square,
    so every image has the same number of pixel values.
    """
    from raeflow.report.figures import decode_png

    arrays = [decode_png(data) for data in pngs]  # (h, w) or (h, w, 3) uint8
    if len({a.shape for a in arrays}) > 1:
        arrays = [_square(a) for a in arrays]
    return np.stack([a.astype(np.float32).reshape(-1) / 255.0 for a in arrays])  # (N, P)


def _square(pixels: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((MAP_SIDE, MAP_SIDE), Image.Resampling.BOX))


def draw_maps(
    rows: list[dict[str, Any]],
    *,
    has_labels: bool,
    label_names: list[str] | None = None,
    seed: int = 0,
) -> tuple[bytes | None, str | None]:
    """The report's t-SNE figure and a note: original pixels and embeddings side by side.

    `rows` are the sampled images, each with `embedding` (list of floats), `label` (int or None)
    and `map_png` (a small thumbnail of the original image, or None in parts written before
    thumbnails existed: then only the embeddings are mapped). Both maps show the same images; where
    every one has a label the points are coloured by it and each panel says how often a point's
    nearest neighbour on the map shares its label (how well that space separates the classes).
    """
    from raeflow.report.figures import embedding_maps

    if len(rows) < MIN_POINTS:
        return None, f"Only {len(rows)} images could be mapped; t-SNE needs at least {MIN_POINTS}."
    embeddings = np.asarray([row["embedding"] for row in rows], dtype=np.float32)  # (N, D)
    labels = [row.get("label") for row in rows]
    labelled = has_labels and all(label is not None for label in labels)
    label_array = np.asarray(labels, dtype=np.int64) if labelled else None
    spaces: list[tuple[np.ndarray, str]] = []
    pngs = [row.get("map_png") for row in rows]
    if all(data is not None for data in pngs):
        pixels = pixel_vectors(pngs)  # type: ignore[arg-type]
        spaces.append((pixels, f"original pixels ({pixels.shape[1]:,} values)"))
    spaces.append((embeddings, f"embeddings ({embeddings.shape[1]:,} values)"))
    panels = []
    for vectors, name in spaces:
        points = embed_2d(vectors, seed=seed, max_points=len(rows))  # (N, 2)
        if label_array is not None:
            share = neighbour_agreement(points, label_array)
            name = f"{name}\nnearest neighbour has the same label: {share:.0%}"
        panels.append((points, name))
    title = f"t-SNE of the same {len(rows):,} images" + (", coloured by label" if labelled else "")
    figure = embedding_maps(panels, label_array, title, label_names)
    notes = []
    if len(spaces) == 1:
        notes.append("Only the embeddings are mapped: this report's parts carry no pixel thumbnails.")
    if not labelled:
        notes.append(
            "Some mapped images have no label, so the maps are not coloured."
            if has_labels
            else "The source has no labels, so the maps are not coloured."
        )
    return figure, " ".join(notes) or None
