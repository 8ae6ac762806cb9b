"""One report writer for both studies: a list of blocks rendered as Markdown and as a
self-contained HTML page (figures embedded as base64), CSV text, and strict-JSON values.

Blocks are tuples:

=============================  ====================================================
``("h", text)``                the title (``#`` / ``<h1>``)
``("h2", text)``               a section heading
``("p", text)``                a paragraph
``("ul", [text, ...])``        a bullet list
``("table", head, rows)``      a table; ``head`` a list of str, ``rows`` lists of str
``("figure", path, caption)``  a PNG (``path`` relative to the report) with its caption;
                               an optional 4th item is its alt text (default: the
                               caption), e.g. the numbers the figure plots
=============================  ====================================================

The HTML page needs nothing outside itself (no scripts, fonts or links to fetch: figures are
``data:`` URIs) and reads on a phone: a ``viewport`` meta tag, every table inside a wrapper that
scrolls sideways, images at most the page's width, long words (hashes, paths) wrapped.
"""
from __future__ import annotations

import base64
import csv
import io
import math
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from .utils import atomic_write_text
from .utils import json_safe as json_safe  # strict JSON: NaN / inf -> null

Block = tuple[Any, ...]

STYLE = ("body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;"
         "line-height:1.4}h1,h2,p,li,figcaption{overflow-wrap:anywhere}"
         ".table-wrap{overflow-x:auto;max-width:100%;margin:1em 0}"
         "table{border-collapse:collapse;font-size:13px}"
         "td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}"
         "td:first-child,th:first-child{text-align:left}"
         "figure{margin:1em 0}img{max-width:100%;height:auto}"
         "figcaption{font-size:13px;color:#444}"
         "@media (max-width:600px){body{margin:1em auto;padding:0 .6em}h1{font-size:1.4em}}")


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table as lines."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def html_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f"<div class=\"table-wrap\"><table><thead><tr>{th}</tr></thead><tbody>{trs}"
            "</tbody></table></div>")


def to_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as Markdown (figures linked by their relative path)."""
    lines: list[str] = []
    for kind, *args in blocks:
        if kind == "h":
            lines += [f"# {args[0]}", ""]
        elif kind == "h2":
            lines += [f"## {args[0]}", ""]
        elif kind == "p":
            lines += [args[0], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in args[0]] + [""]
        elif kind == "table":
            lines += markdown_table(args[0], args[1]) + [""]
        elif kind == "figure":
            alt = args[2] if len(args) > 2 and args[2] else args[1]
            lines += [f"![{alt}]({args[0]})", f"*{args[1]}*", ""]
        else:
            raise ValueError(f"unknown report block {kind!r}")
    return "\n".join(lines)


def _strong(text: str) -> str:
    """Markdown's ``**bold**`` in already escaped text as ``<strong>`` (the one inline markup
    the report paragraphs use, e.g. a card's gradient-masking warning)."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def to_html(blocks: Sequence[Block], title: str, root: Path) -> str:
    """The blocks as one HTML page; figures are read from ``root / path`` and embedded."""
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"]
    for kind, *args in blocks:
        if kind in ("h", "h2"):
            tag = "h1" if kind == "h" else "h2"
            parts.append(f"<{tag}>{escape(args[0])}</{tag}>")
        elif kind == "p":
            parts.append(f"<p>{_strong(escape(args[0]))}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in args[0]) + "</ul>")
        elif kind == "table":
            parts.append(html_table(args[0], args[1]))
        elif kind == "figure":
            data = base64.b64encode((root / args[0]).read_bytes()).decode()
            alt = args[2] if len(args) > 2 and args[2] else args[1]
            parts.append(f"<figure><img alt=\"{escape(alt)}\" src=\"data:image/png;base64,"
                         f"{data}\"><figcaption>{escape(args[1])}</figcaption></figure>")
        else:
            raise ValueError(f"unknown report block {kind!r}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(blocks: Sequence[Block], title: str, md_path: Path, html_path: Path) -> None:
    """``md_path`` and a self-contained ``html_path`` (figure paths relative to ``md_path``)."""
    atomic_write_text(to_markdown(blocks), md_path)
    atomic_write_text(to_html(blocks, title, md_path.parent), html_path)


def fmt(v: float | None, digits: int = 3, sign: bool = False, scale: float = 1.0) -> str:
    """A number for a report: ``scale * v`` (e.g. 100 for a percentage, 255 for 1/255 units)
    with ``digits`` decimals (with a ``+`` / ``-`` sign when ``sign``); ``n/a`` for None or NaN;
    ``inf`` / ``-inf`` for an infinity (e.g. the PSNR of an unchanged image, which JSON files
    hold as ``null``)."""
    if v is None or math.isnan(v):
        return "n/a"
    v = v * scale
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def pm(stat: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` of a ``{"mean", "std", "n"}`` summary (the std left out with one seed);
    ``n/a`` when there is no mean."""
    if not stat or stat["mean"] is None:
        return "n/a"
    std = "" if stat["std"] is None else f" ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{std}"


def csv_text(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV with a header row."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(head)
    writer.writerows(rows)
    return buf.getvalue()
