"""One model of a report, rendered to Markdown and to HTML, and one writer for every report.

A report is a title and a list of blocks (headings, paragraphs, tables, images, raw HTML with a
Markdown fallback). ``write_report`` writes ``report.md``, ``report.html``, its figures and,
when given, ``results.json`` beside them, locally or on object storage.
"""

from __future__ import annotations

import html
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


@dataclass
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]


@dataclass
class Image:
    file: str  # relative to the report
    alt: str


@dataclass
class Html:
    """Content only HTML can show (interactive tables, embedded thumbnails); ``markdown`` stands in."""

    html: str
    markdown: str = ""


Block = Heading | Paragraph | Table | Image | Html


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes, written beside

    def add(self, *blocks: Block) -> Report:
        self.blocks.extend(blocks)
        return self


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def to_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for b in report.blocks:
        if isinstance(b, Heading):
            lines += [f"{'#' * b.level} {b.text}", ""]
        elif isinstance(b, Paragraph):
            lines += [b.text, ""]
        elif isinstance(b, Table):
            lines += [markdown_table(b.headers, b.rows), ""]
        elif isinstance(b, Image):
            lines += [f"![{b.alt}]({b.file})", ""]
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
)


def to_html(report: Report) -> str:
    body = [f"<h1>{_inline(report.title)}</h1>"]
    for b in report.blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Image):
            body.append(f"<p><img src='{html.escape(b.file)}' alt='{html.escape(b.alt)}'></p>")
        else:
            body.append(b.html)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
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
