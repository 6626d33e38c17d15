"""Every family can learn: it overfits 16 real MNIST digits, its loss falling at least 5x on CPU.

This catches a model that is wired wrong but still runs (a detached branch, a dead output layer,
a loss that ignores the target). Models are shrunk by overrides to stay a few seconds each.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raeflow.models import create_model

# family -> (name, overrides, image side: 28 as is, 32 zero-padded, 14 average-pooled, Adam steps)
CASES = {
    "dense": ("dense_mnist", {}, 28, 250),
    "conv": ("conv_mnist", {}, 28, 450),
    "conv_dense": (
        "conv_dense",
        {
            "in_channels": 1,
            "height": 32,
            "width": 32,
            "channels": [8, 16, 32],
            "hidden": [128, 64],
            "latent_dim": 32,
        },
        32,
        300,
    ),
    "strided": (
        "strided",
        {"in_channels": 1, "height": 32, "width": 32, "base_channels": 16, "latent_channels": 16},
        32,
        200,
    ),
    "vae": ("vae", {"in_channels": 1, "height": 32, "width": 32, "channels": [16, 32, 64]}, 32, 300),
    "cvae": ("cvae_mnist", {}, 28, 400),
    "unet": ("unet", {"in_channels": 1, "base_channels": 8, "depth": 2}, 14, 200),  # 14 -> padded to 16
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Several test processes share two cores; one thread each avoids thrashing.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", list(CASES))
def test_family_overfits_sixteen_digits(family: str, mnist_digits: tuple[np.ndarray, np.ndarray]) -> None:
    name, overrides, side, steps = CASES[family]
    images, labels = mnist_digits
    x = torch.from_numpy(images[:16]).float().div(255).unsqueeze(1)  # (16, 1, 28, 28)
    if side > 28:
        pad = (side - 28) // 2
        x = F.pad(x, (pad, pad, pad, pad))  # (16, 1, side, side)
    elif side < 28:
        x = F.avg_pool2d(x, 28 // side)  # (16, 1, side, side)
    y = torch.from_numpy(labels[:16])

    torch.manual_seed(0)
    model = create_model(name, **overrides)
    assert model.arch_name == family

    def objective() -> float:
        model.eval()
        with torch.no_grad():
            return model.loss(x, model(x, y), y)["loss"].item()

    before = objective()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        loss = model.loss(x, model(x, y), y)["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = objective()
    assert after * 5 <= before, f"{family}: loss only went from {before:.4f} to {after:.4f} in {steps} steps"
    if model.conditional:  # the decoder must use the label: a wrong one reconstructs much worse
        with torch.no_grad():
            right = F.mse_loss(model(x, y)["recon"], x).item()
            wrong = F.mse_loss(model(x, (y + 1) % model.num_classes)["recon"], x).item()
        assert wrong >= 2 * right, (
            f"cvae ignores its labels: recon {right:.4f} (right) vs {wrong:.4f} (wrong)"
        )
