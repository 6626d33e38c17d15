"""One embedding rule for `raeflow embed` and `raeflow report --tsne`: a fully convolutional model's
code is averaged over space (at each image's own size unless --image-size), and the job says so;
class names travel with the embedding table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from raeflow import console
from raeflow.batch.config import EmbedConfig, RunOptions
from raeflow.batch.embed import embed_job
from raeflow.cli import main
from raeflow.errors import ConfigError
from raeflow.models import load_bundle
from raeflow.models.embedding import embedding_rule


def _photo_classes(root: Path) -> Path:
    """Two class folders of small photos of different sizes (a fully convolutional model's input)."""
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(40, 56), (48, 48), (64, 40), (36, 52), (44, 60), (56, 44)]):
        folder = root / ("everyday" if i % 2 == 0 else "science")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i:02d}.png")
    return root


@pytest.fixture()
def level() -> Iterator[None]:
    yield
    console.set_level("normal")  # the console level is process-wide: leave it as the next test expects


def test_the_rule_for_fixed_size_and_fully_convolutional_models() -> None:
    fixed = embedding_rule("conv", {"channels": 1, "height": 28, "width": 28}, 196)
    assert (fixed.size, fixed.dim, fixed.pooled, fixed.notice("conv")) == ((28, 28), 196, False, None)

    meta = load_bundle("builtin:denoise-rgb").meta
    pooled = embedding_rule("builtin:denoise-rgb", meta["input_contract"], meta["embedding_dim"])
    assert (pooled.size, pooled.dim, pooled.pooled) == (None, 48, True)
    assert pooled.notice("builtin:denoise-rgb") == (
        "builtin:denoise-rgb is fully convolutional: each image's code is averaged over space (48 values) "
        "at the image's own size; --image-size HxW resizes first and is faster on large photos"
    )
    resized = embedding_rule("m", meta["input_contract"], 48, (64, 96))
    assert resized.size == (64, 96) and resized.notice("m") is not None
    assert resized.notice("m").endswith("(48 values) after resizing it to 64x96")

    with pytest.raises(ConfigError, match="its code is not averaged over space"):
        embedding_rule("m", meta["input_contract"], None)


def test_embed_says_when_it_pools_a_fully_convolutional_code(
    tmp_path: Path, unet_bundle: str, conv_bundle: str, capsys, level
) -> None:
    data = str(_photo_classes(tmp_path / "photos"))
    job = embed_job(EmbedConfig(data=data, model=unet_bundle, out=str(tmp_path / "a")))
    notice = capsys.readouterr().err.strip().splitlines()
    assert notice == [
        f"{unet_bundle} is fully convolutional: each image's code is averaged over space (16 values) at "
        "the image's own size; --image-size HxW resizes first and is faster on large photos"
    ]
    assert job.decode.height is None and job.predictor_kwargs["image_size"] is None  # each at its own size

    job = embed_job(EmbedConfig(data=data, model=unet_bundle, out=str(tmp_path / "b"), image_size=(32, 32)))
    assert capsys.readouterr().err.strip().endswith("(16 values) after resizing it to 32x32")
    assert (job.decode.height, job.decode.width) == (32, 32)

    embed_job(
        EmbedConfig(data="builtin:digits", model=conv_bundle, out=str(tmp_path / "c"), image_size=(28, 28))
    )
    assert capsys.readouterr().err == ""  # a fixed-size model: nothing to say

    embed_job(EmbedConfig(data=data, model=unet_bundle, out=str(tmp_path / "d"), run=RunOptions(quiet=True)))
    console.set_level("quiet")  # --quiet
    embed_job(EmbedConfig(data=data, model=unet_bundle, out=str(tmp_path / "e")))
    assert capsys.readouterr().err == ""


def test_cli_embeds_photos_of_any_size_with_pooled_codes_and_class_names(
    ray_session, tmp_path: Path, unet_bundle: str
) -> None:
    data, out = _photo_classes(tmp_path / "photos"), tmp_path / "emb"
    result = CliRunner().invoke(
        main, ["embed", "--data", str(data), "--model", unet_bundle, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.count("is fully convolutional: each image's code is averaged over space") == 1
    table = pq.read_table(out)
    assert table.num_rows == 6 and table.schema.field("embedding").type.list_size == 16
    assert np.isfinite(np.stack(table.column("embedding").to_numpy(zero_copy_only=False))).all()
    for part in out.glob("part-*.parquet"):
        metadata = pq.read_schema(part).metadata
        assert json.loads(metadata[b"raeflow.labels"]) == {"0": "everyday", "1": "science"}
    labels = dict(zip(table.column("key").to_pylist(), table.column("label").to_pylist(), strict=True))
    assert labels["everyday/photo_00"] == 0 and labels["science/photo_01"] == 1


def test_an_unlabelled_source_writes_no_class_names(tmp_path: Path, conv_bundle: str) -> None:
    job = embed_job(
        EmbedConfig(data="builtin:digits", model=conv_bundle, out=str(tmp_path), image_size=(28, 28))
    )
    assert b"raeflow.labels" not in job.writer.schema.metadata  # digits have labels but no class names
