"""`raeflow index`: the index kind chosen by size and memory, keys beside the vectors, recall in
index.json, and `--append` adding only the keys the index does not hold yet."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from raeflow.cli import main
from tests.curate.tables import clustered, write_part


def index(*args: str) -> str:
    result = CliRunner().invoke(main, ["index", "--quiet", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def table(folder: Path, keys: list[str], seed: int = 0, dim: int = 32) -> np.ndarray:
    vectors = clustered(len(keys), dim, seed)
    half = len(keys) // 2
    write_part(folder, "part-00000-000000.parquet", keys[:half], vectors[:half])
    write_part(folder, "part-00001-000000.parquet", keys[half:], vectors[half:])
    return vectors


def nearest_keys(out: Path, vector: np.ndarray, k: int = 1) -> list[str]:
    meta = json.loads((out / "index.json").read_text())
    found = faiss.read_index(str(out / "index.faiss"))
    query = vector[None, :].astype(np.float32)
    if meta["metric"] == "cosine":
        query = query / np.linalg.norm(query)
    ids = found.search(query, k)[1][0]
    keys = pq.read_table(out / "keys.parquet").column("key").to_pylist()
    return [keys[i] for i in ids]


@pytest.mark.parametrize(
    ("extra", "kind", "factory"),
    [
        ([], "flat", "Flat"),
        (["--exact-below", "100"], "hnsw", "HNSW32,Flat"),
        (["--exact-below", "100", "--max-memory", "50K"], "ivfpq", "IVF"),
    ],
)
def test_the_index_kind_follows_size_and_memory_and_its_recall_is_recorded(
    tmp_path: Path, extra: list[str], kind: str, factory: str
) -> None:
    keys = [f"img/{i:05d}" for i in range(3000 if kind != "ivfpq" else 2000)]
    vectors = table(tmp_path / "emb", keys, dim=32 if kind != "ivfpq" else 8)
    summary = index("--data", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"), *extra)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["kind"] == kind and meta["factory"].startswith(factory) and meta["num_vectors"] == len(keys)
    assert meta["dim"] == vectors.shape[1] and meta["metric"] == "cosine" and meta["model"] == "a" * 64
    assert 800 <= meta["recall_sample"] <= 1200 and meta["recall_measured_at"] == len(keys)
    assert meta["recall_at_10"] == 1.0 if kind == "flat" else 0.5 < meta["recall_at_10"] <= 1.0
    if kind == "hnsw":
        assert meta["recall_at_10"] >= 0.9
    assert f"recall@10: {meta['recall_at_10']:.3f}" in summary
    assert pq.read_table(tmp_path / "idx" / "keys.parquet").column("key").to_pylist() == keys
    if kind != "ivfpq":  # compressed codes may rank a close neighbour first
        assert nearest_keys(tmp_path / "idx", vectors[1234]) == ["img/01234"]


def test_l2_metric_is_kept_in_index_json_and_searched_by_distance(tmp_path: Path) -> None:
    keys = [f"k{i}" for i in range(200)]
    vectors = table(tmp_path / "emb", keys) * 3.0
    index("--data", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"), "--metric", "l2")
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["metric"] == "l2"
    assert nearest_keys(tmp_path / "idx", vectors[17] / 3.0) == ["k17"]  # l2: the scale matters


def test_append_adds_new_keys_and_skips_those_present(tmp_path: Path) -> None:
    first = table(tmp_path / "a", [f"img/{i:03d}" for i in range(100)], seed=1)
    second = table(tmp_path / "b", [f"img/{i:03d}" for i in range(50, 150)], seed=2)
    out = tmp_path / "idx"
    index("--data", str(tmp_path / "a"), "--out", str(out), "--exact-below", "10")
    summary = index("--data", str(tmp_path / "b"), "--out", str(out), "--append")
    meta = json.loads((out / "index.json").read_text())
    keys = pq.read_table(out / "keys.parquet").column("key").to_pylist()
    assert keys == [f"img/{i:03d}" for i in range(150)] and meta["num_vectors"] == 150
    assert meta["appends"] == 1 and meta["data"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert "50 added" in summary and "skipped: 50 keys already in the index" in summary
    assert nearest_keys(out, first[60]) == ["img/060"]  # the first table's vector stays
    assert nearest_keys(out, second[99]) == ["img/149"]
    assert meta["recall_at_10"] >= 0.9 and meta["recall_measured_at"] == 150
    again = index("--data", str(tmp_path / "b"), "--out", str(out), "--append")
    assert "0 added" in again and "skipped: 100 keys" in again


def test_duplicate_keys_in_a_table_are_indexed_once_and_listed(tmp_path: Path) -> None:
    vectors = clustered(6, 8, seed=0)
    write_part(tmp_path / "emb", "part-00000-000000.parquet", ["a", "b", "c"], vectors[:3])
    write_part(tmp_path / "emb", "part-00001-000000.parquet", ["c", "d", "e"], vectors[3:])
    summary = index("--data", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"))
    assert pq.read_table(tmp_path / "idx" / "keys.parquet").column("key").to_pylist() == [
        "a",
        "b",
        "c",
        "d",
        "e",
    ]
    rejected = pq.read_table(tmp_path / "idx" / "_rejected" / "rejected.parquet").to_pylist()
    assert [(row["key"], row["reason"]) for row in rejected] == [("c", "duplicate_key")]
    assert "rejected: 1 (duplicate_key 1)" in summary
