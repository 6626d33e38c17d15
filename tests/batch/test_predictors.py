"""The predictors and the decode step, called directly: no Ray anywhere."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from raeflow.batch.decoding import DecodeSpec, decode_rows, pixels_of
from raeflow.batch.predictors import DenoisePredictor, EncodePredictor
from raeflow.batch.tiling import tiled_apply_uint8
from raeflow.data import images
from raeflow.models import load_bundle


def source_rows(datas: list[bytes], shard: int = 0) -> pa.Table:
    """Rows as a source's read task gives them (ROW_SCHEMA + shard)."""
    n = len(datas)
    return pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "source": ["mem://src"] * n,
            "image": pa.array(datas, pa.binary()),
            "label": pa.array(list(range(n)), pa.int64()),
            "error": pa.nulls(n, pa.string()),
            "shard": pa.array([shard] * n, pa.int64()),
        }
    )


def test_predictor_modules_do_not_import_ray() -> None:
    code = (
        "import sys; import raeflow.batch.predictors, raeflow.batch.decoding, raeflow.batch.tiling; "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_decode_keeps_bad_rows_with_a_reason(mnist_digits) -> None:
    digits, _ = mnist_digits
    good = images.encode_image(digits[0][:, :, None], "png")
    table = decode_rows(
        source_rows([good, b"", b"garbage", good[:40]]), DecodeSpec(channels=1, height=28, width=28)
    )
    reasons = table.column("reason").to_pylist()
    assert table.num_rows == 4 and reasons[0] is None
    assert reasons[1].startswith("empty") and reasons[2].startswith("not_an_image")
    assert reasons[3].split(":")[0] in ("truncated", "not_an_image")
    assert table.column("format").to_pylist()[0] == "png"
    np.testing.assert_array_equal(pixels_of(table)[0][:, :, 0], digits[0])


def test_encode_predictor_matches_the_model(conv_bundle, mnist_digits) -> None:
    digits, _ = mnist_digits
    datas = [images.encode_image(d[:, :, None], "png") for d in digits[:10]] + [b"junk"]
    decoded = decode_rows(source_rows(datas), DecodeSpec(channels=1, height=28, width=28))
    out = EncodePredictor(conv_bundle, precision="fp32")(decoded)
    assert out.schema.metadata[b"raeflow.precision"] == b"fp32"
    assert out.num_rows == 11
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 196)
    assert out.column("reason").to_pylist()[-1].startswith("not_an_image")
    assert out.column("key").to_pylist() == decoded.column("key").to_pylist()
    model = load_bundle(conv_bundle).model
    x = torch.from_numpy(digits[:10]).float().div(255)[:, None]  # (10, 1, 28, 28)
    expected = model.embed(x).detach().numpy()
    got = np.stack(out.column("embedding").to_numpy(zero_copy_only=False)[:10])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_vae_embedding_is_the_posterior_mean(vae_bundle, mnist_digits) -> None:
    digits, _ = mnist_digits
    decoded = decode_rows(
        source_rows([images.encode_image(d[:, :, None], "png") for d in digits[:4]]),
        DecodeSpec(channels=1, height=28, width=28),
    )
    predict = EncodePredictor(vae_bundle, precision="fp32")
    first, second = predict(decoded), predict(decoded)
    a = np.stack(first.column("embedding").to_numpy(zero_copy_only=False))
    assert a.shape == (4, 6)
    np.testing.assert_array_equal(a, np.stack(second.column("embedding").to_numpy(zero_copy_only=False)))
    model = load_bundle(vae_bundle).model
    mu = model(torch.from_numpy(digits[:4]).float().div(255)[:, None])["mu"].detach().numpy()
    np.testing.assert_allclose(a, mu, rtol=1e-5, atol=1e-6)


def _denoise_one(
    predictor: DenoisePredictor, data: bytes
) -> tuple[str | None, np.ndarray | None, str | None]:
    out = predictor(decode_rows(source_rows([data]), DecodeSpec()))
    reason = out.column("reason").to_pylist()[0]
    if reason is not None:
        return reason, None, None
    encoded = out.column("data").to_pylist()[0]
    return None, images.decode_image(encoded), out.column("out_format").to_pylist()[0]


