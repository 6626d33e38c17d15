"""`raeflow neighbors`: the images most like one the index holds (`--key`), or like a new image
(`--image FILE --model BUNDLE`), printed, written as Parquet and shown as thumbnails.

    raeflow neighbors --index emb-index/ --key photos/0042 --k 10 --out near-0042.parquet --html
    raeflow neighbors --index emb-index/ --image new.jpg --model runs/photos/model

By key, the image's own vector is read back from the index (decoded from its codes for a compressed
one), searched, and itself left out of the answer. By image, the image is embedded as `raeflow
embed` would with the bundle that made the index (`query.py`) and nothing is left out: an image the
index holds comes back first. `--html` writes a page of the query and its neighbours as thumbnails
read from their sources (`thumbnails.py`) beside the Parquet file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow.curate.config import NeighborSettings
from raeflow.curate.gallery import neighbors_page
from raeflow.curate.index import INDEX_FILE, KEYS_FILE, META_FILE, set_search_params
from raeflow.curate.store import Folder
from raeflow.data.sources.location import filesystem
from raeflow.errors import ConfigError, SourceError


@dataclass
class NeighborResult:
    """The neighbours found, for the printed table."""

    query: str  # the key, or the image file
    metric: str
    rows: pa.Table  # rank, key, similarity (cosine) or distance (l2), source where the index has one
    out: str | None
    page: str | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The table the user reads."""
        score = "similarity" if self.metric == "cosine" else "distance"
        lines = [*self.notes, f"nearest to {self.query} ({self.metric}):", f"{'rank':>4}  {score:>10}  key"]
        for row in self.rows.to_pylist():
            source = f"  {row['source']}" if row.get("source") else ""
            lines.append(f"{row['rank']:>4}  {row[score]:>10.4f}  {row['key']}{source}")
        written = [path for path in (self.out, self.page) if path]
        if written:
            lines.append(f"wrote: {', '.join(written)}")
        return lines


@dataclass
class OpenIndex:
    """An index folder read back: what index.json says, the key of each vector id, the faiss index."""

    meta: dict[str, Any]
    keys: pa.Table  # key (and source) of each vector id
    index: faiss.Index


def open_index(uri: str) -> OpenIndex:
    """The index `raeflow index` wrote to `uri`, ready to search; a one-line error when there is none."""
    folder = Folder(uri)
    if not folder.exists(META_FILE):
        raise ConfigError(f"--index {uri} holds no index (no {META_FILE}); build one with `raeflow index`")
    meta = folder.get_json(META_FILE)
    keys = folder.read_table(KEYS_FILE)
    index = faiss.deserialize_index(np.frombuffer(folder.get(INDEX_FILE), dtype=np.uint8))
    set_search_params(index, meta["kind"], meta.get("nprobe", 0))
    return OpenIndex(meta, keys, index)


def run_neighbors(settings: NeighborSettings) -> NeighborResult:
    """The `settings.k` nearest images of `settings.key` or `settings.image` in the index `settings.index`."""
    settings.validate()
    opened = open_index(settings.index)
    meta, keys, index = opened.meta, opened.keys, opened.index
    notes: list[str] = []
    query_data: bytes | None = None
    if settings.key is not None:
        position = pc.index(keys.column("key"), settings.key).as_py()
        if position < 0:
            raise SourceError(
                f"--key {settings.key} is not in the index {settings.index} ({len(keys):,} keys)"
            )
        if meta["kind"] == "ivfpq":
            faiss.extract_index_ivf(index).make_direct_map()  # reconstruct by id
        query = np.asarray(index.reconstruct(position), dtype=np.float32)  # (D,)
        leave_out = position
    else:
        from raeflow.curate.query import embed_query

        assert settings.image is not None and settings.model is not None  # validate() saw to it
        query, query_data = embed_query(settings.image, settings.model, meta, settings.index)
        leave_out = -1
        if not meta.get("model"):
            notes.append(
                f"note: {settings.index} does not record its model; only the vector length was checked"
            )
    scores, ids = index.search(query[None, :], min(settings.k + 1, index.ntotal))  # (1, k + 1)
    found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0 and i != leave_out]
    rows = _rows(keys, found[: settings.k], meta["metric"])
    result = NeighborResult(
        settings.key or str(settings.image), meta["metric"], rows, settings.out, notes=notes
    )
    if settings.out:
        with _open_out(settings.out) as handle:
            pq.write_table(rows, handle)
    if settings.html and settings.out:
        result.page = _write_page(settings, opened, rows, query_data)
    return result


def _open_out(uri: str) -> Any:
    """A file handle to write `uri` (its folder made when missing); a folder there is a one-line error."""
    fs, path = filesystem(uri)
    if fs.isdir(path):
        raise ConfigError(f"--out {uri} is a folder; --out names the Parquet file to write (near.parquet)")
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    return fs.open(path, "wb")


def page_path(out: str) -> str:
    """Where `--html` writes the page of `--out FILE.parquet`: FILE.html beside it."""
    return (out[: -len(".parquet")] if out.lower().endswith(".parquet") else out) + ".html"


def _write_page(
    settings: NeighborSettings, opened: OpenIndex, rows: pa.Table, query_data: bytes | None
) -> str:
    query_source: str | None = None
    if settings.key is not None and "source" in opened.keys.column_names:
        keys = opened.keys
        query_source = keys.column("source")[pc.index(keys.column("key"), settings.key).as_py()].as_py()
    page = neighbors_page(
        rows,
        query=settings.key or str(settings.image),
        by_key=settings.key is not None,
        query_source=query_source,
        query_data=query_data,
        index=settings.index,
        metric=opened.meta["metric"],
    )
    target = page_path(str(settings.out))
    with _open_out(target) as handle:
        handle.write(page.encode())
    return target


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
