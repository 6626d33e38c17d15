"""The pretrained bundles shipped in the package: they load as builtin:NAME, match their recorded
checksum, still reach the PSNR their bundle.json records, and the colour model does no harm."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from raeflow.bundles import DESCRIPTIONS, ROOT, heldout_psnr, psnr
from raeflow.cli import main
from raeflow.errors import BundleError
from raeflow.models import load_bundle
from raeflow.models.bundle import read_bundle_meta

NAMES = sorted(DESCRIPTIONS)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_bundle_loads_and_matches_its_recorded_checksum(name: str) -> None:
    bundle = load_bundle(f"builtin:{name}")
    recorded = json.loads((ROOT / name / "bundle.json").read_text())["weights"]
    on_disk = (ROOT / name / "weights.safetensors").read_bytes()
    assert hashlib.sha256(on_disk).hexdigest() == recorded["sha256"] == bundle.fingerprint
    assert len(on_disk) == recorded["bytes"] < 3_000_000
    assert read_bundle_meta(f"builtin:{name}")["training"]["command"].startswith("raeflow train ")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_bundle_reaches_its_recorded_held_out_psnr(name: str) -> None:
    torch.set_num_threads(2)
    bundle = load_bundle(f"builtin:{name}")
    recorded = bundle.meta["heldout"]["psnr"]
    assert abs(heldout_psnr(name, bundle.model) - recorded) <= 0.2


def test_denoisers_record_their_benchmark_psnr() -> None:
    grey = read_bundle_meta("builtin:denoise-grey")
    for key in ("BSD68/15", "BSD68/25", "BSD68/50", "Set12/25"):
        assert 20 < grey["benchmark"][key]["psnr"] < 40
        assert grey["benchmark"][key]["psnr"] > grey["benchmark"][key]["noisy_psnr"] + 3
    rgb = read_bundle_meta("builtin:denoise-rgb")
    assert rgb["benchmark"]["crops/25"]["psnr"] > rgb["benchmark"]["crops/25"]["noisy_psnr"] + 3
    assert set(rgb["training"]["held_out_photos"]).isdisjoint(rgb["training"]["photos"])


def _photo(name: str) -> np.ndarray:
    from skimage import data as skdata

    return np.asarray(getattr(skdata, name)(), dtype=np.float32)[..., :3] / 255.0  # (H, W, 3)


@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
def test_colour_model_never_makes_a_lightly_noisy_photo_worse(photo: str) -> None:
    torch.set_num_threads(2)
    model = load_bundle("builtin:denoise-rgb").model
    clean = _photo(photo)[:256, :320]  # held-out photos (never trained on)
    rng = np.random.default_rng(5)
    noisy = np.clip(clean + rng.standard_normal(clean.shape).astype(np.float32) * 5 / 255, 0, 1)
    with torch.no_grad():
        out = model(torch.from_numpy(noisy.transpose(2, 0, 1).copy())[None])["recon"][0].numpy()
    assert psnr(clean, out.transpose(1, 2, 0)) > psnr(clean, noisy)


@pytest.mark.parametrize("photo", ["astronaut", "coffee"])
def test_colour_model_returns_a_clean_photo_unchanged(photo: str) -> None:
    # The noise guard: a photo without noise has nothing to remove, so none of its detail goes.
    model = load_bundle("builtin:denoise-rgb").model
    clean = _photo(photo)[:256, :320]
    x = torch.from_numpy(clean.transpose(2, 0, 1).copy())[None]  # (1, 3, H, W)
    with torch.no_grad():
        out = model(x)["recon"]
    # The same 8-bit pixels (the opponent colour transform round-trips to within float rounding).
    assert torch.equal(out.mul(255).round(), x.mul(255).round())


def test_unknown_builtin_name_is_a_one_line_error_naming_the_shipped_ones() -> None:
    with pytest.raises(BundleError, match="builtin:denoise-grey") as err:
        load_bundle("builtin:denoise-greyy")
    assert "\n" not in str(err.value)


def test_models_command_lists_the_shipped_models() -> None:
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    shipped = result.output.split("pretrained models shipped with raeflow")[1]
    for name in NAMES:
        assert f"builtin:{name}" in shipped
    assert "BSD68 sigma 25" in shipped
    rows = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    assert {r["preset"] for r in rows if r["family"] == "builtin"} == {f"builtin:{n}" for n in NAMES}