def test_denoise_keeps_odd_sizes_mode_and_format(unet_bundle, photo) -> None:
    predictor = DenoisePredictor(unet_bundle)
    odd = photo[:321, :481]
    _, png, fmt = _denoise_one(predictor, images.encode_image(odd, "png"))
    assert fmt == "png" and png.shape == (321, 481, 1)
    _, jpeg, fmt = _denoise_one(predictor, images.encode_image(odd, "jpeg"))
    assert fmt == "jpeg" and jpeg.shape == (321, 481, 1)
    _, forced, fmt = _denoise_one(
        DenoisePredictor(unet_bundle, out_format="png"), images.encode_image(odd, "jpeg")
    )
    assert fmt == "png" and forced.shape == (321, 481, 1)
    for kind in ("BMP", "TIFF"):  # formats raeflow decodes through Pillow stay what they were
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(odd[:40, :30, 0])).save(buffer, kind)
        _, same, fmt = _denoise_one(predictor, buffer.getvalue())
        assert fmt == kind.lower() and same.shape == (40, 30, 1)


def test_denoise_channel_rules(unet_bundle, unet_rgb_bundle, photo, colour_photo) -> None:
    _, grey_via_rgb, _ = _denoise_one(
        DenoisePredictor(unet_rgb_bundle), images.encode_image(photo[:64, :80], "png")
    )
    assert grey_via_rgb.shape == (64, 80, 1)
    _, rgb_via_grey, _ = _denoise_one(
        DenoisePredictor(unet_bundle), images.encode_image(colour_photo[:64, :80], "png")
    )
    assert rgb_via_grey.shape == (64, 80, 3)
    # Channel by channel: each output channel is the grey model's output on that channel alone.
    predictor = DenoisePredictor(unet_bundle)
    red = predictor.denoise(np.ascontiguousarray(colour_photo[:64, :80, :1]))
    # (a batch of three and a batch of one may round a pixel differently: one grey level at most)
    assert np.abs(rgb_via_grey[:, :, 0].astype(int) - red[:, :, 0]).max() <= 1


def test_fixed_size_model_refuses_other_sizes_unless_resize(conv_bundle, photo) -> None:
    data = images.encode_image(photo[:40, :50], "png")
    reason, _, _ = _denoise_one(DenoisePredictor(conv_bundle), data)
    assert reason.startswith("size_mismatch") and "--resize" in reason
    reason, out, _ = _denoise_one(DenoisePredictor(conv_bundle, resize=True), data)
    assert reason is None and out.shape == (40, 50, 1)


def test_tiles_blend_back_to_the_exact_image() -> None:
    x = np.random.default_rng(0).integers(0, 256, (150, 130, 3), dtype=np.uint8)
    y = tiled_apply_uint8(lambda t: t, x, tile=64, overlap=16, multiple=8)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("shape", [(1382, 1036), (1040, 1040), (2000, 3000)])
def test_tiles_stay_within_the_tile_size_and_add_little_work(shape) -> None:
    # A photo a little larger than one tile once cost four full tiles (2.9 times its pixels).
    seen: list[tuple[int, int]] = []

    def model(x):
        seen.extend([tuple(x.shape[-2:])] * x.shape[0])
        return x

    image = np.zeros((*shape, 3), dtype=np.uint8)
    tiled_apply_uint8(model, image, tile=1024, overlap=32, multiple=16)
    assert all(h <= 1024 and w <= 1024 and h % 16 == 0 == w % 16 for h, w in seen), seen
    assert sum(h * w for h, w in seen) < 1.25 * shape[0] * shape[1], seen


def test_tiled_denoise_matches_one_pass(trained_unet_bundle, photo) -> None:
    image = np.ascontiguousarray(photo[100:300, 120:340])  # 200x220: several 96-pixel tiles
    whole = DenoisePredictor(trained_unet_bundle).denoise(image).astype(float)
    assert np.corrcoef(whole.ravel(), image.ravel())[0, 1] > 0.9  # the model follows its input
    tiled = DenoisePredictor(trained_unet_bundle, tile=96, tile_overlap=32).denoise(image).astype(float)
    butted = DenoisePredictor(trained_unet_bundle, tile=96, tile_overlap=0).denoise(image).astype(float)
    assert tiled.shape == whole.shape == image.shape
    blended, seams = np.abs(tiled - whole), np.abs(butted - whole)
    # Blended overlaps stay within a grey level or so of one pass; tiles that just touch do not.
    assert blended.mean() < 0.8 and np.percentile(blended, 99) < 10, (blended.mean(), blended.max())
    assert blended.mean() < 0.6 * seams.mean()


