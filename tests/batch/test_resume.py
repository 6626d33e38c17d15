"""An interrupted batch job, rerun, ends with every image exactly once and no partial files."""

from __future__ import annotations

import os
import subprocess

import fsspec
import pyarrow.parquet as pq
import pytest

from raeflow.batch.runner import CRASH_HOOK
from tests.batch.inputs import write_digit_parquet


def _files(out: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()  # s3fs keeps listings (and sizes) of earlier calls
    return sorted(path[len(root.rstrip("/")) + 1 :] for path in fs.find(root))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_interrupted_embed_resumes_exactly_once(
    ray_address, tmp_path, conv_bundle, mnist_digits, raeflow_cli, where, request
):
    digits, labels = mnist_digits
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=5, rows=8)
    out = str(tmp_path / "emb") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/emb"
    command = [*raeflow_cli, "embed", "--data", str(tmp_path / "in"), "--model", conv_bundle, "--out", out]
    command += ["--address", ray_address, "--quiet"]

    crashed = subprocess.run(command, env={**os.environ, CRASH_HOOK: "2"}, capture_output=True, text=True)
    assert crashed.returncode == 3, crashed.stderr[-2000:]
    left = _files(out)
    # Two shards were committed, then the driver died committing a third: two records, no _SUCCESS
    # (the workers may have written parts of uncommitted shards: a rerun replaces them).
    assert len([f for f in left if f.startswith("_manifest/shard-")]) == 2 and "_SUCCESS" not in left
    if where == "local":
        assert any(".raeflow-tmp-" in f for f in left)

    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "40 images in, 40 out, 0 rejected" in rerun.stdout and "2 already done" in rerun.stdout
    done = _files(out)
    assert not any(".raeflow-tmp-" in f for f in done) and "_SUCCESS" in done
    assert [f for f in done if f.startswith("part-")] == [f"part-{i:05d}-000000.parquet" for i in range(5)]
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()
    embedded = []
    for i in range(5):
        with fs.open(f"{root}/part-{i:05d}-000000.parquet", "rb") as handle:
            embedded += pq.read_table(handle).column("key").to_pylist()
    assert embedded == keys  # every key exactly once, in order
