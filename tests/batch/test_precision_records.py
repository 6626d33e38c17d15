"""What a batch job says about how its model ran: the precision in the embedding table's file
metadata, and torch threads per predictor actor (one per CPU it reserved) in the commit records."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from raeflow.batch.config import EmbedConfig, RunOptions
from raeflow.batch.embed import embed_job, run_embed
from raeflow.batch.runner import pipeline
from raeflow.batch.summary import JobSummary, describe_compute
from raeflow.hardware import cpu_has_native_bf16
from tests.batch.inputs import write_digit_parquet

AUTO = "bf16" if cpu_has_native_bf16() else "fp32"
"""What --precision auto runs in on this machine's CPU (where the test's actors run)."""


def _precision_of(part) -> str:
    return pq.read_metadata(part).metadata[b"raeflow.precision"].decode()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("precision", "cpus", "expected"), [("fp32", 2, "fp32"), ("auto", 1, AUTO)])
def test_embedding_parts_and_summary_say_how_the_model_ran(
    ray_session, tmp_path, conv_bundle, mnist_digits, precision, cpus, expected
) -> None:
    digits, labels = mnist_digits
    write_digit_parquet(str(tmp_path / "in"), digits, labels, files=2, rows=12)
    out = tmp_path / "emb"
    run = RunOptions(precision=precision, worker_cpus=cpus, quiet=True)
    summary = run_embed(EmbedConfig(data=str(tmp_path / "in"), model=conv_bundle, out=str(out), run=run))
    assert summary.images_out == 24
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2
    for part in parts:
        assert _precision_of(part) == expected
        metadata = pq.read_metadata(part).metadata
        assert {b"raeflow.model", b"raeflow.version"} <= set(metadata)  # the table's own keys stay
    name = {"bf16": "bf16 autocast", "fp32": "float32"}[expected]
    threads = "1 thread" if cpus == 1 else f"{cpus} threads"
    assert f"  model:    {name}, {threads} per actor" in summary.lines()
    for record in out.glob("_manifest/shard-*.json"):  # what a rerun's summary reads back
        compute = json.loads(record.read_text())["compute"]
        assert {(c["precision"], c["threads"]) for c in compute} == {(expected, cpus)}
    assert json.loads((out / "_SUCCESS").read_text())["precision"] == {expected: 1}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cpus", [1, 2])
def test_a_predictor_actor_runs_one_torch_thread_per_cpu_it_reserved(
    ray_session, tmp_path, conv_bundle, mnist_digits, cpus
) -> None:
    import ray

    assert ray.cluster_resources()["CPU"] == 2  # the shared session: an actor of 2 CPUs takes the node
    digits, labels = mnist_digits
    write_digit_parquet(str(tmp_path / "in"), digits, labels, files=1, rows=12)
    run = RunOptions(worker_cpus=cpus)
    config = EmbedConfig(data=str(tmp_path / "in"), model=conv_bundle, out=str(tmp_path / "emb"), run=run)
    job = embed_job(config)
    records = pipeline(job, job.source.list_shards()).take_all()  # the commit records the driver gets
    assert sum(r["rows_out"] for r in records) == 12
    assert {r["threads"] for r in records} == {cpus}
    assert {r["precision"] for r in records} == {AUTO}
    written = {name for r in records for name in r["files"]}
    assert {_precision_of(tmp_path / "emb" / name) for name in written} == {AUTO}


def _summary(facts: list[dict]) -> JobSummary:
    precision, threads, slow = describe_compute(facts)
    return JobSummary(
        job="embed", out="emb/", num_shards=2, num_shards_skipped=0, images_in=24, images_out=24,
        images_rejected=0, seconds=1.0, images_per_second=24.0,
        precision=precision, threads=threads, slow_bf16_nodes=slow,
    )  # fmt: skip


def _fact(node: str, precision: str, threads: int = 2, native: bool = True) -> dict:
    return {"node": node, "precision": precision, "threads": threads, "native_bf16": native}


def test_the_summary_says_how_the_model_ran() -> None:
    # Two shards done by the same node's actors: one setting, said once.
    same = _summary([_fact("a", "bf16"), _fact("a", "bf16")])
    assert "  model:    bf16 autocast, 2 threads per actor" in same.lines()
    # Nodes of one cluster decide on their own hardware: the summary counts them.
    mixed = _summary([_fact("a", "bf16"), _fact("b", "bf16"), _fact("c", "bf16"), _fact("d", "fp32", 1)])
    assert "  model:    bf16 autocast on 3 nodes, float32 on 1 node; 1-2 threads per actor" in mixed.lines()
    # --precision bf16 on a CPU without native bf16 is allowed, and said to be slow.
    forced = _summary([_fact("a", "bf16", 1, native=False)])
    assert forced.compute_line() == (
        "bf16 autocast, 1 thread per actor; no native bf16 on 1 node: slower there than float32 "
        "(use --precision auto)"
    )
    # Records that do not say (written before they did) give no line rather than a guess.
    assert not any(line.startswith("  model:") for line in _summary([]).lines())
