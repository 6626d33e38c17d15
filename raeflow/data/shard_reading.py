"""Read a source's shards in order on one machine, with the next few shards read ahead by threads.

Each shard in flight has its own thread and a small bounded queue, and the caller drains the queues
in shard order: the output order is the source order whatever the threads' timing, and memory is
bounded by `read_ahead * QUEUE_BATCHES` prepared batches.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pyarrow as pa

from raeflow.data.sources import Shard, Source

T = TypeVar("T")
QUEUE_BATCHES = 4
"""Prepared batches buffered per shard in flight."""
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _pump(
    source: Source,
    shard: Shard,
    prepare: Callable[[pa.Table], T],
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for batch in source.read_shard(shard):
            if not put(prepare(batch)):
                return
        put(_DONE)
    except BaseException as err:  # handed to the consumer, which re-raises it in order
        put(_Failure(err))


def ordered_batches(
    source: Source, shards: list[Shard], prepare: Callable[[pa.Table], T], read_ahead: int = 4
) -> Iterator[T]:
    """`prepare(batch)` for every batch of every shard, in shard order then batch order."""
    stop = threading.Event()
    pending: deque[queue.Queue] = deque()
    upcoming = iter(shards)
    with ThreadPoolExecutor(max_workers=read_ahead, thread_name_prefix="raeflow-read") as pool:

        def submit_next() -> None:
            shard = next(upcoming, None)
            if shard is not None:
                q: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
                pool.submit(_pump, source, shard, prepare, q, stop)
                pending.append(q)

        try:
            for _ in range(read_ahead):
                submit_next()
            while pending:
                q = pending[0]
                while (item := q.get()) is not _DONE:
                    if isinstance(item, _Failure):
                        raise item.error
                    yield item
                pending.popleft()
                submit_next()
        finally:
            stop.set()  # a consumer that stops early (or fails) releases every reader thread
