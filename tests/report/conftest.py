"""Fixtures of the report tests: a tiny model bundle, 8x8 digits as decoded rows, a headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    # Networking off: every host name fails to resolve and any connection would go to a closed port.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
)

# Run after the page has loaded; records every image's decoded width where --dump-dom shows it.
_WIDTH_PROBE = (
    "<script>window.addEventListener('load', () => { document.body.setAttribute('data-image-widths', "
    "Array.from(document.images).map(i => i.naturalWidth).join(',')); });</script>"
)


@dataclass
class BrowserView:
    """What headless Chromium made of a page."""

    image_widths: list[int]
    """`naturalWidth` of every <img> after loading (0 for an image that did not load)."""
    screenshot: np.ndarray
    """The rendered page, `uint8` `(H, W, 3)`."""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium; skipped (outside CI only) when it is not installed."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; `make test` installs it (make chromium)")
        pytest.skip("chromium not installed; run `make chromium` to enable the report.html browser test")
    return path


@pytest.fixture()
def open_in_browser(chromium: str, tmp_path: Path) -> Callable[[Path], BrowserView]:
    """A function that loads an HTML file in headless Chromium, networking off, fresh profile."""
    from PIL import Image

    def run(args: list[str], profile: str) -> str:
        result = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def view(page: Path) -> BrowserView:
        probe = tmp_path / "probed.html"
        probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _WIDTH_PROBE + "</body>"))
        dom = run(["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], "profile-dom")
        found = re.search(r'data-image-widths="([0-9,]*)"', dom)
        assert found is not None, "the page did not finish loading in Chromium"
        widths = [int(w) for w in found.group(1).split(",") if w]
        shot = tmp_path / "screenshot.png"
        run([f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()], "profile-shot")
        with Image.open(shot) as image:
            pixels = np.asarray(image.convert("RGB"))
        return BrowserView(image_widths=widths, screenshot=pixels)

    return view


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained conv bundle for 8x8 grey digits (plumbing, not quality)."""
    import torch

    from raeflow.models import create_model, save_bundle

    torch.manual_seed(0)
    model = create_model("conv", in_channels=1, height=8, width=8, channels=[4, 4])
    return save_bundle(model, str(tmp_path_factory.mktemp("bundle") / "digits-conv"))


@pytest.fixture(scope="session")
def digit_rows() -> pa.Table:
    """scikit-learn's first 60 8x8 digits as decoded rows (`DECODED_SCHEMA`), the last one unreadable."""
    from sklearn.datasets import load_digits

    from raeflow.batch.decoding import DecodeSpec, decode_rows
    from raeflow.data import images

    x, y = load_digits(return_X_y=True)
    pixels = (x[:60].reshape(-1, 8, 8, 1) * 16).clip(0, 255).astype(np.uint8)  # (N, 8, 8, 1)
    data = [images.encode_raw(p) for p in pixels[:59]] + [b"this is not an image"]
    rows = pa.table(
        {
            "key": [f"digits/{i}" for i in range(60)],
            "source": ["builtin:digits"] * 60,
            "image": pa.array(data, pa.binary()),
            "label": pa.array(y[:60], pa.int64()),
            "error": pa.nulls(60, pa.string()),
            "shard": pa.array([0] * 60, pa.int64()),
        }
    )
    return decode_rows(rows, DecodeSpec(channels=1, height=8, width=8))