@pytest.mark.parametrize(
    ("bundle", "channels"),
    [("builtin:denoise-grey", 1), ("builtin:denoise-rgb", 3), ("builtin:denoise-grey", 3)],
)
def test_a_photo_denoised_in_tiles_is_guarded_as_one_image(bundle, channels) -> None:
    # Slightly noisy (sigma 7, where the noise guard denoises partly): the camera man's flat sky
    # and his textured grass must get the photo's one noise level, not a level per tile.
    from skimage import data as skdata

    clean = skdata.camera()[:, :, None] if channels == 1 else skdata.astronaut()
    noise = np.random.default_rng(0).normal(0, 7, clean.shape)
    noisy = np.clip(clean + noise, 0, 255).round().astype(np.uint8)
    whole = DenoisePredictor(bundle, max_pixels_per_pass=10**7).denoise(noisy)
    tiled = DenoisePredictor(bundle, tile=128).denoise(noisy)

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))

    assert psnr(tiled, whole) > 50  # 52-63 dB; estimated tile by tile: 42-49 dB
    assert psnr(tiled, clean) > psnr(whole, clean) - 0.1


@pytest.mark.parametrize("size", [(2000, 1500)])
def test_large_photo_is_tiled_without_running_out_of_shape(unet_bundle, photo, size) -> None:
    big = np.ascontiguousarray(np.tile(photo, (4, 3, 1))[: size[1], : size[0]])  # 1500x2000 grey
    out = DenoisePredictor(unet_bundle, tile=512).denoise(big)
    assert out.shape == big.shape


def test_dead_settings_and_code_are_gone() -> None:
    import raeflow.batch.predictors as predictors
    from raeflow.batch.config import DenoiseConfig, EmbedConfig, RunOptions
    from raeflow.batch.manifest import Manifest

    assert not hasattr(predictors, "ReconstructPredictor")
    assert not {"decode_in_read", "decode_batch_size"} & set(RunOptions.__dataclass_fields__)
    assert not hasattr(EmbedConfig, "as_dict") and not hasattr(DenoiseConfig, "as_dict")
    assert not hasattr(Manifest, "is_complete")


def test_denoise_keeps_alpha_untouched_and_16_bit_grey(
    unet_bundle, unet_rgb_bundle, photo, colour_photo
) -> None:
    rgba = np.concatenate(
        [colour_photo[:48, :40], np.arange(48 * 40, dtype=np.uint8).reshape(48, 40, 1)], axis=2
    )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), "RGBA").save(buffer, "PNG")
    out = DenoisePredictor(unet_rgb_bundle)(
        decode_rows(source_rows([buffer.getvalue()]), DecodeSpec(keep_mode=True))
    )
    with Image.open(io.BytesIO(out.column("data").to_pylist()[0])) as result:
        assert result.mode == "RGBA" and result.size == (40, 48)
        np.testing.assert_array_equal(np.asarray(result)[:, :, 3], rgba[:, :, 3])  # alpha as it was

    deep = photo[:40, :56, 0].astype(np.uint16) * 257 + np.arange(56, dtype=np.uint16)  # 16-bit detail
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, "PNG")
    out = DenoisePredictor(unet_bundle)(
        decode_rows(source_rows([buffer.getvalue()]), DecodeSpec(keep_mode=True))
    )
    with Image.open(io.BytesIO(out.column("data").to_pylist()[0])) as result:
        assert result.mode.startswith("I;16") and result.size == (56, 40)
        values = np.asarray(result)
    assert values.dtype == np.uint16 and len(np.unique(values % 257)) > 1  # not 8 bits scaled up

    forced = DenoisePredictor(unet_rgb_bundle, out_format="jpeg")
    jpeg = forced(decode_rows(source_rows([buffer.getvalue()]), DecodeSpec(keep_mode=True)))
    assert images.decode_image(jpeg.column("data").to_pylist()[0]).dtype == np.uint8


TILED_24MP = """
import resource, sys
import numpy as np
from raeflow.batch.predictors import DenoisePredictor
predictor = DenoisePredictor(sys.argv[1], tile=512)
photo = np.random.default_rng(0).integers(0, 256, (4000, 6000, 3), dtype=np.uint8)  # 24 MP RGB
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = predictor.denoise(photo)
assert out.shape == photo.shape and out.dtype == np.uint8
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.slow
def test_a_24_megapixel_photo_denoises_in_bounded_memory(unet_rgb_bundle) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TILED_24MP, unet_rgb_bundle], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    growth = int(done.stdout.strip().splitlines()[-1])
    # The photo is 72 MB. Measured: ~460 MB peak growth (the result, an edge-padded copy, one row of
    # blend accumulators, the model on four 512-pixel tiles); a whole-image float pass holds the
    # float image, its padded copy, the blend sums and the output: 4 x 288 MB before the model.
    assert growth < 600 * 1024 * 1024, growth
