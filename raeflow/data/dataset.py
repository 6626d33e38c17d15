"""A source's shards as a Ray Data dataset: one read task per shard, read on the workers.

    ds = read_dataset(open_source("s3://bucket/shards/*.tar"))

Rows have the columns of `ROW_SCHEMA` plus `shard` (int64, the shard's index). The driver only
lists shards; the Source object travels to the read tasks (plain attributes, storage options).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from raeflow.data.sources.base import ROW_SCHEMA, Shard, Source

DATASET_SCHEMA = ROW_SCHEMA.append(pa.field("shard", pa.int64(), nullable=False))
"""Columns of a dataset made by `read_dataset`."""


def read_dataset(
    source: Source,
    shards: Sequence[Shard] | None = None,
    *,
    batch_rows: int = 256,
    schema: pa.Schema | None = None,
    **placement: Any,
) -> ray.data.Dataset:
    """A lazy dataset over `shards` (default: all of the source's), one read task per shard, in
    shard order; each task reads `batch_rows` rows at a time (Ray may merge them into larger blocks).

    `schema` is the rows' schema when `source` yields other columns than `ROW_SCHEMA` (plus
    `shard`); `placement` goes to the read tasks (`label_selector`, `fallback_strategy`, ...).
    """
    shards = list(source.list_shards() if shards is None else shards)
    schema = schema or DATASET_SCHEMA
    if not shards:
        return ray.data.from_arrow(schema.empty_table())
    # One block count per shard stops Ray from splitting or merging read tasks.
    return ray.data.read_datasource(
        _ShardDatasource(source, shards, batch_rows, schema),
        override_num_blocks=len(shards),
        **placement,
    )


class _ShardDatasource(Datasource):
    """Ray's view of a source: a fixed list of read tasks, one per shard."""

    def __init__(self, source: Source, shards: list[Shard], batch_rows: int, schema: pa.Schema) -> None:
        self._source = source
        self._shards = shards
        self._batch_rows = batch_rows
        self._schema = schema

    def get_name(self) -> str:
        return self._source.kind.capitalize()

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: object | None = None,
        **_: object,
    ) -> list[ReadTask]:
        # One task per shard whatever `parallelism` asks for; `**_` takes what later Ray versions add.
        # Older Ray versions' ReadTask has no row limit: pass it only when Ray asks for one.
        limit = {} if per_task_row_limit is None else {"per_task_row_limit": per_task_row_limit}
        tasks = []
        for shard in self._shards:
            metadata = BlockMetadata(
                num_rows=None, size_bytes=None, input_files=tuple(shard.paths[:8]), exec_stats=None
            )
            tasks.append(
                ReadTask(
                    _shard_reader(self._source, shard, self._batch_rows),
                    metadata,
                    schema=self._schema,
                    **limit,
                )
            )
        return tasks


def _shard_reader(source: Source, shard: Shard, batch_rows: int) -> Callable[[], Iterator[pa.Table]]:
    """The read function of one task: the shard's tables with the `shard` column added."""

    def read() -> Iterator[pa.Table]:
        for table in source.read_shard(shard, batch_rows=batch_rows):
            index = pa.array([shard.index] * table.num_rows, pa.int64())
            yield table.append_column(pa.field("shard", pa.int64(), nullable=False), index)

    return read
