"""Memory pressure: images and batches that need more memory than a worker has.

Each scenario runs the real job (`run_embed` / `run_denoise` on the suite's Ray, or the `raeflow`
program) with `--worker-memory-gb` lowered to a few megabytes, so a worker "has" less memory than an
image or a batch needs without the test allocating gigabytes. The budget is set from the memory
the predictor itself measures for the model (`Predictor.pass_memory`), so the scenarios stay what
they say whatever the machine.

What must hold: the job finishes; an image that cannot fit is rejected with `too_large_for_memory`
and counted like any other rejection; a batch too large is run in smaller passes with every key
written once; nothing is left for Ray's memory monitor to kill.
"""

from __future__ import annotations

import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raeflow.batch.config import DenoiseConfig, EmbedConfig, RunOptions
from raeflow.batch.denoise import run_denoise
from raeflow.batch.embed import run_embed
from raeflow.batch.predictors import DenoisePredictor, EncodePredictor
from raeflow.data import images
from raeflow.models import create_model, save_bundle

GIB = 2**30


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained grey U-Net (any size, 4-8-16 channels)."""
    model = create_model("unet", in_channels=1, base_channels=4, depth=2)
    return save_bundle(model, str(tmp_path_factory.mktemp("unet") / "model"))


@pytest.fixture()
def ray_address(ray_session: None) -> str:
    """The address of the suite's Ray, for the `raeflow` program (`--address`)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


def constant_png(height: int, width: int, rows_per_block: int = 1000) -> bytes:
    """A valid grey PNG of `height` x `width` zeros, built without holding its pixels: one block of
    rows is deflated once and repeated (a full flush makes each block independent of the last)."""
    row = b"\x00" * (width + 1)  # filter byte 0, then the row's samples
    block = row * rows_per_block
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    again = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    blocks, rest = divmod(height, rows_per_block)
    tail = deflate.compress(row * rest) + deflate.flush(zlib.Z_FINISH)
    checksum = 1
    for _ in range(blocks):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * rest, checksum)
    stream = b"\x78\xda" + first + again * (blocks - 1) + tail + struct.pack(">I", checksum)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


def peak_growth(fn) -> int:  # type: ignore[no-untyped-def]
    """Bytes this process's resident memory grew by at its peak while `fn` ran (Linux)."""

    def status(field: str) -> int:
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field))

    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak (VmHWM) starts again from here
    fn()
    return status("VmHWM") - before


