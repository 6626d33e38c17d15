"""`raeflow neighbors --key`: the images most like one in the index, printed and written as Parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from raeflow.cli import main
from tests.curate.tables import planted


def test_the_nearest_of_a_planted_copy_are_its_copies(tmp_path: Path) -> None:
    keys = planted(tmp_path / "emb")
    runner = CliRunner()
    built = runner.invoke(
        main, ["index", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"), "-q"]
    )
    assert built.exit_code == 0, built.output
    out = tmp_path / "near.parquet"
    args = ["neighbors", "--index", str(tmp_path / "idx"), "--key", "big/0", "--k", "5", "--out", str(out)]
    shown = runner.invoke(main, args)
    assert shown.exit_code == 0, shown.output
    rows = pq.read_table(out).to_pylist()
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    assert {row["key"] for row in rows[:3]} == set(keys["big"]) - {"big/0"}  # itself left out
    assert all(row["similarity"] > 0.99 for row in rows[:3]) and rows[3]["similarity"] < 0.99
    assert rows[0]["source"] == f"s3://photos/{rows[0]['key']}.jpg"
    assert shown.stdout.splitlines()[0] == "nearest to big/0 (cosine):" and rows[0]["key"] in shown.stdout
    missing = runner.invoke(main, ["neighbors", "--index", str(tmp_path / "idx"), "--key", "nope"])
    assert missing.exit_code == 2 and missing.stderr.strip() == (
        f"error: --key nope is not in the index {tmp_path / 'idx'} (309 keys)"
    )
