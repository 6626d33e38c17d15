"""What a report lets a user trace: the rejected files by name and reason, the worst images' whole
keys, the class names; and `--tsne` on a fully convolutional model (pooled codes, as `embed`)."""

from __future__ import annotations

import io
import json
import re
from html import escape
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from raeflow.cli import main
from raeflow.models import create_model, save_bundle

LONG = "a_rather_long_folder_name/with_a_subfolder"
"""Part of every key, so each key is far longer than a caption line."""


@pytest.fixture(scope="module")
def photo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """`raeflow report --tsne` of an untrained grey U-Net on two class folders of photos of several
    sizes, with one truncated and one empty file."""
    root = tmp_path_factory.mktemp("tracing")
    bundle = save_bundle(create_model("unet", in_channels=1, base_channels=4, depth=2), str(root / "unet"))
    data = root / "photos"
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (48, 48), (64, 40), (36, 52), (44, 60), (56, 44), (40, 40), (52, 36)]
    for i, (height, width) in enumerate(sizes):
        folder = data / ("everyday" if i % 2 == 0 else "science") / LONG
        folder.mkdir(parents=True, exist_ok=True)
        y, x = np.mgrid[0:height, 0:width]
        pixels = (120 + 80 * np.sin(x / (3 + i)) + 30 * np.cos(y / 5)) + rng.normal(0, 10, (height, width))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"photo_number_{i:04d}.png")
    whole = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(whole, "PNG")
    (data / "science" / LONG / "cut_short.png").write_bytes(whole.getvalue()[:200])  # truncated
    (data / "science" / LONG / "nothing.png").write_bytes(b"")  # empty
    out = root / "report"
    args = ["report", "--data", str(data), "--model", bundle, "--out", str(out), "--tsne", "--worst-k", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result


def test_tsne_maps_a_fully_convolutional_model_by_the_embed_rule(photo_report) -> None:
    out, result = photo_report
    assert (
        "is fully convolutional: for the t-SNE map each image's code is averaged over space (16 values)"
        in result.stderr
    )
    summary = json.loads((out / "summary.json").read_text())
    assert "figures/tsne.png" in summary["figures"]
    assert "averaged over space (16 values)" in summary["notes"]["tsne"]
    with Image.open(out / "figures" / "tsne.png") as image:
        assert image.width > 600  # two panels: photos of several sizes map beside their embeddings


def test_the_report_names_every_rejected_file_and_why(photo_report) -> None:
    out, _ = photo_report
    summary = json.loads((out / "summary.json").read_text())
    rejected = summary["rejected"]
    assert rejected["count"] == 2 and rejected["by_reason"] == {"truncated": 1, "empty": 1}
    reasons = {row["key"]: row["reason"] for row in rejected["listed"]}
    assert set(reasons) == {f"science/{LONG}/cut_short", f"science/{LONG}/nothing"}
    assert reasons[f"science/{LONG}/cut_short"].startswith("truncated")
    assert reasons[f"science/{LONG}/nothing"].startswith("empty")
    html = (out / "report.html").read_text(encoding="utf-8")
    section = html[html.index("<h2>Rejected images</h2>") :]
    for key, reason in reasons.items():
        assert f'<td class="key">{escape(key)}</td><td class="text">{escape(reason)}</td>' in section
    assert "2 image(s) could not be used (truncated: 1, empty: 1)" in section


def test_worst_images_show_their_whole_keys_wrapped(photo_report) -> None:
    out, _ = photo_report
    summary = json.loads((out / "summary.json").read_text())
    worst = [row["key"] for row in summary["worst"]]
    assert len(worst) == 4 and all(len(key) > 60 for key in worst)
    html = (out / "report.html").read_text(encoding="utf-8")
    table = html[html.index('id="worst-keys"') :]
    table = table[: table.index("</table>")]
    assert re.findall(r'<td class="key">([^<]*)</td>', table) == [escape(key) for key in worst]
    assert "overflow-wrap: anywhere" in html and "…" not in html  # wrapped by the browser, never cut


def test_class_names_are_in_the_report_and_the_metrics_table(photo_report) -> None:
    out, _ = photo_report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == {"0": "everyday", "1": "science"}
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<td>class names (label=name)</td><td>0=everyday, 1=science</td>" in html
    metadata = pq.read_schema(out / "metrics.parquet").metadata
    assert json.loads(metadata[b"raeflow.labels"]) == {"0": "everyday", "1": "science"}
