"""`raeflow neighbors --image FILE --model BUNDLE`: a new image embedded as `raeflow embed` would and
searched; a bundle that did not make the index, or options that do not go together, are one line."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from raeflow.cli import main
from raeflow.models import create_model, save_bundle
from tests.curate.photos import MODEL, embed_folder, write_digits
from tests.curate.tables import clustered, write_part


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digit PNGs under images/, their embedding table under emb/, its index under idx/."""
    root = tmp_path_factory.mktemp("digits")
    write_digits(root / "images")
    embed_folder(root / "images", root / "emb")
    built = CliRunner().invoke(main, ["index", "--data", str(root / "emb"), "--out", str(root / "idx"), "-q"])
    assert built.exit_code == 0, built.output
    return root


def neighbors(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["neighbors", *args])
    return result.exit_code, result.stdout, result.stderr


def test_an_image_the_index_holds_comes_back_first_as_itself(indexed: Path, tmp_path: Path) -> None:
    image = indexed / "images" / "d" / "07.png"
    out = tmp_path / "near.parquet"
    code, stdout, stderr = neighbors(
        "--index",
        str(indexed / "idx"),
        "--image",
        str(image),
        "--model",
        MODEL,
        "--k",
        "5",
        "--out",
        str(out),
    )
    assert code == 0, stderr
    rows = pq.read_table(out).to_pylist()
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["key"] == "d/07" and rows[0]["similarity"] > 0.999  # itself, not left out
    assert rows[0]["source"] == str(image)
    assert all(row["similarity"] < rows[0]["similarity"] for row in rows[1:])
    assert stdout.splitlines()[0] == f"nearest to {image} (cosine):"
    assert f"wrote: {out}" in stdout


def test_a_bundle_that_did_not_make_the_index_is_refused_in_one_line(indexed: Path, tmp_path: Path) -> None:
    other = save_bundle(create_model("conv", channels=[4, 4]), str(tmp_path / "other"))
    image = indexed / "images" / "d" / "03.png"
    code, stdout, stderr = neighbors("--index", str(indexed / "idx"), "--image", str(image), "--model", other)
    assert code == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1
    assert stderr.startswith(f"error: --model {other} (")
    assert f"is not the model that embedded the index {indexed / 'idx'}" in stderr


def test_a_model_of_another_vector_length_is_refused_in_one_line(tmp_path: Path) -> None:
    # A table that does not record its model (not written by raeflow embed): only the length can be checked.
    write_part(
        tmp_path / "emb", "part-0.parquet", [f"k{i}" for i in range(20)], clustered(20, 32, 1), fingerprint=""
    )
    built = CliRunner().invoke(
        main, ["index", "--data", str(tmp_path / "emb"), "--out", str(tmp_path / "idx"), "-q"]
    )
    assert built.exit_code == 0, built.output
    write_digits(tmp_path / "images", num=1)
    image = tmp_path / "images" / "d" / "00.png"
    code, _, stderr = neighbors("--index", str(tmp_path / "idx"), "--image", str(image), "--model", MODEL)
    assert code == 2 and len(stderr.splitlines()) == 1
    assert stderr.strip() == (
        f"error: --model {MODEL} makes vectors of 128 values; the index {tmp_path / 'idx'} holds vectors "
        "of 32: search with the bundle that embedded its table"
    )


def test_an_image_that_cannot_be_read_is_one_line(indexed: Path, tmp_path: Path) -> None:
    idx = str(indexed / "idx")
    code, _, stderr = neighbors("--index", idx, "--image", str(tmp_path / "nope.png"), "--model", MODEL)
    assert code == 2 and stderr.strip() == f"error: --image {tmp_path / 'nope.png'} does not exist"
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    code, _, stderr = neighbors("--index", idx, "--image", str(tmp_path / "bad.png"), "--model", MODEL)
    assert code == 2 and len(stderr.splitlines()) == 1
    assert stderr.startswith(f"error: --image {tmp_path / 'bad.png'} cannot be embedded: ")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--key", "d/01", "--image", "x.png", "--model", MODEL], "give either --key KEY"),
        ([], "not neither"),
        (["--image", "x.png"], "--image needs --model"),
        (["--key", "d/01", "--model", MODEL], "--model is used with --image only"),
        (["--key", "d/01", "--html"], "--html needs --out"),
    ],
)
def test_options_that_do_not_go_together_are_one_line(indexed: Path, args: list[str], says: str) -> None:
    code, stdout, stderr = neighbors("--index", str(indexed / "idx"), *args)
    assert code == 2 and stdout == "" and len(stderr.splitlines()) == 1
    assert stderr.startswith("error: ") and says in stderr
