"""The offline pages: dedup's duplicates.html (groups, largest first, paginated) and neighbors' page.

No network: styles and the page switcher are inline, thumbnails are data URIs (`thumbnails.py`);
without JavaScript every page shows at once. A group shows its members (the kept representative
first, framed), their similarity to it and the source each came from; the `--html-thumbnails`
first images, in that order, get a thumbnail read from their source, an unreadable one a
placeholder with the reason.
"""

from __future__ import annotations

import html
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raeflow.curate.thumbnails import (
    THUMBNAIL_STYLE,
    Item,
    Thumbnail,
    figure_html,
    read_thumbnails,
    thumbnail_of,
)

GROUPS_PER_PAGE = 50

_STYLE = (
    """
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
.js section.page{display:none}.js section.page.shown{display:block}nav button{margin-right:.5em}
"""
    + THUMBNAIL_STYLE
)

_SCRIPT = """
document.documentElement.className='js';
let page=0;const pages=document.querySelectorAll('section.page');
function show(n){page=Math.max(0,Math.min(pages.length-1,n));
pages.forEach((p,i)=>p.classList.toggle('shown',i===page));
document.getElementById('at').textContent=(page+1)+' / '+pages.length;}
show(0);
"""


def _document(title: str, body: str, script: str = "") -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}"
        + (f"<script>{script}</script>" if script else "")
        + "</body></html>\n"
    )


def write_gallery(groups: pa.Table, settings: Any, data_uri: str) -> str:
    """The page for groups.parquet's rows `groups`: `settings.html_groups` groups at most, thumbnails
    for the first `settings.html_thumbnails` images."""
    shown = groups.filter(pc.less_equal(groups.column("group"), settings.html_groups))
    rows = shown.to_pylist()
    num_groups = len(set(groups.column("group").to_pylist()))
    by_group: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)
    numbers = sorted(by_group)
    ordered = [(row["key"], row.get("source")) for number in numbers for row in by_group[number]]
    with_thumbnail = ordered[: settings.html_thumbnails]
    thumbs = read_thumbnails(with_thumbnail, label="thumbnails") if with_thumbnail else {}
    pages = [numbers[i : i + GROUPS_PER_PAGE] for i in range(0, len(numbers), GROUPS_PER_PAGE)] or [[]]
    body = "".join(_page(page, by_group, thumbs, settings.html_thumbnails) for page in pages)
    note = (
        f"{num_groups:,} groups of near-duplicates in {html.escape(data_uri)} "
        f"(cosine similarity &ge; {settings.threshold:g}); framed and bold: the image kept"
    )
    if num_groups > len(numbers):
        note += f"; the {len(numbers):,} largest shown, groups.parquet lists all"
    if len(ordered) > len(with_thumbnail):
        note += f"; thumbnails for the first {len(with_thumbnail):,} images (--html-thumbnails)"
    unread = sum(1 for thumb in thumbs.values() if thumb.src is None)
    if unread:
        note += f"; {unread:,} could not be read (each says why)"
    return _document(
        "raeflow dedup: duplicates",
        f"<h1>Near-duplicates</h1><p>{note}</p>"
        '<nav><button onclick="show(page-1)">previous</button><span id="at"></span> '
        f'<button onclick="show(page+1)">next</button></nav>{body}',
        _SCRIPT,
    )


def _page(
    numbers: list[int], by_group: dict[int, list[dict[str, Any]]], thumbs: dict[Item, Thumbnail], limit: int
) -> str:
    beyond = Thumbnail(None, f"not shown: beyond the first {limit:,} images (--html-thumbnails)")
    parts = ['<section class="page">']
    for number in numbers:
        members = by_group[number]
        parts.append(f'<h2>group {number} &middot; {len(members)} images</h2><div class="thumbs">')
        for row in members:
            key, source = row["key"], row.get("source")
            name = f"<b>{html.escape(key)}</b>" if row["keep"] else html.escape(key)
            caption = f"{name}<br>similarity {row['similarity']:.4f}" + _source_line(source)
            kind = "keep" if row["keep"] else "drop"
            parts.append(figure_html(thumbs.get((key, source), beyond), caption, css_class=kind, alt=key))
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _source_line(source: str | None) -> str:
    return f'<br><span class="src">{html.escape(source)}</span>' if source else ""


def neighbors_page(
    rows: pa.Table,
    *,
    query: str,
    by_key: bool,
    query_source: str | None,
    query_data: bytes | None,
    index: str,
    metric: str,
) -> str:
    """The page of `raeflow neighbors --html`: the query image, then its neighbours by rank."""
    score = "similarity" if metric == "cosine" else "distance"
    listed = rows.to_pylist()
    items: list[Item] = [(row["key"], row.get("source")) for row in listed]
    if by_key:
        items.insert(0, (query, query_source))
    thumbs = read_thumbnails(items)
    if by_key:
        mine, caption = (
            thumbs[(query, query_source)],
            f"<b>{html.escape(query)}</b>{_source_line(query_source)}",
        )
    else:
        mine = thumbnail_of(query_data) if query_data else Thumbnail(None, "the image was not kept")
        caption = f"<b>{html.escape(query)}</b>"
    figures = [
        figure_html(
            thumbs[(row["key"], row.get("source"))],
            f"#{row['rank']} &middot; {score} {row[score]:.4f}<br>{html.escape(row['key'])}"
            + _source_line(row.get("source")),
            alt=row["key"],
        )
        for row in listed
    ]
    what = "key" if by_key else "image"
    body = (
        f"<h1>Nearest images</h1><p>the {len(listed)} images of the index {html.escape(index)} nearest "
        f"to the {what} {html.escape(query)} ({metric} {score}{', itself left out' if by_key else ''})</p>"
        f'<h2>query</h2><div class="thumbs">{figure_html(mine, caption, css_class="keep", alt=query)}</div>'
        f'<h2>neighbours</h2><div class="thumbs">{"".join(figures)}</div>'
    )
    return _document(f"raeflow neighbors: {query}", body)
