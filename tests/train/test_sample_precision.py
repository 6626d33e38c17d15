"""`raeflow sample --precision auto|bf16|fp32`: the same draws in either precision, a one-line
error for another value, and a line when bf16 is forced where the CPU has no native bf16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from raeflow.cli import main
from raeflow.models import create_model, save_bundle
from raeflow.models import precision as prec


@pytest.fixture(scope="module")
def vae(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    model = create_model("vae", in_channels=1, height=28, width=28, channels=[8, 16], latent_dim=4)
    return save_bundle(model, str(tmp_path_factory.mktemp("bundles") / "vae"))


def _sample(vae: str, out: Path, *extra: str) -> list[str]:
    result = CliRunner().invoke(main, ["sample", "--model", vae, "--out", str(out), "--n", "16", *extra])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as grid:
        return np.asarray(grid).astype(np.float64)


def test_the_same_draws_in_fp32_and_bf16(vae: str, tmp_path: Path) -> None:
    assert _sample(vae, tmp_path / "fp32.png", "--precision", "fp32") == [
        f"wrote 16 samples in 4 rows to {tmp_path / 'fp32.png'} (model in fp32)"
    ]
    assert _sample(vae, tmp_path / "bf16.png", "--precision", "bf16")[-1].endswith("(model in bf16)")
    _sample(vae, tmp_path / "other-seed.png", "--precision", "fp32", "--seed", "1")
    exact, fast = _pixels(tmp_path / "fp32.png"), _pixels(tmp_path / "bf16.png")
    # bf16 rounding moves a pixel by a few grey levels; other draws (another seed) by tens.
    assert np.abs(exact - fast).mean() < 2.0
    assert np.abs(exact - _pixels(tmp_path / "other-seed.png")).mean() > 10.0


def test_an_unknown_precision_is_one_line_listing_the_choices(vae: str, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    result = CliRunner().invoke(main, ["sample", "--model", vae, "--out", str(out), "--precision", "fp16"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["error: --precision must be one of auto, bf16, fp32, got 'fp16'"]
    assert not out.exists()
    help_text = CliRunner().invoke(main, ["sample", "--help"]).output
    assert "--precision" in help_text and "auto" in help_text and "bf16" in help_text


def test_forced_bf16_without_native_support_says_it_is_slower(
    vae: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    auto = _sample(vae, tmp_path / "auto.png")
    assert len(auto) == 1 and auto[0].endswith("(model in fp32)")  # auto never picks a slow bf16
    forced = _sample(vae, tmp_path / "bf16.png", "--precision", "bf16")
    assert len(forced) == 2 and forced[1].endswith("(model in bf16)")
    assert "no native bf16" in forced[0] and "slower than float32" in forced[0]
