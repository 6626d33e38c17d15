"""The `jobs/` entrypoints take exactly the options of the raeflow commands they run."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import raeflow
from raeflow.cli import main
from raeflow.cluster.submit import JOBS, job_code

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("job", JOBS)
def test_entrypoint_parses_the_commands_own_options(
    job: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", [f"jobs/{job}.py", "--help"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / "jobs" / f"{job}.py"), run_name="__main__")
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"Usage: raeflow {job} ")
    options = [opt for param in main.commands[job].params for opt in param.opts if opt.startswith("--")]
    assert options and all(option in help_text for option in options)


@pytest.mark.parametrize("job", JOBS)
def test_entrypoint_fails_like_the_command(
    job: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What `ray job submit -- python jobs/JOB.py ARGS` prints and returns is what `raeflow JOB ARGS` does.
    missing = tmp_path / "no-such-model"
    args = ["--data", "builtin:digits", "--model", str(missing), "--out", str(tmp_path / "out")]
    if job == "train":
        args = [
            "--data",
            "builtin:digits",
            "--model",
            "conv",
            "--out",
            str(tmp_path / "out"),
            "--epochs",
            "0",
        ]
    monkeypatch.setattr(sys, "argv", [f"jobs/{job}.py", *args])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(REPO / "jobs" / f"{job}.py"), run_name="__main__")
    entry = capsys.readouterr()
    command = CliRunner().invoke(main, [job, *args])
    assert exited.value.code == command.exit_code == 2
    assert entry.err == command.stderr and len(entry.err.strip().splitlines()) == 1
    assert entry.err.startswith("error: ") and entry.out == "" and not (tmp_path / "out").exists()


def test_installed_package_ships_as_a_py_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pip-installed raeflow has no jobs/ folder beside it: the package itself travels.
    package = tmp_path / "site-packages" / "raeflow"
    package.mkdir(parents=True)
    monkeypatch.setattr(raeflow, "__file__", str(package / "__init__.py"))
    code = job_code("denoise")
    assert code.runtime_env["py_modules"] == [str(package)]
    assert code.command == ["python", "-m", "raeflow.cli", "denoise"]
