"""Embedding tables for the curation tests, in the schema `raeflow embed` writes, with planted structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raeflow.batch.embed import embedding_schema

FINGERPRINT = "a" * 64


def write_part(
    folder: Path, name: str, keys: list[str], vectors: np.ndarray, *, fingerprint: str = FINGERPRINT
) -> Path:
    """One `part-*.parquet` of an embedding table, exactly as `raeflow embed` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    dim = vectors.shape[1]
    schema = embedding_schema(dim, with_labels=False, fingerprint=fingerprint)
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    table = pa.table(
        {
            "key": keys,
            "source": [f"s3://photos/{key}.jpg" for key in keys],
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        },
        schema=schema,
    )
    path = folder / name
    pq.write_table(table, path)
    return path


def clustered(num: int, dim: int, seed: int) -> np.ndarray:
    """`num` vectors around 5 centres: neighbours at cosine ~0.7, none near-duplicates of another."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return (centres[rng.integers(0, 5, num)] + 0.12 * rng.normal(size=(num, dim))).astype(np.float32)


def planted(folder: Path, *, dim: int = 32, num_plain: int = 300) -> dict[str, list[str]]:
    """A two-part table: clustered vectors, two planted near-duplicate groups, one far outlier.

    Returns the planted keys: `big` (3 noisy copies and their original, last), `pair` (a copy and its
    original),
    `twins` (two identical vectors: a tie, so the smallest key is kept), `outlier`.
    """
    rng = np.random.default_rng(7)
    base = clustered(num_plain, dim, seed=3)
    keys = [f"plain/{i:04d}" for i in range(num_plain)]
    vectors = [base]

    def copies(name: str, source: np.ndarray, count: int, noise: float) -> list[str]:
        names = [f"{name}/{i}" for i in range(count + 1)]
        # The original last: it is the member closest to all the others, yet not the smallest key.
        rows = [source + noise * rng.normal(size=dim) for _ in range(count)] + [source]
        keys.extend(names)
        vectors.append(np.array(rows, dtype=np.float32))
        return names

    big = copies("big", base[0] * 1.0 + 0.3 * rng.normal(size=dim), 3, 0.004)
    pair = copies("pair", base[1] + 0.3 * rng.normal(size=dim), 1, 0.004)
    twins = copies("twins", base[2] + 0.3 * rng.normal(size=dim), 1, 0.0)
    far = rng.normal(size=dim)
    far -= 50 * base.mean(0)  # away from every centre
    outlier = copies("outlier", far, 0, 0.0)
    table = np.concatenate(vectors)
    half = len(keys) // 2
    write_part(folder, "part-00000-000000.parquet", keys[:half], table[:half])
    write_part(folder, "part-00001-000000.parquet", keys[half:], table[half:])
    return {"big": big, "pair": pair, "twins": twins, "outlier": outlier}


def write_raw(folder: Path, name: str, table: pa.Table) -> Path:
    """Any Parquet file (for tables that are not embedding tables)."""
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return folder / name
