"""Model bundles: a round trip gives the same model; anything damaged or mismatched is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
import torch
from safetensors.torch import load_file

from raeflow.errors import BundleError, ConfigError
from raeflow.models import create_model, load_bundle, save_bundle
from raeflow.models.bundle import META_FILE, WEIGHTS_FILE, read_bundle_meta


def _trained_looking(name: str, **overrides) -> torch.nn.Module:
    """A model whose weights (and batch-norm statistics) differ from a fresh build."""
    torch.manual_seed(3)
    model = create_model(name, **overrides)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.01)
    return model.eval()


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = _trained_looking("strided", in_channels=1, height=16, width=16, depth=2, base_channels=4)
    folder = tmp_path / "model"
    save_bundle(
        model, str(folder), training={"data": "builtin:mnist", "epochs": 2}, metrics={"val_mse": 0.01}
    )
    return model, folder


def test_local_round_trip_gives_identical_outputs_and_metadata(saved: tuple[torch.nn.Module, Path]) -> None:
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [META_FILE, WEIGHTS_FILE]  # no temp files left
    bundle = load_bundle(str(folder))
    assert not bundle.model.training
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(bundle.model(x)["recon"], model(x)["recon"])
        assert torch.equal(bundle.model.embed(x), model.embed(x))
    meta = json.loads((folder / META_FILE).read_text())
    assert meta == bundle.meta
    assert meta["architecture"] == {"name": "strided", "args": model.arch_args}
    assert meta["input_contract"] == {"channels": 1, "height": 16, "width": 16, "value_range": [0, 1]}
    assert meta["latent_shape"] == list(model.latent_shape)
    assert meta["training"]["epochs"] == 2 and meta["metrics"] == {"val_mse": 0.01}
    assert meta["weights"]["sha256"] == bundle.fingerprint and len(bundle.fingerprint) == 64
    assert meta["raeflow_version"] and meta["created"]


def test_weights_are_plain_safetensors_not_pickle(saved: tuple[torch.nn.Module, Path]) -> None:
    model, folder = saved
    data = (folder / WEIGHTS_FILE).read_bytes()
    assert not data.startswith(b"\x80")  # pickle protocol marker; torch.save zips start with PK
    assert not data.startswith(b"PK")
    tensors = load_file(folder / WEIGHTS_FILE)  # safetensors' own reader, no torch.load
    assert set(tensors) == set(model.state_dict())


@pytest.mark.parametrize("uri_kind", ["memory", "s3"])
def test_round_trip_through_fsspec_uris(uri_kind: str, request: pytest.FixtureRequest) -> None:
    model = _trained_looking("vae", in_channels=1, height=8, width=8, channels=[4], latent_dim=3)
    if uri_kind == "memory":
        uri = "memory://bundles/test-round-trip/model"
    else:
        uri = request.getfixturevalue("s3_bucket") + "/runs/vae/model"
    assert save_bundle(model, uri) == uri
    bundle = load_bundle(uri)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(bundle.model(x)["recon"], model(x)["recon"])
    assert bundle.model.generative and bundle.meta["architecture"]["name"] == "vae"


def test_saving_again_replaces_the_bundle(saved: tuple[torch.nn.Module, Path]) -> None:
    _, folder = saved
    other = _trained_looking("conv", in_channels=1, height=8, width=8, channels=[2])
    save_bundle(other, str(folder))
    assert load_bundle(str(folder)).meta["architecture"]["name"] == "conv"


def test_flipped_byte_in_weights_is_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, folder = saved
    path = folder / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(str(folder))


def test_truncated_weights_are_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, folder = saved
    path = folder / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError, match="truncated"):
        load_bundle(str(folder))


def test_unknown_architecture_is_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, folder = saved
    meta = json.loads((folder / META_FILE).read_text())
    meta["architecture"]["name"] = "transformer"
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="architecture this raeflow cannot build"):
        load_bundle(str(folder))


def test_missing_folder_and_missing_files_are_refused(
    saved: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    _, folder = saved
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="no bundle.json"):
        load_bundle(str(empty))
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match=f"no {WEIGHTS_FILE}"):
        load_bundle(str(folder))


def test_garbage_bundle_json_is_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, folder = saved
    (folder / META_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle_meta(str(folder))


def test_input_contract_mismatch_names_both_shapes(saved: tuple[torch.nn.Module, Path]) -> None:
    _, folder = saved
    bundle = load_bundle(str(folder))
    bundle.check_input(1, 16, 16)
    with pytest.raises(BundleError) as err:
        bundle.check_input(3, 64, 48)
    message = str(err.value)
    assert "1x16x16" in message and "3x64x48" in message and "\n" not in message


def test_fully_convolutional_bundle_accepts_any_size(tmp_path: Path) -> None:
    model = create_model("unet", in_channels=3, base_channels=2, depth=1)
    bundle = load_bundle(save_bundle(model, str(tmp_path / "unet")))
    bundle.check_input(3, 481, 321)
    with pytest.raises(BundleError, match="3xanyxany"):
        bundle.check_input(1, 481, 321)


def test_bundle_json_is_written_after_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    fs = fsspec.filesystem("memory")
    real_pipe = fs.pipe_file

    def recording_pipe(path: str, value: bytes, **kwargs) -> None:
        order.append(path.rsplit("/", 1)[-1])
        real_pipe(path, value, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", recording_pipe)
    save_bundle(create_model("dense", hidden=[4], latent_dim=2), "memory://order/model")
    assert order == [WEIGHTS_FILE, META_FILE]


def test_wrapped_models_save_as_the_model_inside(tmp_path: Path) -> None:
    class Wrapper(torch.nn.Module):  # how DistributedDataParallel holds the model
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    model = create_model("dense", hidden=[4], latent_dim=2)
    bundle = load_bundle(save_bundle(Wrapper(model), str(tmp_path / "m")))
    assert set(bundle.model.state_dict()) == set(model.state_dict())
    with pytest.raises(ConfigError, match="create_model"):
        save_bundle(torch.nn.Linear(2, 2), str(tmp_path / "plain"))


def test_bundle_json_without_architecture_record_is_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, folder = saved
    meta = json.loads((folder / META_FILE).read_text())
    del meta["architecture"]
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="lacks its weights or architecture record"):
        load_bundle(str(folder))


def test_local_bundle_files_are_readable_by_others(saved: tuple[torch.nn.Module, Path]) -> None:
    _, folder = saved
    for name in (META_FILE, WEIGHTS_FILE):
        assert (folder / name).stat().st_mode & 0o044 == 0o044
