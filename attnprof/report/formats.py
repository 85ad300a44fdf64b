"""Every output format, named once with its writer: `attnprof report --format`, and the CI files
of `attnprof check` and `compare` (--markdown, --junit, --benchmark-json, --json), go through FORMATS.

A format's writer works over any record adapter. A record type may render a format its own way,
or be the only one with a format (JUnit for a check result), through its adapter's `renderings`.
Adding a format is one entry in FORMATS plus its renderer: a writer here, or a function in the
record's module that its adapter lists in `renderings`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, format_cell, section_table
from attnprof.report.console import PLAIN_WIDTH, SafeConsole, printable
from attnprof.report.html import html_report
from attnprof.report.registry import ADAPTERS
from attnprof.store import record_json

Writer = Callable[[RecordAdapter[Any], Any, ReportOptions], str | bytes]


@dataclass(frozen=True)
class OutputFormat:
    name: str  # for --format NAME, and the flag --NAME of check and compare
    description: str  # what help texts call it
    write: Writer | None  # over any record; None: only for records whose adapter renders it
    binary: bool = False  # bytes, so it is written to a file only
    terminal: Callable[[RecordAdapter[Any], Any], RenderableType] | None = None  # on stdout, this is printed

    def supports(self, adapter: RecordAdapter[Any]) -> bool:
        return self.write is not None or self.name in adapter.renderings

    def render(self, adapter: RecordAdapter[Any], record: Any, options: ReportOptions) -> str | bytes:
        """The record's own rendering of this format if it has one, else the writer's."""
        own = adapter.renderings.get(self.name)
        if own is not None:
            return own(record)
        if self.write is None:
            kinds = " or ".join(a.kind for a in ADAPTERS if self.supports(a))
            raise UsageError(f"--format {self.name} is for a {kinds} record, not a {adapter.kind} record")
        return self.write(adapter, record, options)


def render_table(adapter: RecordAdapter[Any], record: Any) -> RenderableType:
    """The terminal view: the record's own if it has one, else the summary facts and each table."""
    if adapter.terminal is not None:
        return adapter.terminal(record)
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    for key, value in adapter.summary(record):
        facts.add_row(key, value)
    return Group(facts, *(section_table(section) for section in adapter.sections(record)))


def render_table_text(adapter: RecordAdapter[Any], record: Any, options: ReportOptions) -> str:
    """The terminal view as plain text, for `--format table --out FILE`."""
    buffer = io.StringIO()
    SafeConsole(file=buffer, width=PLAIN_WIDTH, color_system=None, highlight=False).print(render_table(adapter, record))
    return buffer.getvalue()


def render_markdown(adapter: RecordAdapter[Any], record: Any, options: ReportOptions) -> str:
    lines = [f"# {_md_escape(adapter.title(record))}", ""]
    lines += [f"- **{_md_escape(key)}**: {_md_escape(value)}" for key, value in adapter.summary(record)]
    for section in adapter.sections(record):
        lines += ["", f"## {_md_escape(section.title)}", ""]
        lines += _markdown_table(section)
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return printable(text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " "))


def _markdown_table(section: Section) -> list[str]:
    if not section.rows:
        return ["none"]
    numeric, rows = section.typed_columns()
    lines = [
        "| " + " | ".join(_md_escape(str(c)) for c in section.columns) + " |",
        "| " + " | ".join("---:" if num else "---" for num in numeric) + " |",
    ]
    for values in rows:
        lines.append("| " + " | ".join(_md_escape(format_cell(v)) for v in values) + " |")
    return lines


def render_json(adapter: RecordAdapter[Any], record: Any, options: ReportOptions) -> str:
    return record_json(record) + "\n"


def render_csv(adapter: RecordAdapter[Any], record: Any, options: ReportOptions) -> str:
    return adapter.sections(record)[0].frame.to_csv(index=False)


def render_parquet(adapter: RecordAdapter[Any], record: Any, options: ReportOptions) -> bytes:
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


FORMATS: dict[str, OutputFormat] = {
    output.name: output
    for output in (
        OutputFormat("table", "the terminal view", render_table_text, terminal=render_table),
        OutputFormat("markdown", "Markdown (e.g. $GITHUB_STEP_SUMMARY)", render_markdown),
        OutputFormat("json", "the record's JSON", render_json),
        OutputFormat("csv", "the main table as CSV", render_csv),
        OutputFormat("parquet", "the main table as Parquet", render_parquet, binary=True),
        OutputFormat("html", "a self-contained HTML report", html_report),
        OutputFormat("junit", "JUnit XML, one test case per metric", None),
        OutputFormat("benchmark-json", "github-action-benchmark customSmallerIsBetter JSON", None),
    )
}


def formats_help() -> str:
    """`--format`'s help: the formats every record has, then those only some record types have."""
    parts = [f"Output format: {', '.join(name for name, output in FORMATS.items() if output.write is not None)}"]
    for adapter in ADAPTERS:
        own = [name for name in adapter.renderings if FORMATS[name].write is None]
        if own:
            parts.append(f"for a {adapter.kind} record also {', '.join(own)}")
    return "; ".join(parts) + "."
