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
    grey = create_model("denoise_grey").eval()
    colour = create_model("denoise_rgb_per_channel", colour_space="rgb").eval()
    torch.nn.init.normal_(grey.head.weight, std=0.01)
    colour.load_state_dict(grey.state_dict())  # the same weights fit both
    x = torch.rand(2, 3, 21, 34)
    with torch.no_grad():
        expected = torch.cat([grey(x[:, c : c + 1])["recon"] for c in range(3)], dim=1)
        assert torch.allclose(colour(x)["recon"], expected, atol=1e-6)
        assert colour.embed(x).shape == (2, 48)


def test_opponent_colour_model_denoises_brightness_and_colour_differences() -> None:
    from raeflow.models.denoiser import OPPONENT, OPPONENT_OFFSET

    torch.manual_seed(0)
    grey = create_model("denoise_grey", noise_guard=None).eval()
    colour = create_model("denoise_rgb_per_channel", noise_guard=None).eval()
    assert colour.colour_space == "opponent"
    torch.nn.init.normal_(grey.head.weight, std=0.01)
    colour.load_state_dict(grey.state_dict())
    x = torch.rand(1, 3, 20, 34)
    with torch.no_grad():
        opponent = torch.einsum("oc,bchw->bohw", OPPONENT, x) + OPPONENT_OFFSET[:, None, None]
        denoised = torch.cat(
            [torch.nn.functional.pixel_shuffle(grey.encode(opponent[:, c : c + 1]), 2) for c in range(3)],
            dim=1,
        )
        rgb = torch.einsum(
            "co,bohw->bchw", torch.linalg.inv(OPPONENT), denoised - OPPONENT_OFFSET[:, None, None]
        )
        assert torch.allclose(colour(x)["recon"], rgb.clamp(0, 1), atol=1e-5)
        assert torch.equal(colour.decode(colour.encode(x)), colour(x)["recon"])
        # Untrained (the last layer at zero), it still returns its input: the transform round-trips.
        assert torch.allclose(create_model("denoise_rgb_per_channel").eval()(x)["recon"], x, atol=1e-6)


def test_opponent_colours_need_three_channels() -> None:
    from raeflow.errors import ConfigError

    with pytest.raises(ConfigError, match="colour_space"):
        create_model("denoise_grey", colour_space="opponent")


def _camera() -> torch.Tensor:
    from skimage import data as skdata

    return torch.from_numpy(skdata.camera().astype("float32") / 255.0)[None, None]  # (1, 1, 512, 512)


@pytest.mark.parametrize("sigma", [5.0, 15.0, 30.0])
def test_noise_estimate_finds_the_added_noise_on_a_real_photo(sigma: float) -> None:
    from raeflow.models.denoiser import estimate_noise

    clean = _camera()
    generator = torch.Generator().manual_seed(int(sigma))
    noisy = clean + torch.randn(clean.shape, generator=generator) * sigma / 255
    estimate = float(estimate_noise(torch.nn.functional.pixel_unshuffle(noisy, 2), 1)) * 255
    assert abs(estimate - sigma) < 0.15 * sigma + 0.5
    assert float(estimate_noise(torch.nn.functional.pixel_unshuffle(clean, 2), 1)) * 255 < 2.0


def test_noise_sample_of_a_large_photo_reads_as_the_whole_photo() -> None:
    import numpy as np

    from raeflow.models.denoiser import estimate_noise, noise_sample

    rng = np.random.default_rng(0)
    clean = np.tile(_camera()[0, 0].numpy(), (4, 6))  # 2048x3072, flat sky and grass alike
    noisy = np.clip(clean + rng.normal(0, 6 / 255, clean.shape), 0, 1).astype("float32")[:, :, None]
    sample = noise_sample(noisy)
    assert sample.shape[0] * sample.shape[1] <= 4096 * 16 * 16 and sample.shape[2] == 1

    def level(image: np.ndarray) -> float:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        return float(estimate_noise(torch.nn.functional.pixel_unshuffle(x, 2), 1)) * 255

    assert abs(level(sample) - level(noisy)) < 0.2
    assert noise_sample(noisy[:512, :512]).shape == (512, 512, 1)  # small enough: all of it


def _as_if_trained(preset: str = "denoise_grey") -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(preset)
    torch.nn.init.normal_(model.head.weight, std=0.02)  # removes "noise" from any image, clean or not
    return model.eval()


def test_noise_guard_returns_a_clean_photo_unchanged_and_denoises_a_noisy_one() -> None:
    model = _as_if_trained()
    assert model.noise_guard == (4.0, 10.0)
    clean = _camera()[..., :128, :160]
    noisy = clean + torch.randn(clean.shape, generator=torch.Generator().manual_seed(1)) * 25 / 255
    with torch.no_grad():
        assert torch.equal(model(clean)["recon"], clean)  # below `low`: left as it is
        guarded = model(noisy)["recon"]
        model.noise_guard = None
        unguarded = model(noisy)["recon"]
        assert not torch.equal(model(clean)["recon"], clean)  # without the guard it would change it
    removed = (noisy - guarded).clamp(-1, 1)
    assert not torch.equal(guarded, noisy)
    # What is removed is never stronger than the estimated noise (about 25/255).
    assert float(removed.pow(2).mean().sqrt()) <= 26 / 255
    assert float((noisy - unguarded).pow(2).mean().sqrt()) > float(removed.pow(2).mean().sqrt())


def test_noise_guard_is_off_while_training_and_survives_a_bundle(tmp_path) -> None:
    from raeflow.models import load_bundle, save_bundle

    model = _as_if_trained("denoise_rgb_per_channel")
    x = torch.rand(1, 3, 24, 20)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x)["recon"], x)  # training sees the network's full output
    loaded = load_bundle(save_bundle(model, str(tmp_path / "m"))).model.eval()
    assert loaded.noise_guard == (4.0, 10.0)
    with torch.no_grad():
        assert torch.equal(loaded(x)["recon"], model.eval()(x)["recon"])


def test_noise_guard_must_be_an_increasing_pair() -> None:
    from raeflow.errors import ConfigError

    with pytest.raises(ConfigError, match="noise_guard"):
        create_model("denoise_small", noise_guard=(10.0, 4.0))
