"""What `raeflow index` and `raeflow dedup` say about tables they cannot use: one `error:` line, exit
code 2, nothing written; and the help a user reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from raeflow.cli import main
from tests.curate.tables import clustered, write_part, write_raw


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    write_part(tmp_path / "emb", "part-00000-000000.parquet", ["a", "b", "c"], clustered(3, 8, seed=0))
    return tmp_path / "emb"


@pytest.mark.parametrize("command", ["index", "dedup"])
def test_a_table_without_an_embedding_column_is_refused(tmp_path: Path, command: str) -> None:
    write_raw(tmp_path / "emb", "part-0.parquet", pa.table({"key": ["a"], "image": [b"\x89PNG"]}))
    line = one_line_error([command, "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "out")])
    assert "is not an embedding table: it has no `embedding` column (columns: key, image)" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["index", "dedup"])
def test_parts_of_two_dimensions_are_refused(tmp_path: Path, command: str) -> None:
    write_part(tmp_path / "emb", "part-00000-000000.parquet", ["a", "b"], clustered(2, 8, seed=0))
    write_part(tmp_path / "emb", "part-00001-000000.parquet", ["c", "d"], clustered(2, 16, seed=0))
    line = one_line_error([command, "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "out")])
    assert "mixes vector dimensions" in line and "has 8" in line and "has 16" in line


def test_rows_of_two_lengths_in_one_part_are_refused(tmp_path: Path) -> None:
    rows = pa.table(
        {"key": ["a", "b"], "embedding": pa.array([[0.1, 0.2, 0.3], [0.1, 0.2]], pa.list_(pa.float32()))}
    )
    write_raw(tmp_path / "emb", "part-0.parquet", rows)
    line = one_line_error(["dedup", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "out")])
    assert "mixes vector dimensions: 3 and 2" in line


def test_parts_of_two_models_are_refused(tmp_path: Path) -> None:
    write_part(
        tmp_path / "emb", "part-00000-000000.parquet", ["a"], clustered(1, 8, seed=0), fingerprint="1" * 64
    )
    write_part(
        tmp_path / "emb", "part-00001-000000.parquet", ["b"], clustered(1, 8, seed=1), fingerprint="2" * 64
    )
    line = one_line_error(["index", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "out")])
    assert "mixes the embeddings of two models" in line


def test_a_table_of_nan_vectors_only_is_an_error(tmp_path: Path) -> None:
    write_part(tmp_path / "emb", "part-00000-000000.parquet", ["a", "b"], np.full((2, 4), np.nan))
    line = one_line_error(["index", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "out")])
    assert "holds no usable vector (2 rejected)" in line


@pytest.mark.parametrize("threshold", ["0", "-0.5", "1.01"])
def test_a_threshold_outside_0_1_is_refused(good: Path, tmp_path: Path, threshold: str) -> None:
    line = one_line_error(
        ["dedup", "--data", str(good), "--out", str(tmp_path / "out"), "--threshold", threshold]
    )
    assert line.startswith("error: --threshold must be in (0, 1]")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["index", "--data", "{missing}", "--out", "{out}"], "does not exist"),
        (["dedup", "--data", "{good}", "--out", "{good}/dedup"], "is inside --data"),
        (["index", "--data", "{good}", "--out", "{out}", "--metric", "dot"], "'dot' is not one of"),
        (
            ["index", "--data", "{good}", "--out", "{out}", "--max-memory", "lots"],
            "--max-memory takes a size",
        ),
        (["index", "--data", "{good}", "--out", "{out}", "--append"], "holds no index (no index.json)"),
    ],
)
def test_mistakes_are_one_line(good: Path, tmp_path: Path, args: list[str], says: str) -> None:
    where = {"missing": str(tmp_path / "nope"), "out": str(tmp_path / "out"), "good": str(good)}
    assert says in one_line_error([arg.format(**where) for arg in args])


def test_an_index_is_not_overwritten_nor_appended_from_another_model(good: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "idx")
    assert CliRunner().invoke(main, ["index", "--data", str(good), "--out", out, "-q"]).exit_code == 0
    assert "already holds an index; add --append" in one_line_error(
        ["index", "--data", str(good), "--out", out]
    )
    other = tmp_path / "other"
    write_part(other, "part-00000-000000.parquet", ["z"], clustered(1, 8, seed=3), fingerprint="f" * 64)
    assert "embedded by another model" in one_line_error(
        ["index", "--data", str(other), "--out", out, "--append"]
    )
    wider = tmp_path / "wider"
    write_part(wider, "part-00000-000000.parquet", ["z"], clustered(1, 16, seed=3))
    assert "holds vectors of 16; the index" in one_line_error(
        ["index", "--data", str(wider), "--out", out, "--append"]
    )
    line = one_line_error(["index", "--data", str(good), "--out", out, "--append", "--metric", "l2"])
    assert "compares by cosine" in line


def test_help_names_the_outputs() -> None:
    dedup = CliRunner().invoke(main, ["dedup", "--help"]).stdout
    assert all(
        name in dedup for name in ("groups.parquet", "keep.parquet", "outliers.parquet", "duplicates.html")
    )
    assert "index.json" in CliRunner().invoke(main, ["index", "--help"]).stdout
