"""Per-image reconstruction metrics: MSE, PSNR and SSIM on batches of images in [0, 1].

Inputs are `(B, C, H, W)` float arrays, either `torch.Tensor` (any device: the work stays there,
so training can score a GPU batch without a copy) or `numpy.ndarray`. Every function returns one
value per image, `(B,)`, of the same kind as its input (tensor in, tensor out; array in, array
out). Ray-free and model-free.

Conventions, fixed here so every report and training log agrees:
- the data range is 1 (images in [0, 1]);
- PSNR is capped at `PSNR_CAP_DB` (100 dB): identical images would give +inf, which breaks means,
  histograms and Parquet statistics, so the MSE is floored at `10 ** (-PSNR_CAP_DB / 10)`;
- SSIM is Wang et al. (2004): an 11x11 gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
  population (co)variances, averaged over the positions where the window fits inside the image and
  over channels. That is `skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=...)`, checked in the tests.
  Images smaller than 11 pixels on a side (8x8 digits) use the largest odd window that fits, with
  the same sigma (skimage refuses them).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP_DB = 100.0
"""PSNR reported for (near-)identical images, instead of +inf."""
SSIM_SIGMA = 1.5
"""Standard deviation of the SSIM gaussian window, in pixels."""
SSIM_WINDOW = 11
"""Side of the SSIM window (radius int(3.5 * sigma + 0.5) = 5, as scipy/skimage truncate it)."""
SSIM_K1 = 0.01
SSIM_K2 = 0.03

Batch = TypeVar("Batch", torch.Tensor, np.ndarray)

_MIN_MSE = 10.0 ** (-PSNR_CAP_DB / 10.0)


def _as_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The batch as a floating tensor (NumPy becomes float64 on the CPU for exact comparisons)."""
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float64))
    if not images.is_floating_point():
        return images.float()
    return images


def _like_input(values: torch.Tensor, original: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Per-image values of the same kind as the caller's input."""
    if isinstance(original, np.ndarray):
        return values.detach().cpu().numpy().astype(np.float64)
    return values.detach()


def _check_pair(clean: torch.Tensor, output: torch.Tensor) -> None:
    if clean.ndim != 4 or clean.shape != output.shape:
        raise ValueError(
            f"metrics need two (B, C, H, W) batches of the same shape, got {tuple(clean.shape)} "
            f"and {tuple(output.shape)}"
        )


def mse(clean: Batch, output: Batch) -> Batch:
    """Mean squared error per image, `(B,)`."""
    x, y = _as_tensor(clean), _as_tensor(output)
    _check_pair(x, y)
    values = (x - y).pow(2).flatten(1).mean(dim=1)  # (B,)
    return _like_input(values, clean)  # type: ignore[return-value]


def psnr_from_mse(mse_values: Batch) -> Batch:
    """PSNR in dB for data range 1, capped at `PSNR_CAP_DB`, from per-image MSE values."""
    if isinstance(mse_values, np.ndarray):
        return 10.0 * np.log10(1.0 / np.maximum(mse_values.astype(np.float64), _MIN_MSE))
    return 10.0 * torch.log10(1.0 / mse_values.clamp_min(_MIN_MSE))


def psnr(clean: Batch, output: Batch) -> Batch:
    """Peak signal-to-noise ratio per image in dB, `(B,)`, data range 1, capped at `PSNR_CAP_DB`."""
    return psnr_from_mse(mse(clean, output))


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """Normalised 1-D gaussian weights, `(size,)`."""
    offsets = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def _window_size(height: int, width: int) -> int:
    """`SSIM_WINDOW`, or the largest odd size that fits a smaller image."""
    fit = min(height, width)
    if fit >= SSIM_WINDOW:
        return SSIM_WINDOW
    return fit if fit % 2 == 1 else fit - 1


def _local_mean(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted mean over every window that fits inside the image ("valid" positions)."""
    channels = images.shape[1]
    size = weights.numel()
    horizontal = weights.view(1, 1, 1, size).expand(channels, 1, 1, size)
    vertical = weights.view(1, 1, size, 1).expand(channels, 1, size, 1)
    out = F.conv2d(images, horizontal, groups=channels)  # (B, C, H, W - size + 1)
    return F.conv2d(out, vertical, groups=channels)  # (B, C, H - size + 1, W - size + 1)


def ssim(clean: Batch, output: Batch) -> Batch:
    """Structural similarity per image, `(B,)`, in [-1, 1]; 1 means identical."""
    x, y = _as_tensor(clean), _as_tensor(output)
    _check_pair(x, y)
    dtype = torch.promote_types(x.dtype, y.dtype)
    x, y = x.to(dtype), y.to(dtype)
    weights = _gaussian_window(_window_size(x.shape[2], x.shape[3]), SSIM_SIGMA, x)
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1

    mu_x, mu_y = _local_mean(x, weights), _local_mean(y, weights)
    var_x = _local_mean(x * x, weights) - mu_x * mu_x
    var_y = _local_mean(y * y, weights) - mu_y * mu_y
    cov_xy = _local_mean(x * y, weights) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    ssim_map = numerator / denominator  # (B, C, H', W')
    return _like_input(ssim_map.flatten(1).mean(dim=1), clean)  # type: ignore[return-value]


def image_metrics(clean: Batch, output: Batch) -> dict[str, Batch]:
    """`mse`, `psnr` and `ssim` per image, each `(B,)`, in one call."""
    mse_values = mse(clean, output)
    return {"mse": mse_values, "psnr": psnr_from_mse(mse_values), "ssim": ssim(clean, output)}
