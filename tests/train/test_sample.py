"""`raeflow sample`: grids from VAE/CVAE priors, a one-line refusal for other models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def _vae_bundle(tmp_path: Path) -> str:
    import torch

    torch.manual_seed(0)
    return save_bundle(
        create_model("vae", in_channels=1, height=28, width=28, channels=[8, 16], latent_dim=8),
        str(tmp_path / "vae28"),
    )


def test_vae_draws_one_row_per_label_of_the_data(tmp_path: Path) -> None:
    import torch

    from raeflow.data import images
    from raeflow.data.sources import open_source
    from raeflow.models import load_bundle
    from raeflow.train.sample import label_codes, sample_grid

    bundle = _vae_bundle(tmp_path)
    summary = sample_grid(
        bundle, str(tmp_path / "per-label.png"), n=30, data="builtin:mnist", per_label_images=20
    )
    assert summary.labels == list(range(10)) and summary.rows == 10 and summary.num_images == 30
    with Image.open(tmp_path / "per-label.png") as grid:
        cell = 28 * 2
        assert grid.size == (PAD + 3 * (cell + PAD), PAD + 10 * (cell + PAD))

    # Each label's Gaussian is centred on the codes of that label's images, the first 20 of each.
    model = load_bundle(bundle).model
    codes = label_codes(model, "builtin:mnist", per_label_images=20)
    assert codes.counts == dict.fromkeys(range(10), 20)
    source = open_source("builtin:mnist")
    table = next(source.read_shard(source.list_shards()[0]))
    sevens = [
        images.decode_image(d, 1)
        for d, y in zip(table["image"].to_pylist(), table["label"].to_pylist(), strict=True)
        if y == 7
    ]
    x = torch.from_numpy(np.stack(sevens[:20])).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        torch.testing.assert_close(codes.mean[7], model.encode(x).mean(dim=0), rtol=1e-4, atol=1e-5)
    assert bool((codes.std[7] > 0).all())

    one = sample_grid(
        bundle, str(tmp_path / "sevens.png"), n=9, label=7, data="builtin:mnist", per_label_images=20
    )
    assert one.labels == [7] and one.rows == 3 and one.num_images == 9


def test_per_label_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    import pytest

    from raeflow.errors import ConfigError
    from raeflow.train.sample import sample_grid

    vae = _vae_bundle(tmp_path)
    out = str(tmp_path / "x.png")
    with pytest.raises(ConfigError, match="--label needs a conditional model"):
        sample_grid(vae, out, label=3)
    with pytest.raises(ConfigError, match="has no labels"):
        sample_grid(vae, out, data="builtin:photos")
    with pytest.raises(ConfigError, match="--label 12 has no images in builtin:mnist"):
        sample_grid(vae, out, label=12, data="builtin:mnist", per_label_images=2)
    with pytest.raises(ConfigError, match="--data is for unconditional VAEs"):
        sample_grid(_bundle(tmp_path, "cvae_mnist"), out, data="builtin:mnist")
    assert not (tmp_path / "x.png").exists()


def test_vae_rows_follow_a_class_folder(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    from raeflow.train.sample import label_codes

    digits = load_digits()
    for i in range(30):
        name = ["zeros", "ones", "twos"][digits.target[i] % 3]
        folder = tmp_path / "digits" / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 16).clip(0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    from raeflow.models import load_bundle

    codes = label_codes(
        load_bundle(_vae_bundle(tmp_path)).model, str(tmp_path / "digits"), per_label_images=4
    )
    assert sorted(codes.counts) == [0, 1, 2] and set(codes.counts.values()) == {4}
