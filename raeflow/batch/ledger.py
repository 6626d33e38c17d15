"""The driver's books of a running batch job: which pieces of which shard are written, when a shard is done.

Rows reach the predictor actors in no particular order (there is no `preserve_order`), so a
shard's completion is known by counting: every decoded row carries its shard and its position,
and the shard's last row carries the shard's row count (`shard_rows`, set by the read task once
it has read the whole shard). Each commit record a worker returns covers one piece (a run of
consecutive rows) and says how many rows it held; a shard is complete when its count is known
and its pieces add up to it. A piece is counted once by its first row, so a block that Ray
retried after a worker died is not counted twice (it rewrote the same files). A shard with no
rows at all sends no record: it is complete when the stream ends.

The driver holds only the records of shards still open (a few per actor) and 8-byte key hashes
(12 bytes per image with the shard index: 12 MB per million images) for the key-collision check.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raeflow.batch.manifest import ShardRecord
from raeflow.data.sources.base import Shard


@dataclass
class OpenShard:
    """The pieces of one shard received so far."""

    shard: Shard
    pieces: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Commit records by first row."""
    total: int | None = None
    """The shard's row count, once the piece holding its last row has arrived."""

    def add(self, record: dict[str, Any]) -> bool:
        """Take a piece's record; False when that piece was already counted (a retried block)."""
        if record["first_row"] in self.pieces:
            return False
        self.pieces[record["first_row"]] = record
        if record["shard_rows"] is not None:
            self.total = int(record["shard_rows"])
        return True

    @property
    def rows(self) -> int:
        """Rows accounted for by the pieces so far."""
        return sum(r["rows_in"] for r in self.pieces.values())

    @property
    def complete(self) -> bool:
        """Whether every row of the shard is in a written piece."""
        return self.total is not None and self.rows == self.total

    def files(self) -> list[str]:
        """The files of every piece, in row order."""
        return [name for first in sorted(self.pieces) for name in self.pieces[first]["files"]]

    def hashes(self) -> np.ndarray:
        """The shard's key hashes, in row order."""
        blobs = [self.pieces[first]["key_hashes"] for first in sorted(self.pieces)]
        return np.frombuffer(b"".join(blobs), dtype="<u8").astype(np.uint64)

    def record(self, outputs: list[str]) -> ShardRecord:
        """The manifest record of the finished shard, listing `outputs`."""
        pieces = self.pieces.values()
        return ShardRecord(
            shard=self.shard.index,
            name=self.shard.name,
            rows_in=self.rows,
            rows_out=sum(r["rows_out"] for r in pieces),
            rows_rejected=sum(r["rows_rejected"] for r in pieces),
            seconds=round(sum(r["seconds"] for r in pieces), 3),
            outputs=tuple(outputs),
            bytes=sum(r["bytes"] for r in pieces),
            nodes=tuple(sorted({r["node"] for r in pieces})),
            compute=compute_of(pieces),
        )


COMPUTE_FIELDS = ("node", "precision", "native_bf16", "threads")
"""The commit-record fields that say how a piece's model ran; a shard's record keeps each distinct set."""


def compute_of(pieces: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """How the model ran for these pieces: one mapping per distinct node and setting."""
    distinct = {tuple(piece.get(name) for name in COMPUTE_FIELDS) for piece in pieces}
    return tuple(dict(zip(COMPUTE_FIELDS, values, strict=True)) for values in sorted(distinct, key=str))


class KeyIndex:
    """The 8-byte key hashes of every finished shard, to find keys that occur more than once."""

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []
        self._shards: list[np.ndarray] = []

    def add(self, shard: int, hashes: np.ndarray) -> None:
        """Keys of `shard`."""
        self._hashes.append(hashes)
        self._shards.append(np.full(len(hashes), shard, dtype=np.int32))

    def collisions(self) -> tuple[int, list[tuple[int, ...]]]:
        """How many keys occur more than once, and (up to 5) groups of the shards they occur in."""
        if not self._hashes:
            return 0, []
        hashes = np.concatenate(self._hashes)
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        repeated = ordered[1:] == ordered[:-1]  # position i+1 repeats position i
        count = int(np.count_nonzero(repeated & ~np.concatenate(([False], repeated[:-1]))))
        groups: list[tuple[int, ...]] = []
        if count:
            shards = np.concatenate(self._shards)[order]
            for value in np.unique(ordered[1:][repeated])[:5]:
                groups.append(tuple(sorted(set(shards[ordered == value].tolist()))))
        return count, groups
