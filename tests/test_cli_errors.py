"""User mistakes are one `error:` line with exit code 2, found before Ray starts or anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from raeflow.cli import main
from raeflow.models import create_model, save_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bundles")
    fixed = save_bundle(create_model("conv", in_channels=1, height=8, width=8, channels=[4, 4]), root / "c")
    any_size = save_bundle(create_model("unet", in_channels=1, base_channels=4, depth=1), root / "u")
    return {"fixed": str(fixed), "any": str(any_size)}


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["embed", "--data", "builtin:digits", "--bogus"], "No such option '--bogus'"),
        (["embed", "--model", "m", "--out", "o"], "Missing option '--data'"),
        (["denoise", "--data", "d", "--model", "m", "--out", "o", "--format", "gif"], "'gif' is not one of"),
        (["shard", "--out", "o"], "Missing argument 'SRC'"),
        (["submit", "nope"], "'nope' is not one of"),
        (["nope"], "No such command 'nope'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args: list[str], says: str) -> None:
    line = one_line_error(args)
    assert says in line and "--help" in line


@pytest.mark.parametrize("args", [[], ["jobs"]])
def test_a_bare_group_shows_its_help(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ") and "Commands:" in result.stdout


def test_embed_refuses_bad_values_before_anything_runs(bundles: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["embed", "--data", "builtin:digits", "--model", bundles["fixed"], "--out", str(out)]
    assert (
        one_line_error([*base, "--image-size", "0x0"]) == "error: --image-size must be at least 1x1, got 0x0"
    )
    assert one_line_error([*base, "--batch-size", "0"]) == "error: --batch-size must be at least 1, got 0"
    assert "--image-size must look like" in one_line_error([*base, "--image-size", "big"])
    assert not out.exists()


def test_out_naming_a_file_is_refused(bundles: dict[str, str], tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    for command in ("embed", "denoise", "report"):
        line = one_line_error(
            [command, "--data", "builtin:digits", "--model", bundles["fixed"], "--out", str(file)]
        )
        assert line == f"error: --out {file} is a file; --out names a folder (it is created when missing)"
    line = one_line_error(["shard", "builtin:digits", "--out", str(file)])
    assert "is a file" in line
    assert file.read_text() == "mine"


def test_report_tsne_on_a_model_whose_codes_grow_unpooled_is_refused_first(
    bundles: dict[str, str], tmp_path: Path
) -> None:
    # The embed rule: a fully convolutional model's codes are mapped when its embed() averages them
    # over space (bundle.json's embedding_dim); a bundle without one has no common length to map.
    unpooled = tmp_path / "unpooled"
    shutil.copytree(bundles["any"], unpooled)
    meta = json.loads((unpooled / "bundle.json").read_text())
    del meta["embedding_dim"]
    (unpooled / "bundle.json").write_text(json.dumps(meta))
    out = tmp_path / "report"
    args = ["report", "--data", "builtin:digits", "--model", str(unpooled), "--out", str(out), "--tsne"]
    line = one_line_error(args)
    assert line.startswith(f"error: model {unpooled} is fully convolutional and its code is not averaged")
    assert not out.exists()


def test_quiet_and_verbose_exclude_each_other(bundles: dict[str, str], tmp_path: Path) -> None:
    args = ["embed", "--data", "builtin:digits", "--model", bundles["fixed"], "--out", str(tmp_path / "o")]
    assert "--quiet and --verbose exclude each other" in one_line_error([*args, "--quiet", "--verbose"])


def test_version_is_the_installed_packages(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"raeflow, version {version('raeflow')}"
