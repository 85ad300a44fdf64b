"""`attnprof report --format`: every output format, written once over any record adapter."""

from __future__ import annotations

import io
from typing import Any, Literal

from rich.console import Console, Group, RenderableType
from rich.table import Table

from attnprof.errors import EnvironmentUnsupported
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, format_cell, is_numeric_column
from attnprof.report.console import PLAIN_WIDTH
from attnprof.report.html import render_html
from attnprof.store import record_json

Format = Literal["table", "markdown", "json", "csv", "parquet", "html"]
FORMATS: tuple[str, ...] = ("table", "markdown", "json", "csv", "parquet", "html")
BINARY_FORMATS: tuple[str, ...] = ("parquet",)


def render_text(adapter: RecordAdapter[Any], record: Any, fmt: str, options: ReportOptions) -> str:
    """Every text format but the terminal table."""
    if fmt == "markdown":
        return render_markdown(adapter, record)
    if fmt == "json":
        return record_json(record) + "\n"
    if fmt == "csv":
        return adapter.sections(record)[0].frame.to_csv(index=False)
    if fmt == "html":
        return render_html(record, options)
    raise ValueError(f"{fmt} is not a text format")


def render_parquet(adapter: RecordAdapter[Any], record: Any) -> bytes:
    """The record's main table as a Parquet file (needs pyarrow, an optional extra)."""
    try:
        import pyarrow  # noqa: F401  (pandas needs it for to_parquet; check first for a clear message)
    except ImportError:
        raise EnvironmentUnsupported(
            "--format parquet needs pyarrow, which is not installed: pip install 'attnprof[parquet]'"
        ) from None
    buffer = io.BytesIO()
    adapter.sections(record)[0].frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def render_table_text(adapter: RecordAdapter[Any], record: Any) -> str:
    """The terminal view as plain text, for `--format table --out FILE`."""
    buffer = io.StringIO()
    Console(file=buffer, width=PLAIN_WIDTH, color_system=None, highlight=False).print(render_table(adapter, record))
    return buffer.getvalue()


def render_markdown(adapter: RecordAdapter[Any], record: Any) -> str:
    if adapter.markdown is not None:
        return adapter.markdown(record)
    lines = [f"# {_md_escape(adapter.title(record))}", ""]
    lines += [f"- **{_md_escape(key)}**: {_md_escape(value)}" for key, value in adapter.summary(record)]
    for section in adapter.sections(record):
        lines += ["", f"## {_md_escape(section.title)}", ""]
        lines += _markdown_table(section)
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown_table(section: Section) -> list[str]:
    if section.frame.empty:
        return ["none"]
    numeric = [is_numeric_column(section.frame[c]) for c in section.frame.columns]
    lines = [
        "| " + " | ".join(_md_escape(str(c)) for c in section.frame.columns) + " |",
        "| " + " | ".join("---:" if num else "---" for num in numeric) + " |",
    ]
    for values in section.frame.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_md_escape(format_cell(v)) for v in values) + " |")
    return lines


def render_table(adapter: RecordAdapter[Any], record: Any) -> RenderableType:
    """The terminal view: the record's own if it has one, else the summary facts and each table."""
    if adapter.terminal is not None:
        return adapter.terminal(record)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for key, value in adapter.summary(record):
        facts.add_row(key, value)
    parts: list[RenderableType] = [facts]
    for section in adapter.sections(record):
        table = Table(title=section.title, title_justify="left", header_style="bold")
        numeric = [is_numeric_column(section.frame[c]) for c in section.frame.columns]
        for column, num in zip(section.frame.columns, numeric, strict=True):
            table.add_column(str(column), justify="right" if num else "left")
        for index, values in enumerate(section.frame.itertuples(index=False, name=None)):
            emphasised = index < len(section.highlight) and section.highlight[index]
            table.add_row(*(format_cell(v) for v in values), style="bold red" if emphasised else None)
        parts.append(table)
    return Group(*parts)
