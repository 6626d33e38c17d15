"""`raeflow report --neighbors DIR`: a `raeflow dedup` folder's outlier scores beside the metrics.

    raeflow dedup --data emb/ --out dedup/
    raeflow report --data photos/ --model runs/ae/model --out report/ --neighbors dedup/

`DIR/outliers.parquet` (written by `raeflow dedup`) holds every key of an embedding table with
`mean_distance` (mean cosine distance to its nearest) and `rank` (1 = farthest). The report:

1. checks the folder before Ray starts (`check_outliers`: there, holding a readable
   outliers.parquet) and, before the job, that some of the source's keys are in it (`plan_outliers`:
   a sample of keys from the first and last shard; none found means another table's outliers);
2. gives the predictor actors `OutlierCandidates`: the 63-bit key hashes and ranks of the
   `MAX_CANDIDATES` highest-ranked keys (16 bytes each), so each actor keeps a running selection of
   its most outlying images and attaches thumbnails to them only, as it does for the worst-k;
3. joins, on the driver while `metrics.parquet` is assembled part by part, every row with its
   `outlier_distance` and `outlier_rank` (`OutlierTable`: the table's keys, hashes and two numbers
   per key; no images), and keeps a bounded key-hash sample of (distance, MSE) for the Spearman rank
   correlation between outlier score and reconstruction error (`Relation`);
4. reads, for the top outliers shown, their nearest images from the table's `neighbors` and
   `neighbor_similarity` columns and the sources of those images (`read_neighbours`: two passes that
   keep the few rows asked for), so the page shows them as thumbnails read from their sources.

Ranks are dedup's, over its whole table: a report over part of that table shows the gaps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raeflow.curate.thumbnails import Item, Thumbnail, read_thumbnails
from raeflow.data.sources.base import Source
from raeflow.data.sources.location import filesystem
from raeflow.errors import ConfigError
from raeflow.report.samples import key_hash

OUTLIERS_FILE = "outliers.parquet"
"""The file `raeflow dedup` writes the outlier scores to."""
REQUIRED = {"key": "string", "mean_distance": "floating", "rank": "integer"}
"""Columns the report reads from it, by kind."""
DISTANCE, RANK = "outlier_distance", "outlier_rank"
"""The columns the join adds to metrics.parquet."""
MAX_CANDIDATES = 1_000_000
"""Most of the table's highest-ranked keys the actors look up (16 bytes each per actor); the top
outliers shown are exact whenever the table holds fewer keys, or enough of the report's images lie
within them."""
SPEARMAN_SAMPLE = 200_000
"""Most joined images the rank correlation is computed over (a key-hash sample above that)."""
PROBE_ROWS = 64
"""Keys read from the start of the first and of the last shard to check the tables overlap."""
NEIGHBOURS_SHOWN = 5
"""Nearest images shown beside each top outlier (dedup lists --outlier-k of them)."""
NEIGHBOUR_COLUMNS = ("neighbors", "neighbor_similarity")
"""outliers.parquet's list columns of each top image's nearest keys and their cosine similarities
(a table from a dedup that did not list them lacks them)."""
NEIGHBOUR_THUMBNAIL_SIDE = 96
"""Longest side of the neighbours' thumbnails on the page, in pixels."""
_READ_ROWS = 65_536


def _open(uri: str) -> tuple[Any, str]:
    """The filesystem and path of `uri`/outliers.parquet."""
    fs, root = filesystem(uri)
    return fs, f"{root}/{OUTLIERS_FILE}"


