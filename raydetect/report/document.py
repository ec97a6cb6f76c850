"""One model of a report, rendered to Markdown and to HTML, and one writer for every report.

A report is a title and a list of blocks (headings, paragraphs, tables, images, galleries of
thumbnails, raw HTML with a Markdown fallback). ``write_report`` writes ``report.md``,
``report.html``, its figures and, when given, ``results.json`` beside them, locally or on object
storage. The HTML embeds every figure as a data: URI and carries its own CSS and JavaScript, so
``report.html`` is one file that opens from disk, offline; the Markdown links the files beside it.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from raydetect.store import join, write_bytes, write_json


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str  # Markdown inline: `code`, **bold**, _italic_


@dataclass(frozen=True)
class Cell:
    """A table cell shown as ``text`` that sorts by ``value`` (e.g. a percentage)."""

    text: str
    value: float


@dataclass
class Table:
    """``interactive``: in HTML, headers sort the rows on click and a box filters them (plain
    JavaScript). Numeric cells (int, float) sort as numbers. ``markdown_limit`` caps the rows the
    Markdown shows (``more`` says where the rest are)."""

    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    interactive: bool = False
    markdown_limit: int | None = None
    more: str = ""


@dataclass
class Image:
    file: str  # relative to the report
    alt: str


@dataclass
class Thumb:
    """One gallery card: images side by side (files of the report), then caption lines."""

    files: Sequence[tuple[str, str]]  # (file relative to the report, alt text)
    caption: Sequence[str]  # Markdown inline, one line each


@dataclass
class Gallery:
    items: Sequence[Thumb]


@dataclass
class Html:
    """Content only HTML can show (interactive tables, embedded thumbnails); ``markdown`` stands in."""

    html: str
    markdown: str = ""


Block = Heading | Paragraph | Table | Image | Gallery | Html


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes, written beside

    def add(self, *blocks: Block) -> Report:
        self.blocks.extend(blocks)
        return self


def cell_text(value: Any) -> str:
    """A cell as shown: floats to 3 decimals (small ones in scientific notation), NaN as n/a."""
    if isinstance(value, Cell):
        return value.text
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.3f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell_text(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for b in report.blocks:
        if isinstance(b, Heading):
            lines += [f"{'#' * b.level} {b.text}", ""]
        elif isinstance(b, Paragraph):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            shown = b.rows if b.markdown_limit is None else b.rows[: b.markdown_limit]
            lines += [markdown_table(b.headers, shown), ""]
            if len(shown) < len(b.rows):
                lines += [f"_{len(b.rows) - len(shown)} more rows{': ' + b.more if b.more else ''}._", ""]
        elif isinstance(b, Image):
            lines += [f"![{b.alt}]({b.file})", ""]
        elif isinstance(b, Gallery):
            rows = [[" ".join(f"![{alt}]({f})" for f, alt in t.files), "<br>".join(t.caption)] for t in b.items]
            lines += [markdown_table(["images", ""], rows), ""]
        elif b.markdown:
            lines += [b.markdown, ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Markdown inline marks to HTML, after escaping."""
    t = html.escape(str(text))
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"(?<![\w])_([^_]+)_(?![\w])", r"<em>\1</em>", t)


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f4f4f4}code{background:#f4f4f4;padding:0 3px}img{max-width:100%}"
    "table.rd-sortable th{cursor:pointer;user-select:none}table.rd-sortable th[data-dir=asc]::after{content:' \u25b2'}"
    "table.rd-sortable th[data-dir=desc]::after{content:' \u25bc'}td.num{text-align:right;font-variant-numeric:tabular-nums}"
    ".rd-filter{margin:.5em 0}.rd-filter input{padding:3px 6px;width:22em}.rd-count{color:#666;margin-left:1em}"
    ".rd-scroll{max-height:32em;overflow:auto}"
    ".rd-gallery{display:flex;flex-wrap:wrap;gap:12px}.rd-card{border:1px solid #ddd;border-radius:4px;padding:6px;"
    "margin:0;width:268px;font-size:.85em;overflow-wrap:anywhere}.rd-card img{width:128px;height:128px;"
    "image-rendering:pixelated;margin-right:4px}.rd-card figcaption div{margin-top:2px}"
)

