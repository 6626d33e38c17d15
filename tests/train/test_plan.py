"""Settings and the run plan: what a user gets refused before any worker starts, and the split."""

from __future__ import annotations

import numpy as np
import pytest

from raeflow.data.sources import open_source
from raeflow.errors import ConfigError
from raeflow.train.batches import DecodeForTraining, is_validation
from raeflow.train.config import TrainConfig, parse_image_size, parse_model_args
from raeflow.train.plan import plan_run


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{"data": "builtin:digits", "model": "conv", "out": "unused", **overrides})


def test_fixed_size_model_refuses_other_sizes_and_says_what_to_pass() -> None:
    with pytest.raises(
        ConfigError, match=r"takes 28x28 images but builtin:digits holds 8x8.*--image-size 8x8"
    ):
        plan_run(_config(), open_source("builtin:digits"))


def test_image_size_builds_the_model_for_it_and_resizes_the_images() -> None:
    plan = plan_run(_config(image_size=(16, 16)), open_source("builtin:digits"))
    assert (plan.height, plan.width, plan.channels) == (16, 16, 1)
    assert plan.model_args == {"height": 16, "width": 16}
    table = next(open_source("builtin:digits").read_shard(open_source("builtin:digits").list_shards()[0]))
    batch = DecodeForTraining(split="train", channels=1, height=16, width=16, val_fraction=0.1)(table)
    assert batch["image"].shape[1:] == (1, 16, 16) and batch["image"].dtype == np.uint8
    assert len(batch["label"]) == len(batch["image"]) and set(batch["label"]) <= set(range(10))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"preset": "dense_mnist"}, "not a preset of 'conv'"),
        ({"beta": 2.0}, "only applies to variational models"),
        ({"model": "nope"}, "unknown model 'nope'"),
    ],
)
def test_wrong_model_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_run(_config(image_size=(16, 16), **overrides), open_source("builtin:digits"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"limit": 1}, "--limit"),
        ({"placement": "anywhere"}, "--placement"),
        ({"cpus_per_worker": 0}, "--cpus-per-worker"),
    ],
)
def test_impossible_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**overrides).validate()


def test_option_parsers() -> None:
    assert parse_image_size("28") == (28, 28)
    assert parse_image_size("32x48") == (32, 48)
    with pytest.raises(ConfigError, match="--image-size"):
        parse_image_size("big")
    assert parse_model_args(["recon_loss=bce", "channels=[32,16]"]) == {
        "recon_loss": "bce",
        "channels": [32, 16],
    }
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_model_args(["recon_loss"])


def test_validation_split_is_stable_and_about_the_asked_fraction() -> None:
    keys = [f"mnist/{i}" for i in range(5000)]
    chosen = [key for key in keys if is_validation(key, 0.1)]
    assert chosen == [key for key in keys if is_validation(key, 0.1)]
    assert 400 < len(chosen) < 600
    assert set(chosen) <= {key for key in keys if is_validation(key, 0.2)}  # a larger split contains it


def test_conditional_model_needs_labels() -> None:
    with pytest.raises(ConfigError, match="conditioned on labels but builtin:photos has none"):
        plan_run(
            _config(data="builtin:photos", model="cvae", image_size=(32, 32)), open_source("builtin:photos")
        )
