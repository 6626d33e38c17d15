"""Which faiss index a table gets, from its size, its dimension and the memory allowed.

Below `exact_below` vectors: `Flat`, exact search (recall 1 by construction). Above, while every
vector still fits in the memory allowed: `HNSW32,Flat`, a graph over the full vectors (distances stay
exact, only some neighbours can be missed). Above that: `IVF<nlist>,PQ<m>`, vectors compressed to `m`
bytes in `nlist` clusters, `m` the largest that fits. The same rule autofaiss follows, written down
here so the choice is visible in index.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from raeflow.errors import ConfigError

HNSW_M = 32
"""Links per vector of the HNSW graph."""
HNSW_EF_SEARCH = 128
"""Candidates an HNSW search explores (recall against speed)."""
TRAIN_PER_CLUSTER = 39
"""k-means wants at least this many training vectors per cluster (faiss warns below it)."""


@dataclass(frozen=True)
class Layout:
    """One index choice: its faiss factory string, its kind and the search settings it needs."""

    factory: str
    kind: str  # flat | hnsw | ivfpq
    num_bytes: int  # the index's estimated size for the table
    train_size: int = 0  # vectors the quantizer is trained on (0: no training)
    nprobe: int = 0  # IVF clusters visited per search

    @property
    def stores_vectors(self) -> bool:
        """Whether the full vectors can be read back from the index (exact re-rank, recall after append)."""
        return self.kind in ("flat", "hnsw")


def choose_layout(num_vectors: int, dim: int, max_memory: int, exact_below: int) -> Layout:
    """The index for `num_vectors` vectors of `dim` floats within `max_memory` bytes (see module)."""
    flat = num_vectors * dim * 4
    if num_vectors < exact_below and flat <= max_memory:
        return Layout("Flat", "flat", flat)
    hnsw = num_vectors * (dim * 4 + HNSW_M * 2 * 4 + 16)  # vectors + both levels' links, roughly
    if hnsw <= max_memory:
        return Layout(f"HNSW{HNSW_M},Flat", "hnsw", hnsw)
    return _ivfpq(num_vectors, dim, max_memory)


def _ivfpq(num_vectors: int, dim: int, max_memory: int) -> Layout:
    nlist = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(num_vectors))))
    nlist = max(1, min(nlist, num_vectors // TRAIN_PER_CLUSTER))
    # 256 codes per sub-vector need 256 * 39 training vectors; a smaller table gets 16 (4 bits).
    nbits = 8 if num_vectors >= 256 * TRAIN_PER_CLUSTER else 4
    for m in sorted((m for m in range(1, min(dim, 64) + 1) if dim % m == 0), reverse=True):
        size = num_vectors * (math.ceil(m * nbits / 8) + 8) + nlist * dim * 4  # codes + ids + centroids
        if size <= max_memory:
            train = min(num_vectors, max(TRAIN_PER_CLUSTER * nlist, TRAIN_PER_CLUSTER << nbits), 200_000)
            factory = f"IVF{nlist},PQ{m}" + ("" if nbits == 8 else f"x{nbits}")
            return Layout(factory, "ivfpq", size, train_size=train, nprobe=min(nlist, 32))
    need = num_vectors * 9 + nlist * dim * 4
    raise ConfigError(
        f"{num_vectors:,} vectors need at least {need / 2**20:,.0f} MiB even compressed; raise --max-memory"
    )


def flat_only(num_vectors: int, dim: int, max_memory: int, exact_below: int) -> Layout:
    """`choose_layout` limited to indexes that keep the full vectors (dedup re-ranks with them)."""
    layout = choose_layout(num_vectors, dim, max_memory, exact_below)
    if not layout.stores_vectors:
        need = num_vectors * (dim * 4 + HNSW_M * 8 + 16)
        raise ConfigError(
            f"dedup keeps all {num_vectors:,} vectors in memory ({need / 2**30:.1f} GiB with its "
            f"search graph); raise --max-memory (now {max_memory / 2**30:.1f} GiB)"
        )
    return layout
