"""duplicates.html: the near-duplicate groups, largest first, as one self-contained page.

No network: styles and the page switcher are inline; without JavaScript every page shows at once.
Each group lists its members (the kept representative first), their similarity to it and, where the
table has one, the source each image came from. Thumbnails will come from those sources later.
"""

from __future__ import annotations

import html
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

GROUPS_PER_PAGE = 50

_STYLE = """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.3em 0 1.2em}td,th{padding:2px 10px;text-align:left}
tr.keep td{font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.js section.page{display:none}.js section.page.shown{display:block}nav button{margin-right:.5em}
"""

_SCRIPT = """
document.documentElement.className='js';
let page=0;const pages=document.querySelectorAll('section.page');
function show(n){page=Math.max(0,Math.min(pages.length-1,n));
pages.forEach((p,i)=>p.classList.toggle('shown',i===page));
document.getElementById('at').textContent=(page+1)+' / '+pages.length;}
show(0);
"""


def write_gallery(groups: pa.Table, settings: Any, data_uri: str) -> str:
    """The page for groups.parquet's rows `groups`, `settings.html_groups` groups at most."""
    shown = groups.filter(pc.less_equal(groups.column("group"), settings.html_groups))
    rows = shown.to_pylist()
    num_groups = len(set(groups.column("group").to_pylist()))
    by_group: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)
    numbers = sorted(by_group)
    pages = [numbers[i : i + GROUPS_PER_PAGE] for i in range(0, len(numbers), GROUPS_PER_PAGE)] or [[]]
    body = "".join(_page(page, by_group) for page in pages)
    note = (
        f"{num_groups:,} groups of near-duplicates in {html.escape(data_uri)} "
        f"(cosine similarity &ge; {settings.threshold:g}); bold: the image kept"
    )
    if num_groups > len(numbers):
        note += f"; the {len(numbers):,} largest shown, groups.parquet lists all"
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>raeflow dedup: duplicates</title>'
        f"<style>{_STYLE}</style></head><body><h1>Near-duplicates</h1><p>{note}</p>"
        '<nav><button onclick="show(page-1)">previous</button><span id="at"></span> '
        '<button onclick="show(page+1)">next</button></nav>'
        f"{body}<script>{_SCRIPT}</script></body></html>\n"
    )


def _page(numbers: list[int], by_group: dict[int, list[dict[str, Any]]]) -> str:
    parts = ['<section class="page">']
    for number in numbers:
        members = by_group[number]
        parts.append(f"<h2>group {number} &middot; {len(members)} images</h2><table>")
        parts.append("<tr><th>key</th><th>similarity</th><th>source</th></tr>")
        for row in members:
            source = html.escape(str(row.get("source") or ""))
            parts.append(
                f'<tr class="{"keep" if row["keep"] else "drop"}"><td>{html.escape(row["key"])}</td>'
                f'<td class="num">{row["similarity"]:.4f}</td><td>{source}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</section>")
    return "".join(parts)
