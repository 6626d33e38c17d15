"""Checkpoints are bundles plus safetensors optimizer state: nothing pickled, resumable exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raeflow.errors import BundleError, ConfigError
from raeflow.models import create_model, load_bundle
from raeflow.train.checkpoints import TrainerState, read_checkpoint, write_checkpoint


def _trained_conv(steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model("conv")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        x = torch.rand(4, 1, 28, 28)
        loss = model.loss(x, model(x))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, optimizer


def test_checkpoint_is_a_bundle_with_safetensors_optimizer_state(tmp_path: Path) -> None:
    model, optimizer = _trained_conv()
    folder = write_checkpoint(
        tmp_path / "ckpt",
        model,
        optimizer,
        TrainerState(epochs_done=2, step=3, best_val_loss=0.5),
        training={"data": "builtin:mnist", "epochs": 2},
        metrics={"val_psnr": 12.0},
        settings={"lr": 1e-3},
    )
    names = {path.name for path in folder.iterdir()}
    assert names == {
        "weights.safetensors",
        "bundle.json",
        "optimizer.safetensors",
        "optimizer.json",
        "trainer_state.json",
    }
    bundle = load_bundle(str(folder))  # any checkpoint is a usable bundle
    assert bundle.meta["training"]["epochs"] == 2
    assert bundle.model(torch.rand(2, 1, 28, 28))["recon"].shape == (2, 1, 28, 28)

    torch.manual_seed(1)
    fresh = create_model("conv")
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    state = read_checkpoint(folder, fresh, fresh_optimizer)
    assert (state.epochs_done, state.step, state.best_val_loss) == (2, 3, 0.5)
    for mine, theirs in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)
    before, after = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert before["param_groups"][0]["lr"] == after["param_groups"][0]["lr"]
    assert tuple(after["param_groups"][0]["betas"]) == (0.9, 0.999)
    for key, values in before["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(values[name], after["state"][key][name]), (key, name)


def test_resumed_optimizer_continues_exactly(tmp_path: Path) -> None:
    model, optimizer = _trained_conv()
    write_checkpoint(
        tmp_path / "c", model, optimizer, TrainerState(1, 3), training={}, metrics={}, settings={}
    )
    restored = create_model("conv")
    restored_optimizer = torch.optim.Adam(restored.parameters(), lr=1e-3)
    read_checkpoint(tmp_path / "c", restored, restored_optimizer)
    x = torch.rand(4, 1, 28, 28)
    for net, opt in ((model, optimizer), (restored, restored_optimizer)):
        loss = net.loss(x, net(x))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for mine, theirs in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-7)


def test_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    model, optimizer = _trained_conv(steps=1)
    write_checkpoint(
        tmp_path / "c", model, optimizer, TrainerState(1, 1), training={}, metrics={}, settings={}
    )
    other = create_model("dense")
    with pytest.raises(BundleError, match="new --out"):
        read_checkpoint(tmp_path / "c", other, torch.optim.Adam(other.parameters()))


def _run_folder_holding(tmp_path, model) -> str:
    """A run folder whose latest Ray Train checkpoint is a bundle of `model`."""
    import json

    from raeflow.models import save_bundle
    from raeflow.train.checkpoints import CHECKPOINTS_DIR
    from raeflow.train.trainer import SNAPSHOT_FILE

    save_bundle(model, str(tmp_path / CHECKPOINTS_DIR / "checkpoint-epoch-0002"))
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint-epoch-0002"}}
    (tmp_path / CHECKPOINTS_DIR / SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    return str(tmp_path)


def test_a_run_continues_when_only_an_argument_added_since_has_its_default(tmp_path) -> None:
    import json
    from types import SimpleNamespace

    from raeflow.train.trainer import _check_same_model

    out = _run_folder_holding(tmp_path, create_model("denoise_grey"))
    meta = tmp_path / "checkpoints" / "checkpoint-epoch-0002" / "bundle.json"
    record = json.loads(meta.read_text())
    del record["architecture"]["args"]["colour_space"]  # a run made before the argument existed
    meta.write_text(json.dumps(record))
    plan = SimpleNamespace(model_name="denoiser", model_args=create_model("denoise_grey").arch_args)
    _check_same_model(SimpleNamespace(out=out), plan)  # colour_space="rgb" now: the same model

    plan.model_args = {**plan.model_args, "noise_guard": None}
    with pytest.raises(ConfigError, match=r"noise_guard: \[4.0, 10.0\] in the run, None now") as err:
        _check_same_model(SimpleNamespace(out=out), plan)
    assert "\n" not in str(err.value)
