"""`raeflow denoise` end to end on the shared local Ray: folder, WebDataset and Parquet mirrors."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raeflow.batch.config import DenoiseConfig, RunOptions
from raeflow.batch.denoise import run_denoise
from raeflow.data import images
from raeflow.errors import ConfigError


def _config(data, model, out, **kw) -> DenoiseConfig:
    return DenoiseConfig(
        data=str(data), model=model, out=str(out), run=RunOptions(batch_size=4, quiet=True), **kw
    )


def test_folder_keeps_names_sizes_modes_and_formats(ray_session, tmp_path, unet_bundle, photo, colour_photo):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    big = np.ascontiguousarray(np.tile(photo, (3, 4, 1))[:1500, :2000])  # a 2000x1500 photo: needs tiles
    inputs = {
        "odd.png": images.encode_image(np.ascontiguousarray(photo[:321, :481]), "png"),  # 481x321 grey
        "sub/big.jpg": images.encode_image(big, "jpeg"),
        "sub/colour.png": images.encode_image(np.ascontiguousarray(colour_photo[:61, :75]), "png"),
        "broken.jpg": b"\xff\xd8\xff broken",
    }
    for name, data in inputs.items():
        (src / name).write_bytes(data)
    summary = run_denoise(_config(src, unet_bundle, tmp_path / "out", tile=512, tile_overlap=32))
    assert (summary.images_in, summary.images_out, summary.images_rejected) == (4, 3, 1)

    out = tmp_path / "out"
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    written = [name for name in written if not name.startswith("_")]  # not the bookkeeping files
    assert written == ["odd.png", "sub/big.jpg", "sub/colour.png"]
    shapes = {name: images.decode_image((out / name).read_bytes()).shape for name in written}
    assert shapes == {"odd.png": (321, 481, 1), "sub/big.jpg": (1500, 2000, 1), "sub/colour.png": (61, 75, 3)}
    assert images.probe_image((out / "sub/big.jpg").read_bytes()).format == "jpeg"
    rejected = pq.read_table(out / "_rejected").to_pylist()
    assert [r["key"] for r in rejected] == ["broken"]


def test_format_option_changes_the_extension(ray_session, tmp_path, unet_bundle, photo):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(
        images.encode_image(np.ascontiguousarray(photo[:64, :64]), "jpeg")
    )
    run_denoise(_config(tmp_path / "in", unet_bundle, tmp_path / "out", format="png"))
    assert images.probe_image((tmp_path / "out" / "a.png").read_bytes()).format == "png"
    assert not (tmp_path / "out" / "a.jpg").exists()


def _tar(path, samples: dict[str, dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, fields in samples.items():
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_keeps_keys_and_other_members(ray_session, tmp_path, unet_bundle, mnist_digits):
    import webdataset as wds

    digits, labels = mnist_digits
    (tmp_path / "in").mkdir()
    expected = {}
    for shard in range(2):
        samples = {}
        for i in range(shard * 5, shard * 5 + 5):
            key = f"sample{i:03d}"
            samples[key] = {
                "png": images.encode_image(digits[i][:, :, None], "png"),
                "cls": str(int(labels[i])).encode(),
                "json": json.dumps({"i": i}).encode(),
            }
            expected[key] = (str(int(labels[i])), {"i": i})
        _tar(tmp_path / "in" / f"train-{shard:04d}.tar", samples)
    run_denoise(_config(tmp_path / "in", unet_bundle, tmp_path / "out"))

    names = sorted(p.name for p in (tmp_path / "out").glob("*.tar"))
    assert names == ["train-0000.tar", "train-0001.tar"]
    seen = {}
    dataset = wds.WebDataset([str(tmp_path / "out" / n) for n in names], shardshuffle=False)
    for sample in dataset:
        assert images.decode_image(sample["png"]).shape == (28, 28, 1)
        seen[sample["__key__"]] = (sample["cls"].decode(), json.loads(sample["json"]))
    assert seen == expected


def test_parquet_keeps_keys_and_columns(ray_session, tmp_path, unet_bundle, mnist_digits):
    from tests.batch.inputs import write_digit_parquet

    digits, labels = mnist_digits
    keys = write_digit_parquet(str(tmp_path / "in"), digits, labels, files=2, rows=6)
    escaping = pa.table(
        {
            "key": ["../evil", "/abs/path", "fine"],
            "image": [images.encode_image(digits[i][:, :, None], "png") for i in range(3)],
            "label": pa.array([0, 1, 2], pa.int64()),
            "note": ["x", "y", "z"],
        }
    )
    pq.write_table(escaping, tmp_path / "in" / "shard-002.parquet")
    summary = run_denoise(_config(tmp_path / "in", unet_bundle, tmp_path / "out"))
    assert (summary.images_out, summary.images_rejected) == (13, 2)
    rejected = pq.read_table(tmp_path / "out" / "_rejected").to_pylist()
    assert sorted(r["key"] for r in rejected) == ["../evil", "/abs/path"]
    assert all(r["reason"].startswith("unsafe_key") for r in rejected)
    # Every input row stays; the refused ones carry their input image unchanged.
    kept = pq.read_table(tmp_path / "out" / "shard-002.parquet")
    assert kept.column("key").to_pylist() == ["../evil", "/abs/path", "fine"]
    assert kept.column("image").to_pylist()[:2] == escaping.column("image").to_pylist()[:2]
    assert kept.column("image").to_pylist()[2] != escaping.column("image").to_pylist()[2]
    original = pq.read_table(tmp_path / "in" / "shard-001.parquet")
    denoised = pq.read_table(tmp_path / "out" / "shard-001.parquet")
    assert denoised.column_names == original.column_names
    assert denoised.column("key").to_pylist() == keys[6:]
    assert denoised.column("note").equals(original.column("note"))
    assert denoised.column("image").to_pylist() != original.column("image").to_pylist()
    assert all(images.decode_image(b).shape == (28, 28, 1) for b in denoised.column("image").to_pylist())
    assert denoised.schema.field("image").type == pa.binary()


def test_fixed_size_model_needs_resize(ray_session, tmp_path, conv_bundle, photo):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(images.encode_image(np.ascontiguousarray(photo[:40, :50]), "png"))
    with pytest.raises(ConfigError, match="takes 28x28 images but a is 40x50; pass --resize"):
        run_denoise(_config(tmp_path / "in", conv_bundle, tmp_path / "refused"))
    run_denoise(_config(tmp_path / "in", conv_bundle, tmp_path / "out", resize=True))
    assert images.decode_image((tmp_path / "out" / "a.png").read_bytes()).shape == (40, 50, 1)


def test_cli_refuses_a_size_misfit_in_one_line(tmp_path, conv_bundle, photo, raeflow_cli):
    import subprocess

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(images.encode_image(np.ascontiguousarray(photo[:40, :50]), "png"))
    command = [*raeflow_cli, "denoise", "--data", str(tmp_path / "in"), "--model", conv_bundle]
    done = subprocess.run([*command, "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: model {conv_bundle} takes 28x28 images but a is 40x50; pass --resize to resize each image "
        "to the model's size and back, or use a fully convolutional model (unet)"
    ]


def test_s3_folder_in_and_out(ray_session, s3_bucket, unet_bundle, photo):
    import fsspec

    fs = fsspec.filesystem("s3")
    fs.pipe(f"{s3_bucket}/in/a/odd.png", images.encode_image(np.ascontiguousarray(photo[:33, :45]), "png"))
    fs.pipe(f"{s3_bucket}/in/b.jpg", images.encode_image(np.ascontiguousarray(photo[:20, :30]), "jpeg"))
    summary = run_denoise(_config(f"{s3_bucket}/in", unet_bundle, f"{s3_bucket}/out"))
    assert summary.images_out == 2
    assert images.decode_image(fs.cat(f"{s3_bucket}/out/a/odd.png")).shape == (33, 45, 1)
    assert images.probe_image(fs.cat(f"{s3_bucket}/out/b.jpg")).format == "jpeg"
    assert fs.exists(f"{s3_bucket}/out/_SUCCESS")
