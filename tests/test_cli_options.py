"""The commands' options come from their settings dataclasses: names, defaults and help cannot drift."""

from __future__ import annotations

import dataclasses

import click
import pytest

from raeflow.batch.config import DenoiseConfig, EmbedConfig, RunOptions
from raeflow.cli import main
from raeflow.commands.batch import RUN_SKIP
from raeflow.commands.options import field_help, option_name, settings_from
from raeflow.data.shard_writer import ShardSettings
from raeflow.report.config import ReportConfig
from raeflow.train.config import TrainConfig

GENERATED = {
    "embed": (EmbedConfig, RUN_SKIP),
    "denoise": (DenoiseConfig, RUN_SKIP),
    "report": (ReportConfig, RUN_SKIP),
    "shard": (ShardSettings, ()),
    "train": (TrainConfig, ("storage_options",)),
}


def leaf_fields(cls: type, skip: tuple[str, ...]) -> list[tuple[type, dataclasses.Field]]:
    rows = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(f.type) or f.type == "RunOptions":
            rows += leaf_fields(RunOptions, skip)
        else:
            rows.append((cls, f))
    return rows


def parse(command: str, args: list[str]) -> dict:
    cmd = main.commands[command]
    with cmd.make_context(command, args) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("command", sorted(GENERATED))
def test_every_setting_has_an_option_whose_help_is_its_docstring(command: str) -> None:
    cls, skip = GENERATED[command]
    params = {p.name: p for p in main.commands[command].params}
    for owner, f in leaf_fields(cls, skip):
        assert f.name in params, f"{command} has no option for {owner.__name__}.{f.name}"
        param = params[f.name]
        if isinstance(param, click.Option):
            assert param.help == field_help(owner)[f.name]


def test_one_name_for_the_input_kind_everywhere() -> None:
    for command in GENERATED:
        opts = {o for p in main.commands[command].params for o in p.opts}
        assert "--source-format" in opts, command
    # --format is an output format, except train's deprecated alias of --source-format.
    assert (
        parse("train", ["--data", "d", "--model", "m", "--out", "o", "--format", "parquet"])["format"]
        == "parquet"
    )
    assert (
        parse("denoise", ["--data", "d", "--model", "m", "--out", "o", "--format", "png"])["format"] == "png"
    )


def test_options_build_the_settings_with_each_jobs_own_defaults() -> None:
    base = ["--data", "d", "--model", "m", "--out", "o"]
    embed = settings_from(EmbedConfig, parse("embed", [*base, "--image-size", "32x48", "--workers", "2"]))
    assert embed == EmbedConfig(data="d", model="m", out="o", image_size=(32, 48), run=RunOptions(workers=2))
    denoise = settings_from(DenoiseConfig, parse("denoise", [*base, "--max-pixels-per-pass", "4096"]))
    assert denoise == DenoiseConfig(data="d", model="m", out="o", max_pixels_per_pass=4096)
    assert denoise.run.batch_size == DenoiseConfig(data="d", model="m", out="o").run.batch_size == 8
    report = settings_from(ReportConfig, parse("report", [*base, "--gallery", "4", "--tsne"]))
    assert report == ReportConfig(data="d", model="m", out="o", gallery_size=4, tsne=True)
    shard = settings_from(ShardSettings, parse("shard", ["src", "--out", "o", "--shard-size", "7"]))
    assert shard == ShardSettings(source="src", out="o", shard_size=7)
    train = settings_from(
        TrainConfig, parse("train", [*base, "--image-size", "28", "--model-arg", "latent_dim=8", "--gpu"])
    )
    assert train == TrainConfig(
        data="d", model="m", out="o", image_size=(28, 28), model_args={"latent_dim": 8}, gpu=True
    )


def test_option_names_follow_field_names() -> None:
    assert option_name("max_pixels_per_pass") == "--max-pixels-per-pass"
    help_text = main.commands["denoise"].get_help(click.Context(main.commands["denoise"]))
    assert "--max-pixels-per-pass" in help_text  # the option the --tile help refers to exists


def test_train_list_options_default_to_empty_and_parse_when_given() -> None:
    """--grid-steps (a tuple field) is empty unless given, and '1000,5000' becomes (1000, 5000)."""
    from raeflow.commands.train import train_command

    def parsed(*args: str) -> dict:
        ctx = train_command.make_context("train", ["--data", "d", "--model", "conv", "--out", "o", *args])
        return dict(ctx.params)

    assert parsed()["grid_steps"] == ()
    assert parsed("--grid-steps", "5000,1000")["grid_steps"] == (1000, 5000)
    assert parsed("--no-augment")["augment"] is False and parsed()["augment"] is True
