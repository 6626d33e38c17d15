"""Per-image MSE/PSNR/SSIM: known values, the PSNR cap, and agreement with scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from raeflow.report.metrics import PSNR_CAP_DB, image_metrics, mse, psnr, ssim


def _photos() -> list[np.ndarray]:
    """Real photographs shipped in scikit-image's wheel, (H, W, C) float64 in [0, 1], kept small."""
    colour = skdata.astronaut()[::6, ::6] / 255.0  # (86, 86, 3)
    grey = skdata.camera()[::6, ::6, None] / 255.0  # (86, 86, 1)
    coins = skdata.coins()[::3, ::3, None] / 255.0  # (101, 128, 1): not square
    return [colour, grey, coins]


def _nchw(image: np.ndarray) -> np.ndarray:
    return image.transpose(2, 0, 1)[None]  # (1, C, H, W)


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2
    )


def test_psnr_of_a_known_mse() -> None:
    clean = np.full((2, 1, 16, 16), 0.5)
    output = clean.copy()
    output[0] += 0.1  # mse 0.01 -> 20 dB
    output[1] += 0.01  # mse 1e-4 -> 40 dB
    np.testing.assert_allclose(mse(clean, output), [0.01, 1e-4], rtol=1e-9)
    np.testing.assert_allclose(psnr(clean, output), [20.0, 40.0], rtol=1e-9)


def test_identical_images_give_ssim_one_and_capped_psnr() -> None:
    images = np.random.default_rng(0).random((3, 3, 20, 24))
    scores = image_metrics(images, images.copy())
    np.testing.assert_array_equal(scores["mse"], 0.0)
    np.testing.assert_array_equal(scores["psnr"], PSNR_CAP_DB)
    np.testing.assert_allclose(scores["ssim"], 1.0, atol=1e-12)


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.3])
def test_agrees_with_scikit_image_on_real_photos(sigma: float) -> None:
    rng = np.random.default_rng(1)
    for clean in _photos():
        noisy = np.clip(clean + rng.normal(0.0, sigma, clean.shape), 0.0, 1.0)
        ours_ssim = float(ssim(_nchw(clean), _nchw(noisy))[0])
        ours_psnr = float(psnr(_nchw(clean), _nchw(noisy))[0])
        assert ours_ssim == pytest.approx(_skimage_ssim(clean, noisy), abs=1e-6)
        assert ours_psnr == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=1.0), abs=1e-6)


def test_more_noise_scores_worse() -> None:
    clean = _nchw(_photos()[1])
    rng = np.random.default_rng(2)
    noisy = [np.clip(clean + rng.normal(0.0, s, clean.shape), 0, 1) for s in (0.05, 0.2)]
    assert psnr(clean, noisy[0])[0] > psnr(clean, noisy[1])[0]
    assert ssim(clean, noisy[0])[0] > ssim(clean, noisy[1])[0]


def test_torch_batches_score_per_image_and_match_numpy() -> None:
    rng = np.random.default_rng(3)
    clean = np.stack([_nchw(p[:80, :80, :1])[0] for p in _photos()])  # (3, 1, 80, 80)
    noisy = np.clip(clean + rng.normal(0.0, 0.1, clean.shape), 0, 1)
    expected = image_metrics(clean, noisy)
    got = image_metrics(torch.tensor(clean, dtype=torch.float32), torch.tensor(noisy, dtype=torch.float32))
    for name in ("mse", "psnr", "ssim"):
        assert isinstance(got[name], torch.Tensor) and got[name].shape == (3,)
        np.testing.assert_allclose(got[name].numpy(), expected[name], rtol=1e-4, atol=1e-5)
    # Each value belongs to its own image: scoring one image alone gives the same number.
    alone = ssim(clean[1:2], noisy[1:2])
    assert alone[0] == pytest.approx(expected["ssim"][1], abs=1e-12)


def test_tiny_images_use_a_smaller_window() -> None:
    rng = np.random.default_rng(4)
    clean = rng.random((4, 1, 8, 8))
    assert np.all(ssim(clean, clean) == pytest.approx(1.0))
    noisy = np.clip(clean + rng.normal(0, 0.2, clean.shape), 0, 1)
    values = ssim(clean, noisy)
    assert values.shape == (4,) and np.all(values < 0.99) and np.all(np.isfinite(values))


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mse(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 9)))