def check_outliers(uri: str) -> int:
    """Raise `ConfigError` in one line unless `uri` is a folder holding a usable outliers.parquet;
    return its number of rows. Reads the Parquet footer only."""
    fs, path = _open(uri)
    folder = path.rsplit("/", 1)[0]
    if not fs.exists(folder):
        raise ConfigError(f"--neighbors {uri}: no such folder; give the --out folder of `raeflow dedup`")
    if fs.isfile(folder):
        raise ConfigError(f"--neighbors {uri} is a file; give the folder `raeflow dedup` wrote it in")
    if not fs.exists(path):
        raise ConfigError(
            f"--neighbors {uri} holds no {OUTLIERS_FILE}; give the --out folder of `raeflow dedup` "
            "(it writes groups.parquet, keep.parquet and outliers.parquet)"
        )
    try:
        with fs.open(path, "rb") as handle:
            meta = pq.ParquetFile(handle)
            schema, rows = meta.schema_arrow, meta.metadata.num_rows
    except (OSError, pa.ArrowInvalid) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--neighbors {uri}: {OUTLIERS_FILE} is not readable Parquet ({first})") from None
    kinds = {"string": pa.types.is_string, "floating": pa.types.is_floating, "integer": pa.types.is_integer}
    wrong = [
        name
        for name, kind in REQUIRED.items()
        if name not in schema.names or not kinds[kind](schema.field(name).type)
    ]
    if wrong:
        raise ConfigError(
            f"--neighbors {uri}: {OUTLIERS_FILE} lacks {', '.join(wrong)} (needs key, mean_distance, rank as "
            f"`raeflow dedup` writes them; it has {', '.join(schema.names)})"
        )
    if rows == 0:
        raise ConfigError(f"--neighbors {uri}: {OUTLIERS_FILE} holds no rows")
    return int(rows)


def _batches(uri: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    fs, path = _open(uri)
    with fs.open(path, "rb") as handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=_READ_ROWS, columns=columns)


def hashes_of(keys: list[str]) -> np.ndarray:
    """`key_hash` of each key, `(N,)` int64."""
    return np.fromiter((key_hash(k) for k in keys), dtype=np.int64, count=len(keys))


