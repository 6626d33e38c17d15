"""`raeflow models` lists the zoo: every family, every preset, with contracts and sizes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from raeflow.cli import main
from raeflow.models import create_model, list_presets


def test_models_lists_all_seven_families_and_every_preset() -> None:
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    families = {line.split()[0] for line in lines[1:] if line.strip() and not line[0].isdigit()}
    assert {"dense", "conv", "conv_dense", "strided", "vae", "cvae", "unet"} <= families
    for preset in list_presets():
        row = next(line for line in lines if line.split()[1:2] == [preset.name])
        assert row.split()[0] == preset.family
    assert any("1xanyxany" in line for line in lines)  # unet_grey's contract


def test_models_json_gives_exact_parameter_counts_for_one_family() -> None:
    result = CliRunner().invoke(main, ["models", "--family", "conv", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["preset"] for r in rows] == ["conv_mnist", "conv_denoise", "conv_denoise_wide"]
    assert rows[0]["parameters"] == create_model("conv_mnist").num_parameters
    assert rows[0]["input"] == "1x28x28" and rows[0]["latent"] == "8x4x4"


def test_unknown_family_is_a_one_line_error() -> None:
    result = CliRunner().invoke(main, ["models", "--family", "resnet"])
    assert result.exit_code == 2
    assert "unknown family 'resnet'" in result.output


def test_family_filter_keeps_only_that_familys_presets_in_the_table() -> None:
    result = CliRunner().invoke(main, ["models", "--family", "unet"])
    assert result.exit_code == 0, result.output
    presets = {line.split()[1] for line in result.output.splitlines()[1:] if line.split()[:1] == ["unet"]}
    assert presets == {p.name for p in list_presets("unet")}
    assert not any(line.split()[:1] in (["conv"], ["dense"]) for line in result.output.splitlines())
