"""The `denoiser` family: blind, residual, any image size, and an untrained model does no harm."""

from __future__ import annotations

import pytest
import torch

from raeflow.models import create_model


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(37, 53), (8, 9), (64, 31), (2, 2)])
def test_denoiser_takes_any_size_grey_or_rgb_and_returns_that_size(
    channels: int, size: tuple[int, int]
) -> None:
    model = create_model("denoise_small", in_channels=channels).eval()
    x = torch.rand(2, channels, *size)
    with torch.no_grad():
        out = model(x)
    assert out["recon"].shape == x.shape
    assert out["recon"].min() >= 0 and out["recon"].max() <= 1
    assert model.embed(x).shape == (2, model.embedding_dim) == (2, 32)


def test_untrained_denoiser_returns_its_input_unchanged() -> None:
    # The last layer starts at zero: training starts from "do no harm", not from a random image.
    model = create_model("denoise_grey").eval()
    x = torch.rand(1, 1, 33, 40)
    with torch.no_grad():
        assert torch.equal(model(x)["recon"], x)


def test_output_is_input_minus_predicted_noise_and_code_round_trips() -> None:
    torch.manual_seed(0)
    model = create_model("denoise_small").eval()
    torch.nn.init.normal_(model.head.weight, std=0.01)  # as if trained: predicts some noise
    x = torch.rand(2, 1, 32, 48) * 0.5 + 0.25
    with torch.no_grad():
        out = model(x)
        folded = torch.nn.functional.pixel_unshuffle(x, 2)
        noise = torch.nn.functional.pixel_shuffle(model.head(model.body(folded)), 2)
        assert torch.allclose(out["recon"], (x - noise).clamp(0, 1), atol=1e-6)
        assert not torch.equal(out["recon"], x)
        assert torch.equal(model.decode(model.encode(x)), out["recon"])
    assert model.latent_shape == (4, "any", "any")


def test_presets_have_the_documented_sizes() -> None:
    grey, rgb = create_model("denoise_grey"), create_model("denoise_rgb")
    assert grey.input_contract["channels"] == 1 and rgb.input_contract["channels"] == 3
    assert grey.input_contract["height"] == "any" and rgb.input_contract["width"] == "any"
    assert 200_000 < grey.num_parameters < rgb.num_parameters < 400_000
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in grey.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in rgb.modules()) == 12  # the middle layers


def test_batch_norm_denoiser_also_starts_as_the_identity() -> None:
    model = create_model("denoise_rgb").eval()
    x = torch.rand(1, 3, 31, 20)
    with torch.no_grad():
        assert torch.equal(model(x)["recon"], x)


def test_per_channel_colour_model_is_the_grey_network_on_each_channel() -> None:
    torch.manual_seed(0)
    grey, colour = create_model("denoise_grey").eval(), create_model("denoise_rgb_per_channel").eval()
    torch.nn.init.normal_(grey.head.weight, std=0.01)
    colour.load_state_dict(grey.state_dict())  # the same weights fit both
    x = torch.rand(2, 3, 21, 34)
    with torch.no_grad():
        expected = torch.cat([grey(x[:, c : c + 1])["recon"] for c in range(3)], dim=1)
        assert torch.allclose(colour(x)["recon"], expected, atol=1e-6)
        assert colour.embed(x).shape == (2, 48)
