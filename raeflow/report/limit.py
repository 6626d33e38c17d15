"""`--limit N`: a view of a source that holds only its first N images, in shard order.

Shard sizes are not known for every kind (a WebDataset tar must be read to count its members),
so the driver counts the first shards by reading them, stopping as soon as N rows are counted:
it reads at most N images, once, before the job reads them again. Those counts are also the
progress display's total (`count_rows`). Shards keep their index and name, so manifests and part
files line up with an unlimited run's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from raeflow.data.sources.base import Shard, Source

QUOTA = "report_limit_rows"
"""Key in `Shard.extra` holding how many of the shard's rows the limited view keeps."""


class LimitedSource(Source):
    """The first `limit` images of `inner`."""

    def __init__(self, inner: Source, limit: int) -> None:
        super().__init__(inner.uri, storage_options=inner.storage_options)
        self.inner = inner
        self.limit = limit
        self.kind = inner.kind
        self.has_labels = inner.has_labels

    def list_shards(self) -> list[Shard]:
        """The inner source's first shards, the last one cut so that `limit` rows are kept in all."""
        shards: list[Shard] = []
        remaining = self.limit
        for shard in self.inner.list_shards():
            if remaining <= 0:
                break
            rows = 0
            for table in self.inner.read_shard(shard, batch_rows=min(remaining, 1024)):
                rows += table.num_rows
                if rows >= remaining:
                    break
            kept = min(rows, remaining)
            shards.append(
                Shard(
                    shard.index,
                    shard.name,
                    shard.paths,
                    shard.start,
                    shard.stop,
                    {**shard.extra, QUOTA: kept},
                )
            )
            remaining -= kept
        return shards

    def read_shard(self, shard: Shard, *, batch_rows: int = 256) -> Iterator[pa.Table]:
        """The shard's first `Shard.extra[QUOTA]` rows."""
        remaining = int(shard.extra.get(QUOTA, 0))
        inner_shard = Shard(
            shard.index,
            shard.name,
            shard.paths,
            shard.start,
            shard.stop,
            {k: v for k, v in shard.extra.items() if k != QUOTA},
        )
        if remaining <= 0:
            return
        for table in self.inner.read_shard(inner_shard, batch_rows=batch_rows):
            yield table.slice(0, remaining)
            remaining -= min(table.num_rows, remaining)
            if remaining <= 0:
                return

    def count_rows(self, shards: list[Shard]) -> list[int | None]:
        """The rows each shard keeps: its quota, counted when the shards were listed (at most
        `limit` in all, and no more than the inner shard holds), so the total is always known,
        even where the inner source cannot count its shards without reading them."""
        return [int(shard.extra.get(QUOTA, 0)) for shard in shards]  # read_shard yields exactly these

    def describe(self) -> str:
        """One line for logs and summaries."""
        return f"{self.inner.describe()} (first {self.limit:,} images)"
