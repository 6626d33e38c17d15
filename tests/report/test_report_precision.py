"""report.html states the precision the reconstructions were computed in (summary.json's `compute`)."""

from __future__ import annotations

import re

from raeflow.report.html import render_report


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
