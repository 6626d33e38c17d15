"""Every preset of the zoo honours the one model interface (the timm habit: loop over the registry)."""

from __future__ import annotations

import json

import pytest
import torch

from raeflow.errors import ConfigError
from raeflow.models import create_model, list_families, list_presets
from raeflow.models.base import Autoencoder

FAMILIES = {"dense", "conv", "conv_dense", "strided", "vae", "cvae", "unet", "denoiser"}
PRESETS = [p.name for p in list_presets()]


def _input_for(model: Autoencoder, height: int = 24, width: int = 40) -> torch.Tensor:
    """A random batch of two images that fits the model's input contract ((2, C, H, W) in [0, 1])."""
    contract = model.input_contract
    h = height if contract["height"] == "any" else contract["height"]
    w = width if contract["width"] == "any" else contract["width"]
    return torch.rand(2, contract["channels"], h, w, generator=torch.Generator().manual_seed(0))


def test_registry_holds_the_eight_families_and_their_presets() -> None:
    assert {f.name for f in list_families()} == FAMILIES
    assert {p.family for p in list_presets()} == FAMILIES
    for name in ("dense_mnist", "conv_mnist", "conv_denoise", "vae_cifar10", "vae_stl10", "cvae_mnist"):
        assert name in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_reconstructs_input_shape_and_every_parameter_learns(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    x = _input_for(model)
    y = torch.tensor([1, 2])
    model.train()
    # A residual denoiser starts as the identity: its loss on a clean input is exactly 0, so it
    # learns from a noisy input against the clean target (what it is trained on).
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1) if model.arch_name == "denoiser" else x
    out = model(noisy, y)
    assert out["recon"].shape == x.shape
    assert torch.isfinite(out["recon"]).all() and torch.isfinite(out["z"]).all()
    assert out["recon"].min() >= 0 and out["recon"].max() <= 1
    losses = model.loss(x, out, y)
    assert {"loss", "recon"} <= set(losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())

    model.eval()
    with torch.no_grad():
        z = model.encode(x)
        assert tuple(z.shape[1:]) == tuple(
            z.shape[1 + i] if d == "any" else d for i, d in enumerate(model.latent_shape)
        )
        assert model.decode(z, y).shape == x.shape
        assert model.embed(x).shape == (2, model.embedding_dim)


@pytest.mark.parametrize("name", PRESETS)
def test_arch_args_rebuild_the_same_model_through_json(name: str) -> None:
    model = create_model(name)
    args = json.loads(json.dumps(model.arch_args))
    rebuilt = create_model(model.arch_name, **args)
    assert rebuilt.arch_args == model.arch_args
    assert rebuilt.num_parameters == model.num_parameters
    assert rebuilt.input_contract == model.input_contract


@pytest.mark.parametrize("name", [p.name for p in list_presets() if p.family in ("vae", "cvae")])
def test_vae_kl_is_non_negative_and_samples_are_images(name: str) -> None:
    model = create_model(name).eval()
    x = _input_for(model)
    out = model(x)
    assert {"mu", "logvar"} <= set(out)
    assert model.loss(x, out)["kl"] >= 0
    assert model.generative
    samples = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (5, *x.shape[1:])
    assert samples.min() >= 0 and samples.max() <= 1
    again = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(samples, again)


def test_cvae_decoder_depends_on_the_label() -> None:
    torch.manual_seed(0)
    model = create_model("cvae_mnist").eval()
    assert model.conditional and model.num_classes == 10
    z = torch.randn(1, *model.latent_shape)
    threes, sevens = model.decode(z, torch.tensor([3])), model.decode(z, torch.tensor([7]))
    assert not torch.allclose(threes, sevens)
    # Unknown labels (-1, out of range, None) all use the same "unknown" conditioning.
    unknown = model.decode(z, None)
    assert torch.equal(unknown, model.decode(z, torch.tensor([-1])))
    assert torch.equal(unknown, model.decode(z, torch.tensor([10])))
    assert model.sample(4, y=torch.full((4,), 7)).shape == (4, 1, 28, 28)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(37, 53), (8, 9), (64, 31)])
def test_unet_takes_any_size_grey_or_rgb(channels: int, size: tuple[int, int]) -> None:
    model = create_model("unet", in_channels=channels, base_channels=4, depth=3).eval()
    assert model.input_contract["height"] == "any" and model.input_contract["width"] == "any"
    x = torch.rand(1, channels, *size)
    with torch.no_grad():
        out = model(x)
    assert out["recon"].shape == x.shape
    assert model.embed(x).shape == (1, model.embedding_dim)


def test_not_generative_models_refuse_to_sample() -> None:
    with pytest.raises(ConfigError, match="not generative"):
        create_model("conv").sample(4)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("resnet", {}, "unknown model 'resnet'"),
        ("conv", {"depth": 3}, "has no argument"),
        ("strided", {"height": 30}, "multiple of 8"),
        ("conv", {"in_channels": 2}, "in_channels must be 1"),
        ("dense", {"recon_loss": "l1"}, "unknown reconstruction loss"),
    ],
)
def test_bad_model_names_and_arguments_are_config_errors(name: str, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_model(name, **overrides)


def test_overrides_apply_on_top_of_a_preset() -> None:
    model = create_model("conv_denoise", in_channels=3)
    assert model.arch_args["channels"] == [32, 32, 16]
    assert model.input_contract["channels"] == 3
    assert model.latent_shape == (16, 4, 4)


@pytest.mark.parametrize("name", PRESETS)
def test_a_batch_of_the_wrong_shape_is_refused_with_both_shapes(name: str) -> None:
    model = create_model(name)
    good = _input_for(model)
    wrong_channels = torch.rand(2, 4 - good.shape[1], *good.shape[2:])  # 1 <-> 3
    with pytest.raises(ConfigError, match=r"got shape \(2, "):
        model(wrong_channels)
    if model.input_contract["height"] != "any":
        with pytest.raises(ConfigError, match="x".join(str(d) for d in good.shape[1:])):
            model.encode(torch.rand(2, good.shape[1], good.shape[2] + 4, good.shape[3]))


def test_cvae_samples_for_a_plain_int_label() -> None:
    assert create_model("cvae_mnist").sample(3, y=7).shape == (3, 1, 28, 28)
