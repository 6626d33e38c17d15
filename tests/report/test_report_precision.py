"""report.html states the precision the reconstructions were computed in (summary.json's `compute`)."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from raeflow.batch.config import RunOptions
from raeflow.report.config import ReportConfig
from raeflow.report.html import render_report
from raeflow.report.job import run_report


def _fact_rows(page: str) -> dict[str, str]:
    return dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", page))


def test_page_states_the_precision_of_the_reconstructions() -> None:
    summary = {
        "model": {"arch": "conv", "uri": "m"},
        "data": "builtin:digits",
        "compute": {
            "precision": {"bf16": 1},
            "threads": [2],
            "description": "bf16 autocast, 2 threads per actor",
        },
    }
    rows = _fact_rows(render_report(summary, {}, {}))
    assert rows["reconstructions computed in"] == "bf16 autocast, 2 threads per actor; metrics in float32"


def test_page_of_a_job_whose_records_do_not_say_makes_no_claim() -> None:
    rows = _fact_rows(render_report({"model": {"arch": "conv"}, "data": "d", "compute": None}, {}, {}))
    assert "reconstructions computed in" not in rows and rows["architecture"] == "conv"


@pytest.mark.timeout(300)
def test_report_of_a_real_job_states_its_precision(ray_session, tmp_path, digits_bundle) -> None:
    out = tmp_path / "report"
    run = RunOptions(precision="fp32", quiet=True)
    config = ReportConfig(data="builtin:digits", model=digits_bundle, out=str(out), limit=40, run=run)
    result = run_report(config)
    assert result.summary["compute"]["precision"] == {"fp32": 1}
    assert json.loads((out / "summary.json").read_text())["compute"]["threads"] == [1]
    rows = _fact_rows((out / "report.html").read_text())
    assert rows["reconstructions computed in"] == "float32, 1 thread per actor; metrics in float32"
    # metrics.parquet says it too, as embedding tables do (its parts used to drop the key)
    assert pq.read_metadata(out / "metrics.parquet").metadata[b"raeflow.precision"] == b"fp32"
