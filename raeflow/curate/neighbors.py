"""`raeflow neighbors --index IDX --key K`: the images most like one the index holds.

    raeflow neighbors --index emb-index/ --key photos/0042 --k 10 --out near-0042.parquet

The image's own vector is read back from the index (decoded from its codes for a compressed one),
searched, and itself left out of the answer. Searching by a new image (`--image --model`) and a
thumbnail page (`--html`) are not built yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow.curate.config import NeighborSettings
from raeflow.curate.index import INDEX_FILE, KEYS_FILE, META_FILE, set_search_params
from raeflow.curate.store import Folder
from raeflow.data.sources.location import filesystem
from raeflow.errors import ConfigError, SourceError


@dataclass
class NeighborResult:
    """The neighbours found, for the printed table."""

    key: str
    metric: str
    rows: pa.Table  # rank, key, similarity (cosine) or distance (l2), source where the index has one
    out: str | None

    def lines(self) -> list[str]:
        """The table the user reads."""
        score = "similarity" if self.metric == "cosine" else "distance"
        lines = [f"nearest to {self.key} ({self.metric}):", f"{'rank':>4}  {score:>10}  key"]
        for row in self.rows.to_pylist():
            source = f"  {row['source']}" if row.get("source") else ""
            lines.append(f"{row['rank']:>4}  {row[score]:>10.4f}  {row['key']}{source}")
        if self.out:
            lines.append(f"wrote: {self.out}")
        return lines


def run_neighbors(settings: NeighborSettings) -> NeighborResult:
    """The `settings.k` nearest images of `settings.key` in the index `settings.index`."""
    settings.validate()
    folder = Folder(settings.index)
    if not folder.exists(META_FILE):
        raise ConfigError(
            f"--index {settings.index} holds no index (no {META_FILE}); build one with `raeflow index`"
        )
    meta = folder.get_json(META_FILE)
    keys = folder.read_table(KEYS_FILE)
    position = pc.index(keys.column("key"), settings.key).as_py()
    if position < 0:
        raise SourceError(f"--key {settings.key} is not in the index {settings.index} ({len(keys):,} keys)")
    index = faiss.deserialize_index(np.frombuffer(folder.get(INDEX_FILE), dtype=np.uint8))
    set_search_params(index, meta["kind"], meta.get("nprobe", 0))
    if meta["kind"] == "ivfpq":
        faiss.extract_index_ivf(index).make_direct_map()  # reconstruct by id
    scores, ids = index.search(index.reconstruct(position)[None, :], min(settings.k + 1, index.ntotal))
    found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0 and i != position]
    found = found[: settings.k]
    rows = _rows(keys, found, meta["metric"])
    if settings.out:
        fs, path = filesystem(settings.out)
        with fs.open(path, "wb") as handle:
            pq.write_table(rows, handle)
    return NeighborResult(settings.key, meta["metric"], rows, settings.out)


def _rows(keys: pa.Table, found: list[tuple[float, int]], metric: str) -> pa.Table:
    picked = keys.take(pa.array([i for _, i in found], pa.int64()))
    columns: dict[str, Any] = {
        "rank": pa.array(range(1, len(found) + 1), pa.int64()),
        "key": picked.column("key"),
    }
    if metric == "cosine":
        columns["similarity"] = pa.array([s for s, _ in found], pa.float32())
    else:  # faiss gives squared Euclidean distances
        columns["distance"] = pa.array([math.sqrt(max(s, 0.0)) for s, _ in found], pa.float32())
    if "source" in picked.column_names:
        columns["source"] = picked.column("source")
    return pa.table(columns)
