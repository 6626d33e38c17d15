"""Jobs that run the model on whole photos (denoise, report) cut a folder finer than embed does:
a few hundred photos spread over every core, and an interrupted run redoes minutes, not the folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import raeflow.batch.denoise
import raeflow.batch.embed
import raeflow.report.job
from raeflow.batch.config import DenoiseConfig, EmbedConfig
from raeflow.data.sources import open_source
from raeflow.data.sources.folder import BYTES_PER_SHARD, FULL_SIZE_BYTES_PER_SHARD, FolderSource
from raeflow.report.config import ReportConfig

PHOTO_BYTES = 1536 * 1024
"""A 12-megapixel phone photo's JPEG: 1.5 MB."""


@pytest.fixture()
def phone_folder(tmp_path: Path) -> Path:
    """Twelve 'photos' of 1.5 MB (only their sizes matter to the shard cut)."""
    root = tmp_path / "phone"
    root.mkdir()
    for i in range(12):
        (root / f"IMG_{i:04d}.jpg").write_bytes(b"\xff\xd8" + b"\0" * PHOTO_BYTES)
    return root


def test_open_source_cuts_a_folder_at_the_budget_it_is_given(phone_folder: Path) -> None:
    default = open_source(str(phone_folder))
    finer = open_source(str(phone_folder), bytes_per_shard=FULL_SIZE_BYTES_PER_SHARD)
    assert isinstance(default, FolderSource) and default.bytes_per_shard == BYTES_PER_SHARD
    assert [len(s.paths) for s in default.list_shards()] == [12]  # 18 MB: one shard for embed
    assert [len(s.paths) for s in finer.list_shards()] == [2, 2, 2, 2, 2, 2]  # two 1.5 MB photos per 4 MiB


@pytest.mark.parametrize(
    ("module", "run", "config", "shards"),
    [
        (raeflow.batch.denoise, "run_denoise", DenoiseConfig, 6),
        (raeflow.report.job, "run_report", ReportConfig, 6),
        (raeflow.batch.embed, "run_embed", EmbedConfig, 1),
    ],
)
def test_each_job_opens_a_folder_with_its_own_cut(
    phone_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module, run, config, shards
) -> None:
    opened: list[FolderSource] = []

    def spy(*args, **kwargs):
        source = open_source(*args, **kwargs)
        opened.append(source)
        raise SystemExit("stop here: only the source matters")

    monkeypatch.setattr(module, "open_source", spy)
    settings = config(data=str(phone_folder), model="builtin:denoise-grey", out=str(tmp_path / "out"))
    with pytest.raises(SystemExit):
        getattr(module, run)(settings)
    assert len(opened[0].list_shards()) == shards
