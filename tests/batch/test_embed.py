"""`raeflow embed` end to end on the shared local Ray: the table, its readers, reruns, S3."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest

import raeflow
from raeflow.batch.config import EmbedConfig, RunOptions
from raeflow.batch.embed import embed_job, run_embed
from raeflow.batch.runner import pipeline
from raeflow.data import images
from raeflow.errors import JobError
from tests.batch.inputs import write_digit_parquet, write_digits

READ_WITHOUT_RAEFLOW = textwrap.dedent(
    """
    import sys, json
    import duckdb, pandas
    out = sys.argv[1]
    con = duckdb.connect()
    count, dim, kind = con.execute(
        "SELECT count(*), min(len(embedding)) = max(len(embedding)) AND max(len(embedding)) = 196, "
        "any_value(typeof(embedding[1])) "
        f"FROM read_parquet('{out}/part-*.parquet')"
    ).fetchone()
    frame = pandas.concat(pandas.read_parquet(f"{out}/{name}") for name in sorted(
        __import__("os").listdir(out)) if name.startswith("part-"))
    assert 'ray' not in sys.modules and 'raeflow' not in sys.modules, "ray or raeflow got imported"
    print(json.dumps({"count": count, "dim": dim, "kind": kind, "keys": frame["key"].tolist(),
                      "labels": frame["label"].tolist(), "pandas_dim": len(frame["embedding"].iloc[0]),
                      "pandas_dtype": str(frame["embedding"].iloc[0].dtype)}))
    """
)


def test_embedding_table_reads_in_duckdb_and_pandas_without_raeflow(
    ray_session, tmp_path, conv_bundle, mnist_digits
):
    digits, labels = mnist_digits
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=3, rows=20)
    out = tmp_path / "emb"
    summary = run_embed(
        EmbedConfig(data=str(tmp_path / "in"), model=conv_bundle, out=str(out), run=RunOptions(quiet=True))
    )
    assert (summary.images_in, summary.images_out, summary.images_rejected) == (60, 60, 0)
    # Small shards give one part each, named after the shard and its first row.
    assert sorted(p.name for p in out.glob("part-*")) == [
        "part-00000-000000.parquet",
        "part-00001-000000.parquet",
        "part-00002-000000.parquet",
    ]
    assert (out / "_SUCCESS").exists() and len(list((out / "_manifest").glob("shard-*.json"))) == 3

    result = subprocess.run(
        [sys.executable, "-c", READ_WITHOUT_RAEFLOW, str(out)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    # DuckDB reads Parquet's lists as LIST (FLOAT[]): every row has exactly 196 float32 values.
    assert seen["count"] == 60 and seen["dim"] is True and seen["kind"] == "FLOAT"
    assert seen["keys"] == keys and seen["labels"] == [int(v) for v in labels[:60]]
    assert seen["pandas_dim"] == 196 and seen["pandas_dtype"] == "float32"

    part = pq.ParquetFile(out / "part-00001-000000.parquet")
    assert str(part.schema_arrow.field("embedding").type) == "fixed_size_list<element: float>[196]"
    metadata = part.schema_arrow.metadata
    assert (
        metadata[b"raeflow.model"].decode()
        == json.loads((out / "_manifest" / "job.json").read_text())["model"]
    )
    assert metadata[b"raeflow.version"] == raeflow.__version__.encode()
    assert part.read().column("key").to_pylist() == keys[20:40]  # part 00001-... holds shard 1


@pytest.mark.parametrize(("gpu", "files", "fused"), [(False, 6, True), (False, 5, False), (True, 6, False)])
def test_cpu_jobs_of_many_shards_decode_inside_the_predictor_actors(
    ray_session, tmp_path, conv_bundle, mnist_digits, capsys, gpu, files, fused
):
    # On CPUs a separate decode task only hands its block to an actor on the same cores, but an actor
    # reads a whole shard: it takes 3 shards per actor (2 CPUs: 2 actors) to keep both busy. With
    # --gpu, decoding stays in CPU tasks that can run on other (CPU-only) nodes.
    digits, labels = mnist_digits
    write_digit_parquet(str(tmp_path / "in"), digits, labels, files=files, rows=10)
    config = EmbedConfig(
        data=str(tmp_path / "in"), model=conv_bundle, out=str(tmp_path / "emb"), run=RunOptions(gpu=gpu)
    )
    job = embed_job(config)
    pipeline(job, job.source.list_shards()).explain()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    if fused:
        assert "ActorPoolMapOperator[ReadParquet->MapBatches(PredictAndWrite)]" in physical
    else:
        assert "ActorPoolMapOperator[MapBatches(PredictAndWrite)]" in physical
        assert "TaskPoolMapOperator[ReadParquet]" in physical


@pytest.mark.timeout(300)
def test_actors_that_take_a_whole_node_read_their_own_shards(
    ray_session, tmp_path, conv_bundle, mnist_digits
) -> None:
    # --worker-cpus 2 on 2 CPUs: a separate read task would never get a CPU beside the actor.
    digits, labels = mnist_digits
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=1, rows=12)
    run = RunOptions(worker_cpus=2, quiet=True)
    out = str(tmp_path / "emb")
    summary = run_embed(EmbedConfig(data=str(tmp_path / "in"), model=conv_bundle, out=out, run=run))
    assert summary.images_out == 12
    assert pq.read_table(tmp_path / "emb" / "part-00000-000000.parquet").column("key").to_pylist() == keys


def test_rerun_skips_finished_shards_and_refuses_another_model(
    ray_session, tmp_path, conv_bundle, vae_bundle, mnist_digits
):
    digits, labels = mnist_digits
    write_digit_parquet(str(tmp_path / "in"), digits, labels, files=2, rows=10)
    config = EmbedConfig(
        data=str(tmp_path / "in"), model=conv_bundle, out=str(tmp_path / "emb"), run=RunOptions(quiet=True)
    )
    run_embed(config)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "emb").glob("part-*")}
    again = run_embed(config)
    assert again.num_shards_skipped == 2 and again.images_out == 20
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "emb").glob("part-*")} == before
    other = EmbedConfig(data=config.data, model=vae_bundle, out=config.out, run=RunOptions(quiet=True))
    with pytest.raises(JobError, match="another embed run"):
        run_embed(other)


def test_vae_embeds_its_latent_size(ray_session, tmp_path, vae_bundle, mnist_digits):
    digits, labels = mnist_digits
    write_digit_parquet(str(tmp_path / "in"), digits, labels, files=1, rows=8)
    run_embed(
        EmbedConfig(
            data=str(tmp_path / "in"), model=vae_bundle, out=str(tmp_path / "emb"), run=RunOptions(quiet=True)
        )
    )
    table = pq.read_table(tmp_path / "emb" / "part-00000-000000.parquet")
    assert table.num_rows == 8 and table.schema.field("embedding").type.list_size == 6


def test_bad_images_are_listed_and_max_rejected_fails(
    ray_address, tmp_path, conv_bundle, mnist_digits, raeflow_cli
):
    digits, _ = mnist_digits
    good = write_digits(
        tmp_path / "in",
        digits,
        num=12,
        bad={
            "junk.png": b"not an image",
            "empty.jpg": b"",
            "0/cut.png": images.encode_image(digits[99][:, :, None], "png")[:60],  # truncated
        },
    )
    command = [
        *raeflow_cli,
        "embed",
        "--data",
        str(tmp_path / "in"),
        "--model",
        conv_bundle,
        "--address",
        ray_address,
        "--quiet",
    ]
    strict = subprocess.run(
        [*command, "--out", str(tmp_path / "strict"), "--max-rejected", "0"], capture_output=True, text=True
    )
    assert strict.returncode != 0
    assert strict.stderr.strip().splitlines()[-1].startswith("error: 3 of 15 images (20.0%) were rejected")
    assert not (tmp_path / "strict" / "_SUCCESS").exists()

    lenient = subprocess.run(
        [*command, "--out", str(tmp_path / "lenient"), "--max-rejected", "0.25"],
        capture_output=True,
        text=True,
    )
    assert lenient.returncode == 0, lenient.stderr
    assert "12 out, 3 rejected" in lenient.stdout
    rejected = pq.read_table(tmp_path / "lenient" / "_rejected").to_pylist()
    reasons = {row["key"]: row["reason"].split(":")[0] for row in rejected}
    assert reasons == {"junk": "not_an_image", "empty": "empty", "0/cut": "truncated"}
    parts = sorted((tmp_path / "lenient").glob("part-*.parquet"))
    embedded = [k for part in parts for k in pq.read_table(part).column("key").to_pylist()]
    assert sorted(embedded) == sorted(good)


def test_s3_in_and_out(ray_session, s3_bucket, conv_bundle, mnist_digits):
    import fsspec

    digits, labels = mnist_digits
    keys = write_digit_parquet(f"{s3_bucket}/in", digits, labels, files=2, rows=10)
    summary = run_embed(
        EmbedConfig(
            data=f"{s3_bucket}/in", model=conv_bundle, out=f"{s3_bucket}/emb", run=RunOptions(quiet=True)
        )
    )
    assert summary.images_out == 20
    fs = fsspec.filesystem("s3")
    names = sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"{s3_bucket}/emb"))
    assert names == ["_SUCCESS", "_manifest", "part-00000-000000.parquet", "part-00001-000000.parquet"]
    with fs.open(f"{s3_bucket}/emb/part-00001-000000.parquet", "rb") as handle:
        assert pq.read_table(handle).column("key").to_pylist() == keys[10:]