def write_pngs(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        (folder / f"{key}.png").write_bytes(images.encode_image(array, "png"))


def rejected_reasons(out: Path) -> dict[str, str]:
    return {row["key"]: row["reason"] for row in pq.read_table(out / "_rejected").to_pylist()}


def embedded_keys(out: Path) -> list[str]:
    return sorted(
        k for part in out.glob("part-*.parquet") for k in pq.read_table(part).column("key").to_pylist()
    )


def test_the_png_builder_writes_pngs_that_decode() -> None:
    assert not images.decode_image(constant_png(2_500, 3_000)).any()  # two blocks of 1,000 rows and 500


def test_a_20000_x_20000_png_is_refused_from_its_header_without_memory() -> None:
    data = constant_png(20_000, 20_000)
    assert len(data) < 2 * 2**20  # 400 megapixels in under 2 MB

    def decode() -> None:
        with pytest.raises(images.ImageRejected, match="too_many_pixels: 20000x20000"):
            images.decode_image(data)

    assert peak_growth(decode) < 64 * 2**20  # decoding it would take 400 MB (grey) to 1.2 GB (RGB)


def test_a_20000_x_20000_png_in_a_job_is_rejected_and_counted(ray_session, tmp_path: Path, unet: str) -> None:
    rng = np.random.default_rng(0)
    write_pngs(tmp_path / "in", {f"small{i}": rng.integers(0, 255, (64, 64, 1), np.uint8) for i in range(3)})
    (tmp_path / "in" / "huge.png").write_bytes(constant_png(20_000, 20_000))
    out = tmp_path / "emb"
    summary = run_embed(
        EmbedConfig(data=str(tmp_path / "in"), model=unet, out=str(out), run=RunOptions(quiet=True))
    )
    assert summary.images_rejected == 1
    assert rejected_reasons(out)["huge"].startswith("too_many_pixels")
    assert embedded_keys(out) == ["small0", "small1", "small2"]
    assert (out / "_SUCCESS").exists()


def test_an_image_too_large_for_a_workers_memory_is_rejected_with_the_reason(
    ray_address: str, tmp_path: Path, unet: str, raeflow_cli: list[str]
) -> None:
    """A 2048 x 2048 photo under the pixel limit, embedded at full size by a worker whose memory holds
    a 64 x 64 image's pass but not its: the program goes on and counts it."""
    memory = EncodePredictor(unet, precision="fp32").pass_memory
    small, large = memory.need(1, 64 * 64), memory.need(1, 2048 * 2048)
    decoding = images.decode_memory(images.probe_image(constant_png(2048, 2048)))
    budget = max(small, decoding) * 2  # it decodes, then its pass does not fit
    assert budget < large / 4
    rng = np.random.default_rng(1)
    write_pngs(tmp_path / "in", {f"small{i}": rng.integers(0, 255, (64, 64, 1), np.uint8) for i in range(4)})
    (tmp_path / "in" / "big.png").write_bytes(constant_png(2048, 2048))
    out = tmp_path / "emb"
    done = subprocess.run(
        [
            *raeflow_cli, "embed", "--data", str(tmp_path / "in"), "--model", unet, "--out", str(out),
            "--address", ray_address, "--precision", "fp32", "--worker-memory-gb", f"{budget / GIB:.6f}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 out, 1 rejected" in done.stdout
    reason = rejected_reasons(out)["big"]
    assert reason.startswith("too_large_for_memory: 2048x2048 takes about"), reason
    assert "--worker-memory-gb" in reason
    assert embedded_keys(out) == [f"small{i}" for i in range(4)]


def test_a_batch_too_large_for_memory_runs_in_smaller_passes(ray_session, tmp_path: Path, unet: str) -> None:
    """--batch-size 24 of 256 x 256 images where a worker's memory holds about 5 at once: every image is
    embedded once, exactly as in one pass, and none is rejected."""
    memory = EncodePredictor(unet, precision="fp32").pass_memory
    budget = memory.need(5, 256 * 256) + 1
    assert memory.most_images(256 * 256, budget) == 5
    rng = np.random.default_rng(2)
    arrays = {f"img{i:02d}": rng.integers(0, 255, (256, 256, 1), np.uint8) for i in range(24)}
    write_pngs(tmp_path / "in", arrays)
    out = tmp_path / "emb"
    run = RunOptions(batch_size=24, worker_memory_gb=budget / GIB, precision="fp32", quiet=True)
    summary = run_embed(EmbedConfig(data=str(tmp_path / "in"), model=unet, out=str(out), run=run))
    assert summary.images_rejected == 0
    table = pq.read_table(out)
    assert sorted(table.column("key").to_pylist()) == sorted(arrays)  # every key once
    unlimited = EncodePredictor(unet, precision="fp32")
    for key, vector in zip(
        table.column("key").to_pylist(), table.column("embedding").to_pylist(), strict=True
    ):
        expected = unlimited.embed(_tensor(arrays[key]))[0].detach().numpy()
        np.testing.assert_allclose(vector, expected, rtol=1e-4, atol=1e-5)


def _tensor(array: np.ndarray):  # type: ignore[no-untyped-def]
    import torch

    return torch.from_numpy(array).permute(2, 0, 1)[None].float().div(255)  # (1, 1, H, W)


def test_denoise_tiles_an_image_finer_when_a_pass_does_not_fit(
    ray_session, tmp_path: Path, unet: str
) -> None:
    """A 1024 x 1024 photo, under --max-pixels-per-pass, whose one pass does not fit a worker's memory:
    it is denoised in smaller tiles (slower), written at its size; none is rejected."""
    predictor = DenoisePredictor(unet, precision="fp32")
    one_pass = predictor._one_pass_need(1024, 1024, 1)
    budget = predictor._tiled_need(256, 1, 1024, 1024, 1) + 1
    assert budget < one_pass / 2
    predictor.memory_budget = budget
    assert predictor._tiling(1024, 1024, 1) == (256, 1)
    photo = np.random.default_rng(3).integers(0, 255, (1024, 1024, 1), np.uint8)
    write_pngs(tmp_path / "in", {"photo": photo})
    out = tmp_path / "out"
    run = RunOptions(batch_size=1, worker_memory_gb=budget / GIB, precision="fp32", quiet=True)
    config = DenoiseConfig(
        data=str(tmp_path / "in"), model=unet, out=str(out), max_pixels_per_pass=2**21, run=run
    )
    summary = run_denoise(config)
    assert summary.images_rejected == 0
    assert images.decode_image((out / "photo.png").read_bytes()).shape == (1024, 1024, 1)


def test_denoise_rejects_an_image_that_no_tile_fits(ray_session, tmp_path: Path, unet: str) -> None:
    predictor = DenoisePredictor(unet, precision="fp32")
    budget = predictor._tiled_need(64, 1, 1024, 1024, 1) - 1  # not even tiles of 64 pixels
    assert predictor._one_pass_need(64, 64, 1) < budget  # a small photo still fits
    rng = np.random.default_rng(4)
    write_pngs(
        tmp_path / "in",
        {
            "big": rng.integers(0, 255, (1024, 1024, 1), np.uint8),
            "small": rng.integers(0, 255, (64, 64, 1), np.uint8),
        },
    )
    out = tmp_path / "out"
    run = RunOptions(batch_size=1, worker_memory_gb=budget / GIB, precision="fp32", quiet=True)
    summary = run_denoise(DenoiseConfig(data=str(tmp_path / "in"), model=unet, out=str(out), run=run))
    assert summary.images_rejected == 1
    reason = rejected_reasons(out)["big"]  # refused before decoding it, or before the model: either way
    assert reason.startswith("too_large_for_memory: ") and "1024x1024" in reason, reason
    assert (out / "small.png").exists() and not (out / "big.png").exists()
