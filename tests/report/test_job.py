"""`raeflow report` end to end on local Ray: the files it writes, their numbers, resume, the HTML page."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from raeflow.batch.config import RunOptions
from raeflow.cli import main
from raeflow.errors import JobError
from raeflow.models import load_bundle
from raeflow.report.config import ReportConfig
from raeflow.report.job import run_report

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def _config(bundle: str, out: Path | str, **overrides) -> ReportConfig:
    settings = dict(
        data="builtin:digits",
        model=bundle,
        out=str(out),
        noise="gaussian:0.1",
        tsne=True,
        tsne_points=100,
        worst_k=8,
        gallery_size=8,
        limit=600,  # digits shards hold 500 images: one whole shard and 100 of the next
        run=RunOptions(batch_size=128, quiet=True),
    )
    settings.update(overrides)
    return ReportConfig(**settings)


@pytest.fixture(scope="module")
def digits_report(digits_bundle: str, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("report") / "digits"
    began = time.monotonic()
    result = run_report(_config(digits_bundle, out))
    out.parent.joinpath("wall_seconds").write_text(str(time.monotonic() - began))  # what the test measured
    return out, result


def test_writes_the_report_folder(digits_report) -> None:
    out, _ = digits_report
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    expected = {"metrics.parquet", "summary.json", "report.html", "_SUCCESS", "_manifest/job.json"}
    expected |= {f"figures/{name}.png" for name in ("gallery", "histograms", "worst", "tsne")}
    expected |= {
        f"_manifest/{kind}-0000{i}.{ext}"
        for kind, ext in (("shard", "json"), ("keys", "bin"))
        for i in (0, 1)
    }
    expected |= {f"_parts/{kind}-0000{i}-000000.parquet" for kind in ("metrics", "samples") for i in (0, 1)}
    assert written == expected


def test_metrics_table_has_one_row_per_image(digits_report, digits_bundle: str) -> None:
    out, result = digits_report
    table = pq.read_table(out / "metrics.parquet")
    assert table.column_names == ["key", "label", "mse", "psnr", "ssim", "noisy_psnr", "noisy_ssim"]
    assert table.column("key").to_pylist() == [f"digits/{i}" for i in range(600)]
    fingerprint = load_bundle(digits_bundle).fingerprint
    assert table.schema.metadata[b"raeflow.model"].decode() == fingerprint
    frame = table.to_pandas()
    assert frame.notna().all().all()
    assert set(frame["label"]) == set(range(10))
    # PSNR is the MSE's, in dB with data range 1.
    np.testing.assert_allclose(frame["psnr"], 10 * np.log10(1 / frame["mse"]), rtol=1e-9)
    assert result.job.images_in == result.job.images_out == 600


def test_summary_matches_the_table(digits_report, digits_bundle: str) -> None:
    out, result = digits_report
    summary = json.loads((out / "summary.json").read_text())
    assert summary == result.summary
    frame = pq.read_table(out / "metrics.parquet").to_pandas()
    assert summary["counts"] == {
        "rows_in": 600,
        "rows_out": 600,
        "rows_rejected": 0,
        "shards": 2,
        "shards_skipped": 0,
        "store_retries": 0,  # a local folder: no object store to retry
    }
    for name in ("psnr", "ssim", "noisy_psnr", "mse"):
        stats = summary["metrics"][name]
        assert stats["count"] == 600
        assert stats["mean"] == pytest.approx(frame[name].mean(), rel=1e-9)
        assert stats["std"] == pytest.approx(frame[name].std(ddof=0), rel=1e-6)
        assert stats["p50"] == pytest.approx(frame[name].median(), rel=2e-3, abs=0.02)
    assert summary["psnr_gain_db"] == pytest.approx(frame["psnr"].mean() - frame["noisy_psnr"].mean())
    assert summary["noise"] == "gaussian:0.1" and summary["data"] == "builtin:digits"
    assert summary["model"]["fingerprint"] == load_bundle(digits_bundle).fingerprint
    assert summary["model"]["arch"] == "conv"
    # The worst-k shown are the table's lowest-PSNR images.
    lowest = frame.nsmallest(8, "psnr")["key"].tolist()
    assert [row["key"] for row in summary["worst"]] == lowest
    timings, wall = summary["timings"], float((out.parent / "wall_seconds").read_text())
    assert timings["job_seconds"] + timings["tsne_seconds"] <= timings["total_seconds"] <= wall
    assert summary["settings"]["limit"] == 600


def test_tsne_map_is_coloured_by_label(digits_report) -> None:
    out, result = digits_report
    assert "tsne" not in result.summary["notes"]
    with Image.open(out / "figures" / "tsne.png") as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(pixels, axis=0)}
    # tab10's first three label colours all appear in the scatter (blue, orange, green).
    for rgb in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        assert any(np.abs(np.array(c) - rgb).max() <= 40 for c in colours)


def test_report_html_opens_offline_and_shows_its_images(digits_report, open_in_browser) -> None:
    out, _ = digits_report
    html = (out / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", html)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 4
    view = open_in_browser(out / "report.html")
    assert len(view.image_widths) == 4 and all(width > 0 for width in view.image_widths)
    assert np.any(view.screenshot < 200, axis=-1).mean() > 0.05  # not a blank page
    assert len(np.unique(view.screenshot.reshape(-1, 3), axis=0)) > 100


def test_rerun_resumes_with_the_same_numbers(digits_report, digits_bundle: str) -> None:
    out, first = digits_report
    before = pq.read_table(out / "metrics.parquet")
    (out / "_manifest" / "shard-00001.json").unlink()  # as if the run died before finishing shard 1
    again = run_report(_config(digits_bundle, out))
    assert again.job.num_shards_skipped == 1 and again.job.images_in == 600
    assert pq.read_table(out / "metrics.parquet").equals(before)  # noise is seeded by key
    assert again.summary["metrics"] == first.summary["metrics"]
    with pytest.raises(JobError, match="another report run"):
        run_report(_config(digits_bundle, out, noise="gaussian:0.3"))


def _digit_folder(root: Path, count: int) -> Path:
    from sklearn.datasets import load_digits

    images = (load_digits().images[:count] * 16).clip(0, 255).astype(np.uint8)
    for i, pixels in enumerate(images):
        folder = root / ("even" if i % 2 == 0 else "odd")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((16, 16)).save(folder / f"digit{i:02d}.png")
    (root / "odd" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    return root


def test_cli_on_a_class_folder_counts_rejects_and_maps_by_label(digits_bundle: str, tmp_path: Path) -> None:
    data = _digit_folder(tmp_path / "digits", 20)
    out = tmp_path / "report"
    args = ["report", "--data", str(data), "--model", digits_bundle, "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--tsne", "--quiet", "--worst-k", "4"])
    assert result.exit_code == 0, result.output
    assert "20 out, 1 rejected" in result.output and "PSNR dB" in result.output
    table = pq.read_table(out / "metrics.parquet")
    # even/ and odd/ are class folders (sorted names -> 0, 1); no noise, so no noisy_psnr.
    assert table.column_names == ["key", "label", "mse", "psnr", "ssim"]
    assert table.num_rows == 20 and "even/digit00" in table.column("key").to_pylist()
    labels = dict(zip(table.column("key").to_pylist(), table.column("label").to_pylist(), strict=True))
    assert {labels[k] for k in labels if k.startswith("even/")} == {0}
    assert {labels[k] for k in labels if k.startswith("odd/")} == {1}
    rejected = pq.read_table(out / "_rejected").to_pylist()
    assert [r["key"] for r in rejected] == ["odd/broken"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["rows_rejected"] == 1 and summary["counts"]["rows_out"] == 20
    assert (
        "no labels" not in summary.get("notes", {}).get("tsne", "")
        and "figures/tsne.png" in summary["figures"]
    )
    assert "0=even" in summary["source"] and "1=odd" in summary["source"]  # the label mapping, shown
    with Image.open(io.BytesIO((out / "figures" / "worst.png").read_bytes())) as image:
        assert image.width > 100


def test_user_mistakes_are_one_line_errors(digits_bundle: str, tmp_path: Path) -> None:
    base = ["report", "--data", "builtin:digits", "--out", str(tmp_path / "r")]
    bad_noise = CliRunner().invoke(main, [*base, "--model", digits_bundle, "--noise", "fog:1"])
    assert bad_noise.exit_code == 2 and "error: bad noise spec" in bad_noise.output
    no_model = CliRunner().invoke(main, [*base, "--model", str(tmp_path / "nothing")])
    assert no_model.exit_code == 2 and no_model.output.startswith("error: ")
    assert "Traceback" not in bad_noise.output + no_model.output


def test_report_into_a_bucket(digits_bundle: str, s3_bucket: str) -> None:
    import s3fs

    out = f"{s3_bucket}/reports/digits"
    result = run_report(_config(digits_bundle, out, tsne=False, limit=50, noise=None))
    assert result.job.images_out == 50
    fs = s3fs.S3FileSystem()
    with fs.open(f"{out}/metrics.parquet", "rb") as handle:
        assert pq.read_table(handle).num_rows == 50
    assert json.loads(fs.cat_file(f"{out}/summary.json"))["counts"]["rows_out"] == 50
    html = fs.cat_file(f"{out}/report.html").decode()
    assert html.count("data:image/png;base64,") == 3 and fs.exists(f"{out}/_SUCCESS")
