"""What a job is and where it may write: resolved URIs, --out outside --data, honest speeds."""

from __future__ import annotations

import os

import pytest

from raeflow.batch.config import EmbedConfig, RunOptions
from raeflow.batch.embed import run_embed
from raeflow.batch.location import check_out_outside_data, resolved_uri
from raeflow.batch.manifest import ShardRecord
from raeflow.batch.output import OutputDir
from raeflow.batch.summary import summarise
from raeflow.data.sources.base import Shard
from raeflow.errors import ConfigError
from tests.batch.inputs import write_digits


@pytest.mark.parametrize(
    ("data", "out"),
    [
        ("photos", "photos/denoised"),
        ("photos/", "photos"),
        ("photos/*.png", "photos/x"),
        ("./photos", "photos/a/b"),
    ],
)
def test_out_inside_data_is_refused(tmp_path, monkeypatch, data, out) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="is inside --data"):
        check_out_outside_data(data, out)


def test_out_beside_data_is_fine(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    check_out_outside_data("photos", "photos-denoised")
    check_out_outside_data("builtin:mnist", "anything")


def test_embed_into_its_own_input_writes_nothing(tmp_path, conv_bundle, mnist_digits) -> None:
    write_digits(tmp_path / "in", mnist_digits[0], num=3)
    before = sorted(p for p in (tmp_path / "in").rglob("*"))
    config = EmbedConfig(data=str(tmp_path / "in"), model=conv_bundle, out=str(tmp_path / "in" / "emb"))
    with pytest.raises(ConfigError, match="is inside --data"):
        run_embed(config)
    assert sorted(p for p in (tmp_path / "in").rglob("*")) == before


def test_resolved_uris_name_one_input_one_way(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path.resolve() / "data")
    assert resolved_uri("data") == resolved_uri("./data/") == resolved_uri(absolute) == absolute
    assert resolved_uri(f"file://{absolute}") == absolute
    assert resolved_uri("s3://bucket/data/") == "s3://bucket/data"
    assert resolved_uri("builtin:mnist") == "builtin:mnist"


def test_rerun_with_an_absolute_path_from_another_folder_is_the_same_job(
    ray_session, tmp_path, monkeypatch, conv_bundle, mnist_digits
) -> None:
    write_digits(tmp_path / "in", mnist_digits[0], num=6)
    monkeypatch.chdir(tmp_path)
    first = run_embed(EmbedConfig(data="in", model=conv_bundle, out="emb", run=RunOptions(quiet=True)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = run_embed(
        EmbedConfig(
            data=str(tmp_path / "in"),
            model=conv_bundle,
            out=os.path.join("..", "emb"),
            run=RunOptions(quiet=True),
        )
    )
    assert again.num_shards_skipped == again.num_shards == first.num_shards and again.images_out == 6
    # The workers wrote where the driver was told, not relative to their own working folder.
    assert len(list((tmp_path / "emb").glob("part-*.parquet"))) == first.num_shards


def test_a_slow_job_never_reports_zero_images_per_second(tmp_path) -> None:
    shard = Shard(0, "big.jpg", ("big.jpg",))
    done = {0: ShardRecord(shard=0, name="big.jpg", rows_in=2, rows_out=2, rows_rejected=0, seconds=60.0)}
    summary = summarise("denoise", OutputDir(str(tmp_path)), [shard], done, [shard], 60.0)
    assert summary.images_per_second == pytest.approx(2 / 60, rel=1e-2)
    speed = next(line for line in summary.lines() if "speed" in line)
    assert "0.033 images/s" in speed and "0.0 images/s" not in speed


def test_a_rate_reads_well_at_every_size() -> None:
    from raeflow.batch.summary import format_rate

    assert [format_rate(v) for v in (1234.4, 12.34, 0.0333)] == ["1,234", "12.3", "0.033"]
