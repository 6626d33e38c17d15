"""`raeflow embed` (Ray Data, the shared local Ray), `raeflow index`, then `raeflow neighbors --image` on
one of the embedded files: the command's own embedding of the file (no Ray) must find the row the
batch job wrote for it first, at similarity ~1, and the --html page must show it."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from raeflow.batch.config import EmbedConfig, RunOptions
from raeflow.batch.embed import run_embed
from raeflow.cli import main
from tests.curate.photos import MODEL, write_digits

pytestmark = pytest.mark.slow


def test_neighbors_by_image_finds_the_row_embed_wrote_for_it(ray_session: None, tmp_path: Path) -> None:
    write_digits(tmp_path / "images", num=40)
    run_embed(
        EmbedConfig(
            data=str(tmp_path / "images"), model=MODEL, out=str(tmp_path / "emb"), run=RunOptions(quiet=True)
        )
    )
    runner = CliRunner()
    built = runner.invoke(
        main, ["index", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"), "-q"]
    )
    assert built.exit_code == 0, built.output
    image = tmp_path / "images" / "d" / "17.png"
    out = tmp_path / "near.parquet"
    args = ["--index", str(tmp_path / "idx"), "--image", str(image), "--model", MODEL, "--k", "4"]
    found = runner.invoke(main, ["neighbors", *args, "--out", str(out), "--html"])
    assert found.exit_code == 0, found.output
    rows = pq.read_table(out).to_pylist()
    assert rows[0]["key"] == "d/17" and rows[0]["similarity"] > 0.999 and len(rows) == 4
    page = (tmp_path / "near.html").read_text()
    assert page.count('src="data:image/jpeg;base64,') == 1 + 4
