"""The terminal view of `attnprof doctor`: one row per finding, problems with their fix."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from attnprof.doctor.records import DoctorReport

STATUS_STYLES = {"ok": "green", "info": "dim", "warn": "yellow", "problem": "bold red"}


def doctor_table(report: DoctorReport) -> Table:
    table = Table(title="attnprof doctor", title_justify="left", header_style="bold")
    for column in ("section", "check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for finding in report.findings:
        table.add_row(
            finding.section,
            finding.name,
            Text(finding.status, style=STATUS_STYLES[finding.status]),
            Text(finding.detail),
            Text(finding.fix),
        )
    return table


def doctor_summary(report: DoctorReport) -> str:
    problems = [f for f in report.findings if f.status == "problem"]
    warnings = [f for f in report.findings if f.status == "warn"]
    if not problems and not warnings:
        return "no problems found"
    listed = "; ".join(f"{f.section} {f.name}" for f in problems + warnings)
    return f"{len(problems)} problem(s), {len(warnings)} warning(s): {listed}"
