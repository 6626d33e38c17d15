"""An interrupted batch job, rerun, ends with every image exactly once and no partial files."""

from __future__ import annotations

import json
import os
import subprocess

import pyarrow.parquet as pq

from raeflow.batch.runner import CRASH_HOOK
from tests.batch.inputs import write_digit_parquet


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_interrupted_embed_resumes_exactly_once(
    ray_address, tmp_path, conv_bundle, mnist_digits, raeflow_cli
):
    digits, labels = mnist_digits
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=5, rows=8)
    out = tmp_path / "emb"
    command = [
        *raeflow_cli,
        "embed",
        "--data",
        str(tmp_path / "in"),
        "--model",
        conv_bundle,
        "--out",
        str(out),
    ]
    command += ["--address", ray_address, "--quiet"]

    crashed = subprocess.run(command, env={**os.environ, CRASH_HOOK: "2"}, capture_output=True, text=True)
    assert crashed.returncode == 3, crashed.stderr[-2000:]
    left = _files(out)
    # Two shards finished; the third died half-written: a temporary file, no part, no record.
    assert [f for f in left if f.startswith("part-")] == ["part-00000.parquet", "part-00001.parquet"]
    assert [f for f in left if f.startswith("_manifest/shard-")] == [
        "_manifest/shard-00000.json",
        "_manifest/shard-00001.json",
    ]
    assert any(".raeflow-tmp-" in f for f in left) and "_SUCCESS" not in left

    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "40 images in, 40 out, 0 rejected" in rerun.stdout and "2 already done" in rerun.stdout
    done = _files(out)
    assert not any(".raeflow-tmp-" in f for f in done) and "_SUCCESS" in done
    assert [f for f in done if f.startswith("part-")] == [f"part-{i:05d}.parquet" for i in range(5)]
    embedded = [
        k for i in range(5) for k in pq.read_table(out / f"part-{i:05d}.parquet").column("key").to_pylist()
    ]
    assert embedded == keys  # every key exactly once, in order
    records = [json.loads((out / "_manifest" / f"shard-{i:05d}.json").read_text()) for i in range(5)]
    assert [r["rows_out"] for r in records] == [8] * 5
