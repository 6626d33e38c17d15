"""Tiny model bundles and small real-image inputs for the batch-job tests."""

from __future__ import annotations

import numpy as np
import pytest

from raeflow.models import create_model, save_bundle


@pytest.fixture(scope="session")
def conv_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained 1x28x28 conv autoencoder (embedding of 4 x 7 x 7 = 196 floats)."""
    return save_bundle(create_model("conv", channels=[4, 4]), str(tmp_path_factory.mktemp("conv") / "model"))


@pytest.fixture(scope="session")
def vae_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained 1x28x28 VAE with a 6-d latent."""
    model = create_model("vae", in_channels=1, height=28, width=28, channels=[4, 8], latent_dim=6)
    return save_bundle(model, str(tmp_path_factory.mktemp("vae") / "model"))


@pytest.fixture(scope="session")
def unet_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained grey U-Net (any size), 4-8-16 channels."""
    model = create_model("unet", in_channels=1, base_channels=4, depth=2)
    return save_bundle(model, str(tmp_path_factory.mktemp("unet") / "model"))


@pytest.fixture(scope="session")
def trained_unet_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A grey U-Net (4-8-16 channels) trained for a few seconds to reproduce 48x48 crops of a photo,
    so its output follows its input (an untrained one gives a flat image that hides seams)."""
    import torch
    from skimage import data

    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, base_channels=4, depth=2)
    camera = torch.from_numpy(data.camera()).float().div(255)  # (512, 512)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        tops, lefts = torch.randint(0, 512 - 48, (2, 8), generator=generator)
        x = torch.stack([camera[t : t + 48, s : s + 48] for t, s in zip(tops, lefts, strict=True)])[
            :, None
        ]  # (8, 1, 48, 48)
        loss = model.loss(x, model(x))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return save_bundle(model.eval(), str(tmp_path_factory.mktemp("unet_trained") / "model"))


@pytest.fixture(scope="session")
def unet_rgb_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained RGB U-Net (any size), 4-8-16 channels."""
    model = create_model("unet", in_channels=3, base_channels=4, depth=2)
    return save_bundle(model, str(tmp_path_factory.mktemp("unet_rgb") / "model"))


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """scikit-image's camera man, 512x512 grey, as `(H, W, 1)` uint8."""
    from skimage import data

    return data.camera()[:, :, None]


@pytest.fixture(scope="session")
def colour_photo() -> np.ndarray:
    """scikit-image's astronaut, 512x512 RGB, as `(H, W, 3)` uint8."""
    from skimage import data

    return data.astronaut()


@pytest.fixture()
def ray_address(ray_session: None) -> str:
    """The address of the shared test Ray, for CLI subprocesses (`--address`)."""
    import ray

    return ray.get_runtime_context().gcs_address