@dataclass
class OutlierCandidates:
    """The key hashes (sorted) and dedup ranks of the table's highest-ranked keys: what each
    predictor actor looks its rows up in. Plain arrays, pickled to the actors."""

    hashes: np.ndarray
    """`(M,)` int64, sorted."""
    ranks: np.ndarray
    """`(M,)` int64, the rank of each hash."""
    table_rows: int = 0
    """Rows of outliers.parquet (more than M when it holds over `MAX_CANDIDATES` keys)."""

    def ranks_of(self, hashes: np.ndarray) -> np.ndarray:
        """The rank of each hash, -1 where it is not a candidate."""
        if len(self.hashes) == 0:
            return np.full(len(hashes), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        return np.where(self.hashes[at] == hashes, self.ranks[at], -1)


def probe_keys(source: Source, limit: int | None) -> list[str]:
    """Keys from the start of the source's first shard and (without --limit) of its last."""
    shards = source.list_shards()
    picked = shards[:1] if limit is not None else [*shards[:1], *shards[1:][-1:]]
    keys: list[str] = []
    for shard in picked:
        for table in source.read_shard(shard, batch_rows=PROBE_ROWS):
            keys += table.column("key").to_pylist()[: min(PROBE_ROWS, limit or PROBE_ROWS)]
            break
    return keys


def plan_outliers(uri: str, source: Source, limit: int | None) -> OutlierCandidates:
    """The actors' candidates, after refusing in one line a table none of whose keys is among a
    sample of the source's keys (dedup of another embedding table)."""
    sample = probe_keys(source, limit)
    wanted = pa.array(sample, pa.string())
    found, rows = 0, 0
    hashes, ranks = [], []
    for batch in _batches(uri, ["key", "rank"]):
        rows += batch.num_rows
        found += int(pc.sum(pc.is_in(batch.column("key"), value_set=wanted)).as_py() or 0)
        top = batch.filter(pc.less_equal(batch.column("rank"), MAX_CANDIDATES))
        hashes.append(hashes_of(top.column("key").to_pylist()))
        ranks.append(top.column("rank").to_numpy(zero_copy_only=False).astype(np.int64))
    if sample and not found:
        first = next(_batches(uri, ["key"])).column("key")[0].as_py()
        raise ConfigError(
            f"--neighbors {uri}: none of {len(sample)} keys read from --data (e.g. {sample[0]!r}) is in "
            f"its {OUTLIERS_FILE} ({rows:,} keys, e.g. {first!r}): it was written for another table; "
            "run `raeflow embed` and `raeflow dedup` on this data"
        )
    all_hashes, all_ranks = np.concatenate(hashes), np.concatenate(ranks)
    order = np.argsort(all_hashes, kind="stable")
    return OutlierCandidates(all_hashes[order], all_ranks[order], rows)


@dataclass
class OutlierTable:
    """Every key of outliers.parquet with its distance and rank, looked up by key hash (the driver's
    join; memory: the keys and about 28 bytes per key, never an image)."""

    keys: pa.ChunkedArray
    distance: np.ndarray
    rank: np.ndarray
    hashes: np.ndarray
    order: np.ndarray

    @classmethod
    def read(cls, uri: str) -> OutlierTable:
        """Stream outliers.parquet's key, mean_distance and rank columns into a lookup."""
        keys, distance, rank, hashes = [], [], [], []
        for batch in _batches(uri, ["key", "mean_distance", "rank"]):
            keys.append(batch.column("key").cast(pa.string()))
            distance.append(batch.column("mean_distance").to_numpy(zero_copy_only=False).astype(np.float64))
            rank.append(batch.column("rank").to_numpy(zero_copy_only=False).astype(np.int64))
            hashes.append(hashes_of(batch.column("key").to_pylist()))
        all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.int64)
        order = np.argsort(all_hashes, kind="stable")
        return cls(
            pa.chunked_array(keys, pa.string()),
            np.concatenate(distance) if distance else np.zeros(0),
            np.concatenate(rank) if rank else np.zeros(0, np.int64),
            all_hashes[order],
            order,
        )

    def __len__(self) -> int:
        return len(self.rank)

    def rows_of(self, keys: list[str], hashes: np.ndarray | None = None) -> np.ndarray:
        """The table row of each key, -1 where the table does not hold it (checked key by key)."""
        hashes = hashes_of(keys) if hashes is None else hashes
        if len(self.hashes) == 0 or not keys:
            return np.full(len(keys), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        rows = np.where(self.hashes[at] == hashes, self.order[at], -1)
        hit = rows >= 0
        if hit.any():  # a hash match is a key match unless two keys share a 63-bit hash
            same = pc.equal(self.keys.take(pa.array(rows[hit])), pa.array(keys, pa.string()).filter(hit))
            rows[np.flatnonzero(hit)[~same.to_numpy(zero_copy_only=False)]] = -1
        return rows

    def join(self, part: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """`part` with `outlier_distance`, `outlier_rank` appended (null where not held); the key
        hashes of its rows and their table rows (-1 where not held)."""
        keys = part.column("key").to_pylist()
        hashes = hashes_of(keys)
        rows = self.rows_of(keys, hashes)
        missing = rows < 0
        safe = np.where(missing, 0, rows)
        distance = pa.array(self.distance[safe], pa.float64(), mask=missing)
        rank = pa.array(self.rank[safe], pa.int64(), mask=missing)
        joined = part.append_column(pa.field(DISTANCE, pa.float64()), distance)
        return joined.append_column(pa.field(RANK, pa.int64()), rank), hashes, rows


@dataclass
class Relation:
    """A bounded key-hash sample of (outlier distance, MSE) over the joined images, and counts."""

    size: int = SPEARMAN_SAMPLE
    joined: int = 0
    scored: int = 0
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    def add(self, part: pa.Table, hashes: np.ndarray, rows: np.ndarray) -> None:
        """Count a joined metrics part (`OutlierTable.join`'s output) and sample its pairs."""
        self.scored += part.num_rows
        mse = part.column("mse").to_numpy(zero_copy_only=False).astype(np.float64)
        distance = part.column(DISTANCE).to_numpy(zero_copy_only=False).astype(np.float64)
        keep = (rows >= 0) & np.isfinite(mse) & np.isfinite(distance)
        self.joined += int(keep.sum())
        self.hashes = np.concatenate([self.hashes, hashes[keep]])
        self.values = np.concatenate([self.values, np.stack([distance[keep], mse[keep]], axis=1)])
        if len(self.hashes) > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        if len(self.hashes) > self.size:
            chosen = np.argpartition(self.hashes, self.size - 1)[: self.size]
            self.hashes, self.values = self.hashes[chosen], self.values[chosen]

    def spearman(self) -> tuple[float | None, int]:
        """Spearman's rank correlation of outlier distance with MSE (None below 3 images or for a
        constant column) and the number of images it was computed over."""
        from scipy.stats import spearmanr

        self._shrink()
        n = len(self.hashes)
        if n < 3 or np.ptp(self.values[:, 0]) == 0 or np.ptp(self.values[:, 1]) == 0:
            return None, n
        return float(spearmanr(self.values[:, 0], self.values[:, 1]).statistic), n


def strength(rho: float) -> str:
    """A word for the size of a rank correlation (Cohen's bands)."""
    size = abs(rho)
    return (
        "no clear" if size < 0.1 else "a weak" if size < 0.3 else "a moderate" if size < 0.5 else "a strong"
    )


def verified_top(table: OutlierTable, rows: list[dict], size: int) -> list[dict]:
    """The actors' outlier selection checked against the table (a key whose hash only collided with
    a candidate's is dropped), with exact distance and rank, most outlying first."""
    keys = [row["key"] for row in rows]
    found = table.rows_of(keys)
    checked = []
    for row, at in zip(rows, found, strict=True):
        if at >= 0:
            checked.append({**row, DISTANCE: float(table.distance[at]), RANK: int(table.rank[at])})
    return sorted(checked, key=lambda row: (row[RANK], row["key"]))[:size]


def read_neighbours(
    uri: str, keys: list[str], size: int = NEIGHBOURS_SHOWN
) -> dict[str, dict[str, Any]] | None:
    """For each of `keys` whose row in outliers.parquet lists its nearest images: its `source` and
    `neighbors`, up to `size` dicts (key, similarity, source), nearest first. None when the table has
    no neighbours columns (an older dedup). Two streamed passes keep only the rows asked for."""
    fs, path = _open(uri)
    with fs.open(path, "rb") as handle:
        names = pq.ParquetFile(handle).schema_arrow.names
    if not all(name in names for name in NEIGHBOUR_COLUMNS):
        return None
    found: dict[str, dict[str, Any]] = {}
    if not keys:
        return found
    with_source = "source" in names
    wanted = pa.array(keys, pa.string())
    for batch in _batches(uri, ["key", *NEIGHBOUR_COLUMNS] + (["source"] if with_source else [])):
        for row in batch.filter(pc.is_in(batch.column("key"), value_set=wanted)).to_pylist():
            if row["neighbors"] is not None:  # null: below dedup's --outlier-neighbors first ranks
                near = zip(row["neighbors"], row["neighbor_similarity"], strict=True)
                found[row["key"]] = {
                    "source": row.get("source"),
                    "neighbors": [
                        {"key": key, "similarity": float(sim), "source": None}
                        for key, sim in list(near)[:size]
                    ],
                }
    listed = sorted({near["key"] for entry in found.values() for near in entry["neighbors"]})
    if with_source and listed:
        sources: dict[str, str | None] = {}
        wanted = pa.array(listed, pa.string())
        for batch in _batches(uri, ["key", "source"]):
            hit = batch.filter(pc.is_in(batch.column("key"), value_set=wanted))
            sources.update(zip(hit.column("key").to_pylist(), hit.column("source").to_pylist(), strict=True))
        for entry in found.values():
            for near in entry["neighbors"]:
                near["source"] = sources.get(near["key"])
    return found


def neighbour_thumbnails(neighbours: dict[str, dict[str, Any]] | None) -> dict[Item, Thumbnail]:
    """Thumbnails of the top outliers `read_neighbours` found and of their nearest images, by (key,
    source), read from those sources (a placeholder with the reason where one cannot be read)."""
    wanted: list[Item] = []
    for key, listed in (neighbours or {}).items():
        wanted += [(key, listed["source"])] + [(near["key"], near["source"]) for near in listed["neighbors"]]
    return read_thumbnails(wanted, side=NEIGHBOUR_THUMBNAIL_SIDE) if wanted else {}


def neighbours_note(neighbours: dict[str, dict[str, Any]] | None, top: list[dict]) -> str:
    """What the page shows of the top outliers' neighbours, or why it shows none."""
    if neighbours is None:
        return (
            f"{OUTLIERS_FILE} does not list each image's nearest keys (it was written by an older "
            "`raeflow dedup`), so the outliers' neighbours are not shown; run `raeflow dedup` again to "
            "list them"
        )
    if not top:
        return ""
    text = (
        f"Below the table, each top outlier (framed) beside its nearest images in the embedding table, up to "
        f"{NEIGHBOURS_SHOWN}, most similar first, with their cosine similarity (from {OUTLIERS_FILE}; "
        "thumbnails read from the images' sources)"
    )
    missing = sum(row["key"] not in neighbours for row in top)
    if missing:
        text += (
            f"; {missing} of the {len(top)} have none listed: dedup lists them for its --outlier-neighbors "
            "most outlying images only"
        )
    return text


def relation_text(rho: float | None, num: int, sampled: bool) -> str:
    """One sentence on how outlier distance and reconstruction error (MSE) relate, with the number."""
    over = f"a key-hash sample of {num:,} joined images" if sampled else f"the {num:,} images in both tables"
    if rho is None:
        return f"Over {over}, no rank correlation of outlier distance with MSE: too few images, or constant."
    if abs(rho) < 0.1:
        meaning = "how far an image lies from its neighbours says little about how well it is reconstructed"
    elif rho > 0:
        meaning = "images far from their neighbours tend to be reconstructed worse"
    else:
        meaning = "images far from their neighbours tend to be reconstructed better"
    direction = "" if abs(rho) < 0.1 else " positive" if rho > 0 else " negative"
    return (
        f"Over {over}, outlier distance and reconstruction error (MSE) have a Spearman rank correlation of "
        f"{rho:+.2f} ({strength(rho)}{direction} relation): {meaning}."
    )


def outlier_summary(
    uri: str,
    table: OutlierTable,
    relation: Relation,
    top: list[dict],
    *,
    median_psnr: float | None,
    worst_keys: list[str],
    neighbours: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """summary.json's `outliers`: coverage, the rank correlation, the top outliers (with their nearest
    images where `neighbours`, `read_neighbours`' result, lists them) and what it means."""
    rho, num = relation.spearman()
    text = [relation_text(rho, num, relation.joined > num)]
    if top:
        top_median = float(np.median([row["psnr"] for row in top]))
        among = sum(row["key"] in worst_keys for row in top)
        line = f"The {len(top)} top outliers have a median PSNR of {top_median:.2f} dB"
        if median_psnr is not None:
            line += f", against {median_psnr:.2f} dB over all scored images"
        if worst_keys:
            line += f"; {among} of them are among the {len(worst_keys)} lowest-PSNR images"
        text.append(line + ".")
    coverage = f"{relation.joined:,} of the {relation.scored:,} scored images have an outlier score"
    if len(table) > relation.joined:
        coverage += (
            f"; {OUTLIERS_FILE} ranks {len(table):,} images ({len(table) - relation.joined:,} of them not in "
            "this report), and ranks are over that whole table"
        )
    if len(table) > MAX_CANDIDATES:
        coverage += f"; pictures are shown for images among its {MAX_CANDIDATES:,} highest ranks only"
    return {
        "table": f"{uri.rstrip('/')}/{OUTLIERS_FILE}",
        "table_rows": len(table),
        "joined": relation.joined,
        "scored": relation.scored,
        "coverage": coverage + ".",
        "spearman_distance_mse": rho,
        "spearman_images": num,
        "relation": " ".join(text),
        "top": [
            {
                **{name: row.get(name) for name in ("key", RANK, DISTANCE, "psnr", "ssim", "mse")},
                **(neighbours or {}).get(row["key"], {"source": None, "neighbors": None}),
            }
            for row in top
        ],
        "neighbours": neighbours_note(neighbours, top),
    }
