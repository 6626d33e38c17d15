"""`raeflow sample`: grids from VAE/CVAE priors, a one-line refusal for other models."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from raeflow.cli import main
from raeflow.models import create_model, save_bundle
from raeflow.train.grids import PAD


def _bundle(tmp_path: Path, name: str, **args) -> str:
    return save_bundle(create_model(name, **args), str(tmp_path / name))


def test_vae_samples_fill_a_square_grid(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "vae", in_channels=1, height=32, width=32, channels=[8, 16], latent_dim=4)
    result = CliRunner().invoke(
        main, ["sample", "--model", bundle, "--out", str(tmp_path / "s.png"), "--n", "9"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 9 samples in 3 rows" in result.output
    with Image.open(tmp_path / "s.png") as grid:
        assert grid.size == (PAD + 3 * (32 + PAD), PAD + 3 * (32 + PAD))


def test_cvae_without_label_draws_one_row_per_label(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "cvae_mnist")
    out = tmp_path / "per-label.png"
    result = CliRunner().invoke(main, ["sample", "--model", bundle, "--out", str(out), "--n", "20"])
    assert result.exit_code == 0, result.output
    assert "in 10 rows" in result.output
    with Image.open(out) as grid:
        cell = 28 * 2  # 28-pixel digits are enlarged twice for readability
        assert grid.size == (PAD + 2 * (cell + PAD), PAD + 10 * (cell + PAD))
    one = CliRunner().invoke(
        main, ["sample", "--model", bundle, "--out", str(tmp_path / "7.png"), "--label", "7"]
    )
    assert one.exit_code == 0 and "64 samples in 8 rows" in one.output


def test_non_generative_bundle_is_refused_in_one_line(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "conv")
    result = CliRunner().invoke(main, ["sample", "--model", bundle, "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "cannot generate images" in result.output
    assert not (tmp_path / "x.png").exists()
    bad_label = CliRunner().invoke(
        main,
        [
            "sample",
            "--model",
            _bundle(tmp_path, "cvae_mnist"),
            "--out",
            str(tmp_path / "y.png"),
            "--label",
            "12",
        ],
    )
    assert bad_label.exit_code == 2 and "--label must be between 0 and 9" in bad_label.output
