"""The report's map step, called directly (no Ray): one scored row per input row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raeflow.report.metrics import psnr
from raeflow.report.predictor import ReportPredictor


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def test_scores_every_usable_row_and_passes_rejects_through(digits_bundle: str, digit_rows: pa.Table) -> None:
    table = ReportPredictor(digits_bundle)(digit_rows)
    assert table.num_rows == digit_rows.num_rows
    assert table.column("key").to_pylist() == digit_rows.column("key").to_pylist()
    reasons = table.column("reason").to_pylist()
    assert reasons[:59] == [None] * 59 and reasons[59].startswith("not_an_image")
    for name in ("mse", "psnr", "ssim"):
        values = _column(table, name)
        assert np.all(np.isfinite(values[:59])) and np.isnan(values[59])
    assert "noisy_psnr" not in table.column_names
    assert np.all((_column(table, "ssim")[:59] <= 1.0) & (_column(table, "mse")[:59] >= 0.0))


def test_noise_is_seeded_by_key_and_scored_against_the_clean_image(
    digits_bundle: str, digit_rows: pa.Table
) -> None:
    first = ReportPredictor(digits_bundle, noise="gaussian:0.1")(digit_rows)
    # Other batch boundaries and order: the same key gets the same noise.
    reordered = pa.concat_tables([digit_rows.slice(30), digit_rows.slice(0, 30)])
    second = ReportPredictor(digits_bundle, noise="gaussian:0.1")(reordered)
    by_key = dict(zip(second.column("key").to_pylist(), _column(second, "noisy_psnr"), strict=True))
    np.testing.assert_array_equal(
        _column(first, "noisy_psnr")[:59], [by_key[k] for k in first["key"].to_pylist()[:59]]
    )
    # sigma 0.1 noise, clipped to [0, 1], on digits that are mostly 0 or 1: well above 20 dB but finite.
    noisy = _column(first, "noisy_psnr")[:59]
    assert np.all((noisy > 19.0) & (noisy < 40.0))
    # The noisy column differs from the model's output column: metrics compare the output, not the input.
    assert not np.allclose(noisy, _column(first, "psnr")[:59])


class _Identity(torch.nn.Module):
    """A stand-in model whose output is its input."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return {"recon": x, "z": x.flatten(1)}


def test_output_is_scored_against_the_clean_image(digits_bundle: str, digit_rows: pa.Table) -> None:
    clean_run = ReportPredictor(digits_bundle)
    clean_run.model = _Identity()
    table = clean_run(digit_rows)
    assert np.all(_column(table, "psnr")[:59] == 100.0)  # identical images: the documented cap
    assert np.allclose(_column(table, "ssim")[:59], 1.0)

    noisy_run = ReportPredictor(digits_bundle, noise="gaussian:0.1")
    noisy_run.model = _Identity()
    table = noisy_run(digit_rows)
    # The identity passes the noise through, so its output scores exactly like the noisy input.
    np.testing.assert_allclose(_column(table, "psnr")[:59], _column(table, "noisy_psnr")[:59])
    assert np.all(_column(table, "psnr")[:59] < 40.0)  # and that is far from the identical-image cap


def test_only_sample_rows_carry_pixels(digits_bundle: str, digit_rows: pa.Table) -> None:
    predict = ReportPredictor(digits_bundle, noise="gaussian:0.2", gallery_size=4, worst_k=3, map_size=10)
    table = predict(digit_rows)
    with_pixels = [i for i, v in enumerate(table.column("clean_png").to_pylist()) if v is not None]
    assert 7 <= len(with_pixels) < 59  # the running selection passes on some, far from all
    worst_psnr = np.sort(_column(table, "psnr")[:59])[:3]
    kept_psnr = _column(table, "psnr")[with_pixels]
    assert set(worst_psnr) <= set(kept_psnr)
    assert all(table.column("noisy_png")[i].as_py() is not None for i in with_pixels)
    embeddings = [v for v in table.column("embedding").to_pylist() if v is not None]
    assert 10 <= len(embeddings) < 59 and {len(v) for v in embeddings} == {16}  # 4x2x2 code
    # A thumbnail decodes to the image it stands for.
    from raeflow.report.figures import decode_png

    i = with_pixels[0]
    thumb = decode_png(table.column("clean_png")[i].as_py())
    original = np.frombuffer(digit_rows.column("pixels")[i].as_py(), dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(thumb, original)
    assert psnr(thumb[None, None] / 255.0, original[None, None] / 255.0)[0] == 100.0


def test_unknown_noise_is_a_user_error(digits_bundle: str) -> None:
    from raeflow.errors import ConfigError

    with pytest.raises(ConfigError, match="noise"):
        ReportPredictor(digits_bundle, noise="fog:0.3")


def test_fully_convolutional_model_scores_each_size_and_pools_its_embeddings(tmp_path) -> None:
    from skimage import data as skdata

    from raeflow.batch.decoding import DecodeSpec, decode_rows
    from raeflow.data import images
    from raeflow.models import create_model, save_bundle

    bundle = save_bundle(
        create_model("unet", in_channels=1, base_channels=4, depth=2), str(tmp_path / "unet")
    )
    camera = skdata.camera()
    crops = [camera[:40, :50, None], camera[100:124, 100:124, None], camera[200:240, :50, None]]
    rows = pa.table(
        {
            "key": ["a", "b", "c"],
            "source": ["camera"] * 3,
            "image": [images.encode_raw(c) for c in crops],
            "label": pa.nulls(3, pa.int64()),
            "error": pa.nulls(3, pa.string()),
            "shard": pa.array([0, 0, 0], pa.int64()),
        }
    )
    table = ReportPredictor(bundle, noise="gaussian:0.1", map_size=10)(
        decode_rows(rows, DecodeSpec(channels=1))
    )
    assert table.column("reason").to_pylist() == [None] * 3
    assert np.all(np.isfinite(_column(table, "psnr"))) and np.all(np.isfinite(_column(table, "ssim")))
    # The embed rule: codes of any-size models are averaged over space, one length (16) for every size.
    assert [len(v) for v in table.column("embedding").to_pylist()] == [16] * 3


def test_the_report_predictor_is_built_on_the_batch_predictor_base() -> None:
    from raeflow.batch.predictors import Predictor

    assert issubclass(ReportPredictor, Predictor)
    assert "__init__" in ReportPredictor.__dict__ and "result" not in ReportPredictor.__dict__
