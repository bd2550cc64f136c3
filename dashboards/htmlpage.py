"""A self-contained HTML page: images inlined as data URIs, no scripts, no external links."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1360px; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; margin-top: 22px; }
.banner { padding: 10px 14px; border-radius: 4px; margin: 10px 0; font-size: 15px; }
.banner.ok { background: #dff0d8; border: 1px solid #3c763d; }
.banner.bad { background: #f2dede; border: 1px solid #a94442; }
.banner.unknown { background: #fcf8e3; border: 1px solid #8a6d3b; }
.banner ul { margin: 6px 0 0 0; font-size: 13px; }
img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f4f4f4; } td.text { text-align: left; }
.note { color: #555; font-size: 13px; }
td.best { font-weight: bold; background: #dff0d8; }
.meta { font-size: 13px; }
"""


def esc(text) -> str:
    """HTML-escape any value's string form."""
    return html.escape(str(text), quote=True)


def fmt(value) -> str:
    """Numbers with 4 significant digits, missing values as a dash."""
    if value is None:
        return "\u2013"
    if isinstance(value, float):
        return "\u2013" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def image(path: str | Path, alt: str) -> str:
    """An <img> whose PNG bytes are inlined, so the page opens offline and alone."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<p><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></p>'


def paragraph(text: str, cls: str = "note") -> str:
    """A paragraph of escaped text."""
    return f'<p class="{cls}">{esc(text)}</p>'


def heading(text: str, level: int = 2) -> str:
    """An escaped heading."""
    return f"<h{level}>{esc(text)}</h{level}>"


def table(rows: list[dict], columns: list[str] | None = None, marked: set[tuple[int, str]] | None = None) -> str:
    """A plain table of dict rows; text cells left-aligned, numbers right-aligned.

    marked: (row index, column) of cells to highlight, e.g. the best sampler setting.
    """
    if not rows:
        return paragraph("(no rows)")
    columns = columns or list(rows[0])
    marked = marked or set()
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for c in columns:
            value = row.get(c)
            classes = " ".join(name for name, on in (("text", isinstance(value, str)), ("best", (i, c) in marked)) if on)
            cls = f' class="{classes}"' if classes else ""
            cells.append(f"<td{cls}>{esc(fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def banner(verdict: str, reasons: list[str], column: str | None) -> str:
    """The ordering-check banner, coloured by verdict."""
    cls = {"reproduced": "ok", "NOT reproduced": "bad"}.get(verdict, "unknown")
    items = "".join(f"<li>{esc(r)}</li>" for r in reasons)
    on = f" (judged on {esc(column)})" if column else ""
    return (f'<div class="banner {cls}"><b>Paper\'s ordering: {esc(verdict)}</b>{on}'
            f"<ul>{items}</ul></div>")


def page(title: str, blocks: list[str]) -> str:
    """The whole document."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1>" + "\n".join(blocks) + "</body></html>\n")
