"""Token discovery follows Ray's order: RAY_AUTH_TOKEN, then RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from raeflow.cluster.auth import find_token
from raeflow.cluster.submit import job_code, resolve_address
from raeflow.errors import ConfigError


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    return tmp_path


def test_token_variable_wins_over_path_and_home(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "tok"
    path.write_text("from-path")
    token = find_token({"RAY_AUTH_TOKEN": "from-env", "RAY_AUTH_TOKEN_PATH": str(path)}, home)
    assert token is not None and (token.value, token.origin) == ("from-env", "RAY_AUTH_TOKEN")
    assert token.http_headers() == {"Authorization": "Bearer from-env"}


def test_token_path_wins_over_home(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "tok"
    path.write_text("from-path\n")
    token = find_token({"RAY_AUTH_TOKEN_PATH": str(path)}, home)
    assert token is not None and token.value == "from-path" and str(path) in token.origin


def test_home_token_is_the_fallback_and_none_when_absent(home: Path, tmp_path: Path) -> None:
    token = find_token({}, home)
    assert token is not None and (token.value, token.origin) == ("from-home", "~/.ray/auth_token")
    assert find_token({}, tmp_path / "nobody") is None


@pytest.mark.parametrize("content", [None, ""])
def test_unusable_token_path_is_an_error_not_a_fallthrough(home: Path, tmp_path: Path, content) -> None:
    path = tmp_path / "tok"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(path)}, home)


def test_address_defaults_like_rays_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert resolve_address(None) == "http://10.0.0.5:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://head.example:8265/")
    assert resolve_address(None) == "https://head.example:8265"
    assert resolve_address("http://h:1") == "http://h:1"
    with pytest.raises(ConfigError, match="--address"):
        resolve_address("ray://head:10001")


def test_job_code_ships_the_checkout_without_venv_or_data(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import create_package

    code = job_code("embed")
    assert code.command == ["python", "jobs/embed.py"]
    package = tmp_path / "code.zip"
    env = code.runtime_env
    create_package(env["working_dir"], package, include_gitignore=True, excludes=env["excludes"])
    names = set(zipfile.ZipFile(package).namelist())
    assert {"jobs/embed.py", "raeflow/cli.py", "raeflow/data/sources/base.py", "constraints.txt"} <= names
    assert not [name for name in names if name.startswith((".venv/", ".git/", "tests/")) or ".pyc" in name]
    assert job_code("embed", ship_code=False).runtime_env == {}
    with pytest.raises(ConfigError, match="train, embed, denoise, report"):
        job_code("shard")
