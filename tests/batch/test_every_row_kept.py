"""Mirrored outputs keep every input row, images are never swapped, repeated keys are reported."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raeflow.batch.config import DenoiseConfig, EmbedConfig, RunOptions
from raeflow.batch.denoise import run_denoise
from raeflow.batch.embed import run_embed
from raeflow.data import images


def _members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]


def test_a_repeated_key_in_a_tar_keeps_its_own_image(ray_session, tmp_path, unet_bundle, photo) -> None:
    first = images.encode_image(np.ascontiguousarray(photo[:32, :32]), "png")
    second = images.encode_image(np.ascontiguousarray(255 - photo[200:232, 200:232]), "png")
    (tmp_path / "in").mkdir()
    with tarfile.open(tmp_path / "in" / "a.tar", "w") as tar:
        for name, data in (
            ("s0001.png", first),
            ("s0001.cls", b"1"),
            ("s0002.png", second),
            ("s0001.png", second),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    config = DenoiseConfig(data=str(tmp_path / "in"), model=unet_bundle, out=str(tmp_path / "out"))
    config.run = RunOptions(batch_size=4, quiet=True)
    summary = run_denoise(config)
    assert (summary.images_in, summary.images_out, summary.images_rejected) == (3, 2, 1)

    members = _members(tmp_path / "out" / "a.tar")
    assert [name for name, _ in members] == ["s0001.png", "s0001.cls", "s0002.png", "s0001.png"]
    denoised_first, denoised_second = members[0][1], members[2][1]
    assert denoised_first not in (first, second) and denoised_second not in (first, second)
    assert members[3][1] == second  # the repeated sample: carried over as it was, not s0001's result
    rejected = pq.read_table(tmp_path / "out" / "_rejected").to_pylist()
    assert [r["reason"].split(":")[0] for r in rejected] == ["duplicate_key"]


def test_a_null_image_cell_keeps_its_parquet_row(ray_session, tmp_path, unet_bundle, mnist_digits) -> None:
    digits, _ = mnist_digits
    (tmp_path / "in").mkdir()
    table = pa.table(
        {
            "key": ["a", "b", "c", "d"],
            "image": pa.array(
                [images.encode_image(digits[i][:, :, None], "png") if i != 2 else None for i in range(4)],
                pa.binary(),
            ),
            "note": ["one", "two", "three", "four"],
        }
    )
    pq.write_table(table, tmp_path / "in" / "rows.parquet")
    config = DenoiseConfig(data=str(tmp_path / "in"), model=unet_bundle, out=str(tmp_path / "out"))
    config.run = RunOptions(batch_size=4, quiet=True)
    summary = run_denoise(config)
    assert (summary.images_in, summary.images_out, summary.images_rejected) == (4, 3, 1)
    out = pq.read_table(tmp_path / "out" / "rows.parquet")
    assert out.column("key").to_pylist() == ["a", "b", "c", "d"]
    assert out.column("note").to_pylist() == ["one", "two", "three", "four"]
    assert out.column("image").to_pylist()[2] is None
    assert all(images.decode_image(b).shape == (28, 28, 1) for b in out.column("image").to_pylist() if b)


def test_keys_repeated_across_parquet_files_are_reported(
    ray_session, tmp_path, conv_bundle, mnist_digits
) -> None:
    digits, _ = mnist_digits
    (tmp_path / "in").mkdir()
    for name, keys in (("one.parquet", ["k0", "k1", "k2"]), ("two.parquet", ["k3", "k1", "k2"])):
        data = [images.encode_image(digits[i][:, :, None], "png") for i in range(3)]
        pq.write_table(pa.table({"key": keys, "image": data}), tmp_path / "in" / name)
    summary = run_embed(
        EmbedConfig(
            data=str(tmp_path / "in"),
            model=conv_bundle,
            out=str(tmp_path / "emb"),
            run=RunOptions(quiet=True),
        )
    )
    assert summary.images_out == 6 and summary.key_collisions == 2
    assert summary.collision_shards == [["one.parquet", "two.parquet"]] * 2
    assert any("2 keys occur more than once" in line for line in summary.lines())
