"""A folder of a few large photos is several shards, each image denoised once; the blocks of a
one-shard job spread over the actors; a rerun over shards cut elsewhere is refused instead of mixing
two cuts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

import raeflow.batch.denoise
from raeflow.batch.config import DenoiseConfig, RunOptions
from raeflow.batch.decoding import DecodeSpec
from raeflow.batch.denoise import mirror_writer, run_denoise
from raeflow.batch.manifest import Manifest, ShardRecord
from raeflow.batch.output import OutputDir
from raeflow.batch.predictors import DenoisePredictor
from raeflow.batch.runner import BatchJob, run_batch_job
from raeflow.data import images
from raeflow.data.sources.folder import FolderSource
from raeflow.errors import JobError


def _write_photos(root: Path, photo: np.ndarray) -> dict[str, int]:
    """Five grey JPEG photos of 384x512 (different crops of a tiled photo); returns name -> bytes."""
    tiled = np.tile(photo, (2, 2, 1))  # (1024, 1024, 1)
    sizes = {}
    for i in range(5):
        name = f"{'ab'[i % 2]}/photo{i}.jpg"
        data = images.encode_image(
            np.ascontiguousarray(tiled[i * 90 : i * 90 + 384, i * 70 : i * 70 + 512]), "jpeg"
        )
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        sizes[name] = len(data)
    return dict(sorted(sizes.items()))


def test_a_few_large_photos_are_several_shards_each_image_denoised_once(
    ray_session, tmp_path, unet_bundle, photo, monkeypatch
) -> None:
    sizes = _write_photos(tmp_path / "in", photo)
    budget = 2 * max(sizes.values())  # two photos per shard at most
    source = FolderSource(str(tmp_path / "in"), bytes_per_shard=budget)
    assert len(source.list_shards()) >= 3
    monkeypatch.setattr(raeflow.batch.denoise, "open_source", lambda *args, **kwargs: source)
    config = DenoiseConfig(
        data=str(tmp_path / "in"),
        model=unet_bundle,
        out=str(tmp_path / "out"),
        run=RunOptions(batch_size=2, quiet=True),
    )
    summary = run_denoise(config)

    assert (summary.images_in, summary.images_out, summary.images_rejected) == (5, 5, 0)
    records = Manifest(OutputDir(str(tmp_path / "out"))).finished()
    assert [records[i].name for i in sorted(records)] == [s.name for s in source.list_shards()]
    assert sum(r.rows_in for r in records.values()) == 5  # each image counted in exactly one shard
    out = tmp_path / "out"
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [w for w in written if not w.startswith("_")] == list(sizes)
    for name in sizes:
        assert images.decode_image((out / name).read_bytes()).shape == (384, 512, 1)

    # Shard 1 left unfinished (no record, its outputs gone): the rerun redoes it alone.
    redo = records[1]
    (out / "_manifest" / "shard-00001.json").unlink()
    (out / "_SUCCESS").unlink()
    for name in list(sizes)[source.list_shards()[1].start : source.list_shards()[1].stop]:
        (out / name).unlink()
    again = run_denoise(config)
    assert again.num_shards_skipped == len(records) - 1 and again.images_out == 5
    assert Manifest(OutputDir(str(out))).finished()[1].rows_in == redo.rows_in
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == list(sizes)


class _WaitForTwoActors(DenoisePredictor):
    """Denoises once two actors hold a block each (or after two minutes): shows whether they ever do."""

    def __init__(self, bundle: str, *, marks: str, **kwargs) -> None:
        super().__init__(bundle, **kwargs)
        self.marks = Path(marks)

    def __call__(self, batch):
        (self.marks / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(self.marks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        return super().__call__(batch)


def test_the_two_blocks_of_a_one_shard_job_run_on_two_actors_at_once(
    ray_session, tmp_path, unet_bundle, photo
) -> None:
    # Two photos, one shard, a block each: the first actor must not queue both blocks for itself
    # while the second one, started for the free CPU, has none.
    for i in range(2):
        (tmp_path / "in").mkdir(exist_ok=True)
        crop = np.ascontiguousarray(photo[i * 50 : i * 50 + 300, :400])
        (tmp_path / "in" / f"{i}.png").write_bytes(images.encode_image(crop, "png"))
    (tmp_path / "marks").mkdir()
    source = FolderSource(str(tmp_path / "in"))
    assert len(source.list_shards()) == 1
    job = BatchJob(
        name="denoise",
        source=source,
        out=OutputDir(str(tmp_path / "out")),
        fingerprint="model-fingerprint",
        settings={},
        decode=DecodeSpec(keep_mode=True),
        predictor=_WaitForTwoActors,
        predictor_kwargs={"bundle": unet_bundle, "marks": str(tmp_path / "marks")},
        writer=mirror_writer(source),
        run=RunOptions(batch_size=1, quiet=True),
        block_bytes=100_000,  # a photo (120,000 bytes of pixels) per block
    )
    summary = run_batch_job(job)
    assert summary.images_out == 2 and sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "0.png",
        "1.png",
    ]
    assert len(list((tmp_path / "marks").iterdir())) == 2  # two actor processes, each with a block


def test_rerun_over_shards_cut_elsewhere_is_refused(tmp_path, unet_bundle) -> None:
    # Four files of 1, 2, 1, 1 MB: an earlier run cut them [0-2] [3] (3 files a shard), this one
    # [0-1] [2-3] (3 MB a shard): as many shards, other boundaries.
    for i, megabytes in enumerate([1, 2, 1, 1]):
        (tmp_path / "in").mkdir(exist_ok=True)
        with open(tmp_path / "in" / f"{i}.jpg", "wb") as handle:
            handle.truncate(megabytes * 1_000_000)
    earlier = FolderSource(str(tmp_path / "in"), files_per_shard=3, bytes_per_shard=10**9).list_shards()
    source = FolderSource(str(tmp_path / "in"), bytes_per_shard=3_000_000)
    assert [s.name for s in earlier] == ["files 0-2", "files 3-3"]
    assert [s.name for s in source.list_shards()] == ["files 0-1", "files 2-3"]

    out = OutputDir(str(tmp_path / "out"))
    settings = {"format": "same"}
    manifest = Manifest(out)
    manifest.claim("denoise", "model-fingerprint", settings, 2)
    manifest.write_record(ShardRecord(0, earlier[0].name, 3, 3, 0, 1.0), np.zeros(3, np.uint64))
    job = BatchJob(
        name="denoise",
        source=source,
        out=out,
        fingerprint="model-fingerprint",
        settings=settings,
        decode=DecodeSpec(keep_mode=True),
        predictor=DenoisePredictor,
        predictor_kwargs={"bundle": unet_bundle},
        writer=mirror_writer(source),
        run=RunOptions(quiet=True),
    )
    with pytest.raises(
        JobError, match=r"other shards of the input \(shard 0 was 'files 0-2', now 'files 0-1'\)"
    ):
        run_batch_job(job)
    assert sorted(manifest.finished()) == [0]  # nothing of the earlier run was touched
