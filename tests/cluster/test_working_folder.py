"""Ray's workers import the raeflow the command imported, whatever folder the command runs in.

Ray puts the driver's working folder first on its workers' `sys.path`. Run from the folder that
holds a clone (`git clone ... raeflow`), the workers used to import that `raeflow/` folder as an
empty namespace package and fail with `cannot import name '__version__' from 'raeflow'`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import raeflow
from raeflow.data.images import encode_image

RAEFLOW = Path(sys.executable).parent / "raeflow"


def run_in(folder: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """The installed `raeflow` program run with `folder` as its working folder, on its private Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [str(RAEFLOW), *args], cwd=folder, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture()
def digits(tmp_path: Path, mnist_digits: tuple[np.ndarray, np.ndarray]) -> Path:
    """A folder of four real MNIST digits as PNG files."""
    images, _ = mnist_digits
    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(encode_image(images[i][:, :, None], "png"))
    return folder


def test_embed_from_the_folder_that_holds_the_clone(tmp_path: Path, digits: Path) -> None:
    here = tmp_path / "work"
    (here / "raeflow").mkdir(parents=True)  # what `git clone ... raeflow` leaves beside the user
    out = tmp_path / "emb"

    done = run_in(here, ["embed", "--data", str(digits), "--model", "builtin:mnist-conv", "--out", str(out)])

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    table = pq.read_table(out, columns=["key"])
    assert sorted(table.column("key").to_pylist()) == ["0", "1", "2", "3"]
    assert (out / "_SUCCESS").exists()


def test_another_raeflow_package_in_the_working_folder_is_refused(tmp_path: Path, digits: Path) -> None:
    here = tmp_path / "other-clone"
    (here / "raeflow").mkdir(parents=True)
    (here / "raeflow" / "__init__.py").write_text("raise ImportError('not the raeflow that runs')\n")
    out = tmp_path / "emb"

    done = run_in(here, ["embed", "--data", str(digits), "--model", "builtin:mnist-conv", "--out", str(out)])

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0] == (
        f"error: the working folder holds {here.resolve() / 'raeflow'}, which Ray's workers would import "
        f"instead of the raeflow this command runs ({Path(raeflow.__file__).resolve().parent}): "
        "run raeflow from another folder"
    )
    assert not out.exists()
