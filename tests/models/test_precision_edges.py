"""The edges of `--precision` (issue 17, "Bad input and edges"), with a tiny VAE trained for a few
steps by the plain loop (no Ray) in each precision:

- a bundle trained in bf16 loads and runs in float32, and one trained in float32 runs in bf16;
- an unknown `--precision` is a one-line error listing the choices, in every command that takes it;
- a model whose layers fail in bf16 falls back to float32 (sample says so in one line).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner

import raeflow.models
import raeflow.train.loop
from raeflow.batch.decoding import DecodeSpec, decode_rows
from raeflow.batch.predictors import EncodePredictor
from raeflow.cli import main
from raeflow.data.sources import open_source
from raeflow.models import load_bundle
from raeflow.train.config import TrainConfig
from raeflow.train.plain import run_plain

TINY_VAE = {"channels": [8, 16], "latent_dim": 4}
"""A VAE small enough to train for a few steps in seconds."""


def _train(out: Path, precision: str) -> dict:
    config = TrainConfig(
        data="builtin:mnist",
        model="vae",
        model_args=dict(TINY_VAE),
        out=str(out),
        limit=128,
        epochs=1,
        batch_size=32,
        image_size=(28, 28),
        precision=precision,
    )
    return run_plain(config, quiet=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """precision -> the bundle of a tiny VAE trained a few steps in it."""
    root = tmp_path_factory.mktemp("trained")
    for precision in ("bf16", "fp32"):
        _train(root / precision, precision)
    return {precision: str(root / precision / "model") for precision in ("bf16", "fp32")}


@pytest.fixture(scope="module")
def digits() -> pa.Table:
    """32 MNIST digits, decoded as the batch jobs decode them."""
    source = open_source("builtin:mnist")
    table = next(source.read_shard(source.list_shards()[0], batch_rows=32))
    rows = table.append_column("shard", pa.array([0] * table.num_rows, pa.int64()))
    return decode_rows(rows, DecodeSpec(channels=1, height=28, width=28))


def _embeddings(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


@pytest.mark.parametrize(("trained_in", "run_in"), [("bf16", "fp32"), ("fp32", "bf16")])
def test_a_bundle_trained_in_one_precision_runs_in_the_other(
    trained: dict[str, str], digits: pa.Table, trained_in: str, run_in: str, tmp_path: Path
) -> None:
    bundle = load_bundle(trained[trained_in])
    assert bundle.meta["training"]["precision"] == trained_in
    assert {p.dtype for p in bundle.model.parameters()} == {torch.float32}  # weights stay float32

    same = EncodePredictor(trained[trained_in], precision=trained_in)(digits)
    other = EncodePredictor(trained[trained_in], precision=run_in)(digits)
    assert other.schema.metadata[b"raeflow.precision"] == run_in.encode()
    a, b = _embeddings(same), _embeddings(other)
    assert a.shape == b.shape == (32, 4) and np.isfinite(b).all()
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    assert cosine.mean() >= 0.999, f"mean cosine {cosine.mean():.5f}"

    out = tmp_path / "grid.png"
    result = CliRunner().invoke(main, ["sample", "--model", trained[trained_in], "--out", str(out),
                                       "--n", "4", "--precision", run_in])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].endswith(f"(model in {run_in})") and out.exists()


@pytest.mark.parametrize("command", ["train", "embed", "denoise", "report", "sample"])
def test_an_unknown_precision_is_one_line_listing_the_choices(
    trained: dict[str, str], command: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    if command == "sample":
        args = ["sample", "--model", trained["fp32"], "--out", str(out / "grid.png")]
    else:
        model = "conv" if command == "train" else trained["fp32"]
        args = [command, "--data", "builtin:mnist", "--model", model, "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--precision", "fp16"])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["error: --precision must be one of auto, bf16, fp32, got 'fp16'"]
    assert not out.exists()


def _fails_in_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with layers that raise under bf16 autocast, as a kernel without bf16 support does."""

    def refuse(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if output.dtype == torch.bfloat16:
            raise RuntimeError("\"slow_conv2d_cpu\" not implemented for 'BFloat16'")

    for layer in model.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d | torch.nn.Linear):
            layer.register_forward_hook(refuse)
    return model


def _wrapped(make: Callable[..., object], fix: Callable[[torch.nn.Module], torch.nn.Module]) -> Callable:
    def build(*args: object, **kwargs: object) -> object:
        made = make(*args, **kwargs)
        if isinstance(made, torch.nn.Module):
            return fix(made)
        made.model = fix(made.model)  # type: ignore[attr-defined]  # a Bundle
        return made

    return build


def test_sample_falls_back_to_float32_with_one_line(
    trained: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(raeflow.models, "load_bundle", _wrapped(raeflow.models.load_bundle, _fails_in_bf16))
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(
        main, ["sample", "--model", trained["fp32"], "--out", str(out), "--n", "4", "--precision", "bf16"]
    )
    assert result.exit_code == 0, result.output
    note, summary = result.output.splitlines()
    assert note.startswith("this model does not run in bf16 (") and note.endswith("; using float32")
    assert "not implemented for 'BFloat16'" in note
    assert summary.endswith("(model in fp32)") and out.exists()


def test_training_falls_back_to_float32_and_records_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        raeflow.train.loop, "create_model", _wrapped(raeflow.train.loop.create_model, _fails_in_bf16)
    )
    record = _train(tmp_path / "run", "bf16")
    assert np.isfinite(record["val_loss"])
    assert load_bundle(str(tmp_path / "run" / "model")).meta["training"]["precision"] == "fp32"
    # the epoch's record carries the one line `raeflow train` prints under its summary
    assert record["precision"] == "fp32"
    assert record["precision_note"].endswith("; using float32")