# Sorting and filtering for interactive tables: plain JavaScript, no network, run once per page.
SCRIPT = """
(function(){
function key(td){var v=td.getAttribute('data-v');if(v!==null){var n=Number(v);return isNaN(n)?-Infinity:n;}
return td.textContent.trim().toLowerCase();}
function cmp(x,y){if(typeof x!==typeof y){return typeof x==='number'?-1:1;}return x<y?-1:x>y?1:0;}
document.querySelectorAll('table.rd-sortable').forEach(function(t){
var body=t.tBodies[0],heads=t.querySelectorAll('thead th');
heads.forEach(function(th,i){th.title='click to sort';th.addEventListener('click',function(){
var asc=th.getAttribute('data-dir')!=='asc';heads.forEach(function(h){h.removeAttribute('data-dir');});
th.setAttribute('data-dir',asc?'asc':'desc');
var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var c=cmp(key(a.cells[i]),key(b.cells[i]));return asc?c:-c;});
var f=document.createDocumentFragment();rows.forEach(function(r){f.appendChild(r);});body.appendChild(f);});});
var box=document.getElementById(t.id+'-filter'),count=document.getElementById(t.id+'-count');
if(!box){return;}
box.addEventListener('input',function(){var q=box.value.trim().toLowerCase(),shown=0;
Array.prototype.forEach.call(body.rows,function(r){var hide=q!==''&&r.textContent.toLowerCase().indexOf(q)<0;
r.hidden=hide;if(!hide){shown++;}});count.textContent=shown+' of '+body.rows.length+' rows';});
});
})();
"""


def _src(report: Report, file: str) -> str:
    """A figure of the report as a data: URI (one self-contained file); other files by name."""
    data = report.figures.get(file)
    if data is None:
        return html.escape(file)
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _table_html(b: Table, ident: str) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
    cells = []
    for row in b.rows:
        tds = []
        for c in row:
            if isinstance(c, Cell):
                tds.append(f"<td class='num' data-v='{c.value!r}'>{_inline(c.text)}</td>")
            elif isinstance(c, (int, float)) and not isinstance(c, bool):
                tds.append(f"<td class='num' data-v='{c!r}'>{html.escape(cell_text(c))}</td>")
            else:
                tds.append(f"<td>{_inline(c)}</td>")
        cells.append("<tr>" + "".join(tds) + "</tr>")
    table = f"<thead><tr>{head}</tr></thead><tbody>{''.join(cells)}</tbody>"
    if not b.interactive:
        return f"<table>{table}</table>"
    n = len(b.rows)
    return (
        f"<div class='rd-filter'><input id='{ident}-filter' type='search' placeholder='filter rows (any column)' "
        f"aria-label='filter rows'><span class='rd-count' id='{ident}-count'>{n} of {n} rows</span></div>"
        f"<div class='rd-scroll'><table class='rd-sortable' id='{ident}'>{table}</table></div>"
    )


def _gallery_html(report: Report, b: Gallery) -> str:
    cards = []
    for t in b.items:
        imgs = "".join(f"<img src='{_src(report, f)}' alt='{html.escape(alt)}' title='{html.escape(alt)}'>" for f, alt in t.files)
        caption = "".join(f"<div>{_inline(line)}</div>" for line in t.caption)
        cards.append(f"<figure class='rd-card'>{imgs}<figcaption>{caption}</figcaption></figure>")
    return f"<div class='rd-gallery'>{''.join(cards)}</div>"


def to_html(report: Report) -> str:
    body = [f"<h1>{_inline(report.title)}</h1>"]
    interactive = 0
    for b in report.blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            interactive += b.interactive
            body.append(_table_html(b, f"rd-table-{interactive}"))
        elif isinstance(b, Image):
            body.append(f"<p><img src='{_src(report, b.file)}' alt='{html.escape(b.alt)}'></p>")
        elif isinstance(b, Gallery):
            body.append(_gallery_html(report, b))
        else:
            body.append(b.html)
    script = f"<script>{SCRIPT}</script>\n" if interactive else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + f"\n{script}</body></html>\n"
    )


def write_report(out: str, report: Report, results: dict[str, Any] | None = None) -> str:
    """Write ``report.md``, ``report.html``, the figures and ``results.json`` under ``out``; returns
    the Markdown report's location."""
    for name, data in report.figures.items():
        write_bytes(join(out, name), data)
    write_bytes(join(out, "report.md"), to_markdown(report).encode())
    write_bytes(join(out, "report.html"), to_html(report).encode())
    if results is not None:
        write_json(join(out, "results.json"), results)
    return join(out, "report.md")
