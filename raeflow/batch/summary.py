"""What a batch job did: counts over the whole output folder, the speed of this run, where things are."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from raeflow.batch.manifest import REJECTED_DIR, ShardRecord
from raeflow.batch.output import OutputDir
from raeflow.data.sources.base import Shard
from raeflow.data.sources.retries import StoreRetries
from raeflow.errors import JobError
from raeflow.hardware import PRECISION_NAMES


@dataclass
class JobSummary:
    """What a batch job did: counts over the whole output folder, speed of this run."""

    job: str
    """The job's kind."""
    out: str
    """The output folder URI."""
    num_shards: int
    """Input shards in the source."""
    num_shards_skipped: int
    """Shards already finished by an earlier run and skipped now."""
    images_in: int
    """Images read (all runs into this folder)."""
    images_out: int
    """Images written."""
    images_rejected: int
    """Images that could not be used (see `rejected`)."""
    seconds: float
    """Wall time of this run."""
    images_per_second: float
    """Images processed by this run per second of its wall time."""
    outputs: list[str] = field(default_factory=list)
    """Where the outputs are (URIs or globs)."""
    rejected: str | None = None
    """URI of the `_rejected/` table, when any image was rejected."""
    received_bytes: int = 0
    """Bytes of commit records the driver received in this run (output bytes never pass through it)."""
    key_collisions: int = 0
    """Keys that occur more than once in the input (keys should be unique; outputs share such keys)."""
    collision_shards: list[list[str]] = field(default_factory=list)
    """Some groups of input shards that share keys (names), to look at."""
    precision: dict[str, int] = field(default_factory=dict)
    """How many nodes ran the model in each precision (`{"bf16": 3, "fp32": 1}`: each actor decides
    on its own hardware); empty when the shards' records do not say."""
    threads: list[int] = field(default_factory=list)
    """The torch threads of the predictor actors (one value when they all agree)."""
    slow_bf16_nodes: int = 0
    """Nodes that ran bf16 without native bf16 (`--precision bf16`): slower than float32 there."""
    store_retries: int = 0
    """Store requests this run retried (botocore's retries and s3fs's), on the driver and the workers."""
    store_retries_by: dict[str, int] = field(default_factory=dict)
    """`store_retries` by the layer that retried: `{"botocore": 30, "s3fs": 7}`; empty when none."""

    def count_store_retries(self, retries: StoreRetries) -> None:
        """Set `store_retries` (and `store_retries_by`) to `retries`."""
        self.store_retries = retries.total
        self.store_retries_by = {"botocore": retries.botocore, "s3fs": retries.s3fs} if retries.total else {}

    def compute_line(self) -> str | None:
        """How the model ran, for people: `bf16 autocast, 2 threads per actor`; None when unknown."""
        if not self.precision:
            return None
        names = sorted(self.precision, key=lambda name: (-self.precision[name], name))
        if len(names) == 1:
            text = PRECISION_NAMES.get(names[0], names[0])
        else:  # nodes of one cluster decided differently (each on its own hardware)
            text = ", ".join(
                f"{PRECISION_NAMES.get(n, n)} on {_count(self.precision[n], 'node')}" for n in names
            )
        if self.threads:
            low, high = min(self.threads), max(self.threads)
            threads = _count(high, "thread") if low == high else f"{low}-{high} threads"
            text += f"{', ' if len(names) == 1 else '; '}{threads} per actor"
        if self.slow_bf16_nodes:  # --precision bf16 where auto would have picked float32
            nodes = _count(self.slow_bf16_nodes, "node")
            text += f"; no native bf16 on {nodes}: slower there than float32 (use --precision auto)"
        return text

    def lines(self) -> list[str]:
        """A one-screen, human-readable summary."""
        skipped = f" ({self.num_shards_skipped} already done)" if self.num_shards_skipped else ""
        text = [
            f"{self.job}: {self.images_in:,} images in, {self.images_out:,} out, "
            f"{self.images_rejected:,} rejected",
            f"  shards:   {self.num_shards}{skipped}",
            f"  speed:    {format_rate(self.images_per_second)} images/s ({self.seconds:.1f} s this run)",
        ]
        compute = self.compute_line()
        if compute:
            text.append(f"  model:    {compute}")
        retried = StoreRetries(**self.store_retries_by).line()
        if retried:  # a flaky store the job got through: how flaky
            text.append(f"  store:    {retried}")
        text += [f"  output:   {path}" for path in self.outputs]
        if self.rejected:
            text.append(f"  rejected: {self.rejected}")
        if self.key_collisions:
            where = "; ".join(" + ".join(group) for group in self.collision_shards)
            text.append(
                f"  warning:  {self.key_collisions:,} keys occur more than once in the input ({where})"
            )
        return text

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-serialisable values."""
        return asdict(self)


def summarise(
    job: str,
    out: OutputDir,
    shards: list[Shard],
    done: dict[int, ShardRecord],
    pending: list[Shard],
    seconds: float,
    *,
    outputs_hint: str = "",
) -> JobSummary:
    """The summary of a folder whose finished shards are `done`, after a run that did `pending`."""
    images_in = sum(r.rows_in for r in done.values())
    facts = [fact for record in done.values() for fact in record.compute]
    precision, threads, slow_bf16_nodes = describe_compute(facts)
    processed = sum(done[s.index].rows_in for s in pending if s.index in done)
    rejected = sum(r.rows_rejected for r in done.values())
    return JobSummary(
        job=job,
        out=out.url(),
        num_shards=len(shards),
        num_shards_skipped=len(shards) - len(pending),
        images_in=images_in,
        images_out=sum(r.rows_out for r in done.values()),
        images_rejected=rejected,
        seconds=round(seconds, 3),
        images_per_second=significant(processed / seconds) if seconds > 0 else 0.0,
        outputs=[out.url(outputs_hint)] if outputs_hint else [out.url()],
        rejected=out.url(REJECTED_DIR + "/") if rejected else None,
        precision=precision,
        threads=threads,
        slow_bf16_nodes=slow_bf16_nodes,
    )


def describe_compute(facts: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], list[int], int]:
    """Nodes per precision, the distinct torch thread counts, and the nodes that ran bf16 without
    native bf16, over the `facts` of every shard (`ShardRecord.compute`: one mapping per node and
    setting, as the workers' commit records say; records written before raeflow kept them have none)."""
    facts = list(facts)
    per_node = {(fact.get("node"), fact["precision"]) for fact in facts if fact.get("precision")}
    precision = dict(Counter(name for _, name in per_node))
    threads = sorted({int(fact["threads"]) for fact in facts if fact.get("threads")})
    slow = {
        fact.get("node")
        for fact in facts
        if fact.get("precision") == "bf16" and fact.get("native_bf16") is False
    }
    return precision, threads, len(slow)


def check_rejected(summary: JobSummary, max_rejected: float | None) -> None:
    """Raise `JobError` when more than `max_rejected` of the images (or all of them) were rejected."""
    if summary.images_in == 0:
        return
    fraction = summary.images_rejected / summary.images_in
    if (max_rejected is not None and fraction > max_rejected) or summary.images_out == 0:
        raise JobError(
            f"{summary.images_rejected:,} of {summary.images_in:,} images ({fraction:.1%}) were rejected"
            + (f", more than --max-rejected {max_rejected}" if max_rejected is not None else "")
            + f"; see the reasons in {summary.rejected}"
        )


def interrupted_message(out: str, num_shards: int, done: dict[int, ShardRecord], num_before: int) -> str:
    """What a job stopped by Ctrl-C leaves in `out` (its `done` shards, `num_before` of them finished
    by earlier runs), and how to go on; the CLI prints it after `aborted: `."""
    images = sum(record.rows_in for record in done.values())
    now = len(done) - num_before
    earlier = f", {num_before} by earlier runs" if num_before else ""
    return (
        f"{len(done)} of {num_shards} shards ({images:,} images) are committed to {out} "
        f"({now} by this run{earlier}); run the same command again to resume: it skips the committed "
        "shards and redoes the others"
    )


def significant(value: float, digits: int = 3) -> float:
    """`value` rounded to `digits` significant digits (a slow job's 0.0333 images/s is not 0.0)."""
    return float(f"{value:.{digits}g}")


def format_rate(value: float) -> str:
    """A rate for people: 1,234 / 12.3 / 0.033."""
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def _count(number: int, noun: str) -> str:
    """`1 node`, `3 nodes`."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
