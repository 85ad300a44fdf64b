"""The HTML report: one self-contained file (inline CSS and SVG, no script, no external URL).

`render_html(record)` works for any record type with an adapter in `registry.ADAPTERS`
(profile, and the records of fit, tune and check), so every command can write its report
with one call.
"""

from __future__ import annotations

from html import escape
from typing import Any

from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, format_cell
from attnprof.report.registry import adapter_for_record
from attnprof.report.svg import render_svg
from attnprof.version import __version__

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
th { background: #f5f5f5; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.highlight td { background: #fdecec; }
table.summary th { background: none; font-weight: 600; color: #555; }
figure { margin: 1.5em 0; overflow-x: auto; }
.scroll { overflow-x: auto; max-height: 40em; }
footer { margin-top: 3em; color: #888; font-size: 0.8em; }
"""


def render_html(record: Any, options: ReportOptions | None = None) -> str:
    """The report of `record` (a Profile, fit, Plan or check result) as one HTML document."""
    return html_report(adapter_for_record(record), record, options or ReportOptions())


def html_report(adapter: RecordAdapter[Any], record: Any, options: ReportOptions) -> str:
    """The document, from the record's adapter: the writer of `--format html`."""
    title = adapter.title(record)
    summary_rows = "".join(
        f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>" for key, value in adapter.summary(record)
    )
    figures = "".join(
        f'<figure id="chart-{index}">{render_svg(chart)}</figure>'
        for index, chart in enumerate(adapter.charts(record, options))
    )
    tables = "".join(_section_html(section) for section in adapter.sections(record))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<table class="summary">{summary_rows}</table>'
        f"{'<h2>Charts</h2>' + figures if figures else ''}"
        f"{tables}"
        f"<footer>attnprof {escape(__version__)} · {escape(adapter.kind)} report</footer>"
        "</body></html>\n"
    )


def _section_html(section: Section) -> str:
    numeric, cells_by_row = section.typed_columns()
    head = "".join(f"<th>{escape(str(c))}</th>" for c in section.columns)
    rows = []
    for index, values in enumerate(cells_by_row):
        emphasised = index < len(section.highlight) and section.highlight[index]
        cells = "".join(
            f'<td class="num">{escape(format_cell(v))}</td>' if num else f"<td>{escape(format_cell(v))}</td>"
            for v, num in zip(values, numeric, strict=True)
        )
        rows.append(f'<tr class="highlight">{cells}</tr>' if emphasised else f"<tr>{cells}</tr>")
    body = "".join(rows) or f'<tr><td colspan="{len(section.columns)}">none</td></tr>'
    return (
        f"<h2>{escape(section.title)}</h2>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )
