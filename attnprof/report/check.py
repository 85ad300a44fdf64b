"""Renderings of a CheckResult: the terminal table, Markdown for GITHUB_STEP_SUMMARY or a PR
comment, JUnit XML (one test case per metric), and github-action-benchmark's
customSmallerIsBetter JSON."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnprof.gate.compare import summary
from attnprof.gate.records import CheckResult, MetricCheck
from attnprof.report.table import human_bytes, human_count

# Most alarming first; the order rows are listed in.
STATUS_ORDER = ("regression", "changed", "inconclusive", "improved", "pass", "info")
STATUS_STYLE = {
    "regression": "bold red",
    "changed": "bold red",
    "inconclusive": "yellow",
    "improved": "green",
    "pass": "",
    "info": "dim",
}
STATUS_MARK = {
    "regression": "❌",
    "changed": "❌",
    "inconclusive": "⚠️",
    "improved": "✅",
    "pass": "✅",
    "info": "ℹ️",
}
VERDICT_MARK = {"pass": "✅ pass", "regression": "❌ regression", "inconclusive": "⚠️ inconclusive"}
# Shown even when they pass: the headline numbers of the workload.
HEADLINE_METRICS = ("step", "peak_memory", "flops", "attention_flops", "parameter_count")


def format_value(value: int | float | str | None, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "bytes":
        return human_bytes(value)
    if unit == "FLOP":
        return human_count(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def format_change(metric: MetricCheck) -> str:
    if metric.change is not None and math.isfinite(metric.change):
        return f"{metric.change:+.1%}"
    return "changed" if metric.status == "changed" else ""


def _limit(metric: MetricCheck) -> str:
    if metric.kind == "exact":
        return "exact"
    return "off" if metric.threshold is None else f"{metric.threshold:.1%}"


def _p_value(metric: MetricCheck) -> str:
    return "" if metric.p_value is None else f"{metric.p_value:.2g}"


def ordered(result: CheckResult) -> list[MetricCheck]:
    return sorted(result.metrics, key=lambda m: STATUS_ORDER.index(m.status))


def shown_metrics(result: CheckResult, show_all: bool) -> list[MetricCheck]:
    """Everything not passing, plus the headline metrics."""
    if show_all:
        return ordered(result)
    return [m for m in ordered(result) if m.status not in ("pass", "info") or m.metric in HEADLINE_METRICS]


def _header_lines(result: CheckResult) -> list[str]:
    lines = [
        f"workload {result.workload} · baseline {result.baseline} ({result.baseline_commit or 'no commit'}) "
        f"· current {result.current} ({result.current_commit or 'no commit'})",
        f"thresholds {', '.join(result.thresholds)} · significance p < {result.alpha:g} (one-sided Mann-Whitney U)",
    ]
    if result.drift_factor is not None:
        lines.append(f"timings relative to the reference probe (machine speed now x{1 / result.drift_factor:.3f} "
                     "of the baseline's)")
    return lines + [f"warning: {w}" for w in result.warnings]


def check_table(result: CheckResult, show_all: bool = False) -> Table:
    table = Table(title=f"attnprof check: {result.verdict}", title_justify="left", pad_edge=False)
    for header, justify, width in [
        ("status", "left", None),
        ("metric", "left", None),
        ("stat", "left", None),
        ("baseline", "right", 24),
        ("current", "right", 24),
        ("change", "right", None),
        ("limit", "right", None),
        ("p", "right", None),
        ("detail", "left", None),
    ]:
        wraps = header in ("metric", "baseline", "current", "detail")
        table.add_column(header, justify=justify, no_wrap=not wraps, overflow="fold", max_width=width)
    for m in shown_metrics(result, show_all):
        table.add_row(
            Text(m.status, style=STATUS_STYLE[m.status]),
            m.metric,
            m.statistic,
            format_value(m.baseline, m.unit),
            format_value(m.current, m.unit),
            format_change(m),
            _limit(m),
            _p_value(m),
            m.detail if m.status not in ("pass", "info") else "",
        )
    return table


def print_check(result: CheckResult, console: Console, show_all: bool = False) -> None:
    for line in _header_lines(result):
        console.print(line, markup=False)
    console.print(check_table(result, show_all))
    hidden = len(result.metrics) - len(shown_metrics(result, show_all))
    if hidden:
        console.print(f"{hidden} more metrics pass or are not gated (--all shows them)")
    console.print(summary(result), markup=False)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_rows(metrics: list[MetricCheck]) -> list[str]:
    rows = [
        "| | metric | stat | baseline | current | change | limit | p | detail |",
        "|---|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for m in metrics:
        cells = [
            STATUS_MARK[m.status],
            f"`{m.metric}`",
            m.statistic,
            format_value(m.baseline, m.unit),
            format_value(m.current, m.unit),
            format_change(m),
            _limit(m),
            _p_value(m),
            m.detail if m.status not in ("pass", "info") else "",
        ]
        rows.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return rows


def check_markdown(result: CheckResult) -> str:
    """GitHub-flavoured Markdown: verdict, what failed, and every metric folded away."""
    lines = [f"## attnprof check: {VERDICT_MARK[result.verdict]}", "", summary(result), ""]
    lines += [f"- {_md_cell(line)}" for line in _header_lines(result)]
    lines.append("")
    lines += _md_rows(shown_metrics(result, show_all=False))
    lines += [
        "",
        f"<details><summary>All {len(result.metrics)} metrics</summary>",
        "",
        *_md_rows(ordered(result)),
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


def check_junit(result: CheckResult) -> str:
    """JUnit XML: one test case per metric; failing metrics fail, inconclusive ones are skipped."""
    failures = len(result.failures())
    skipped = len(result.inconclusive())
    suites = ET.Element("testsuites", name="attnprof check")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"attnprof check {result.workload}",
        tests=str(len(result.metrics)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
    )
    for m in result.metrics:
        case = ET.SubElement(
            suite, "testcase", classname=f"attnprof.{m.kind}", name=f"{m.metric} [{m.statistic}]", time="0"
        )
        text = (
            f"baseline {format_value(m.baseline, m.unit)}, current {format_value(m.current, m.unit)}"
            f"{', change ' + format_change(m) if format_change(m) else ''}; {m.detail}".rstrip("; ")
        )
        if m.failed:
            ET.SubElement(case, "failure", message=m.detail or m.status, type=m.status).text = text
        elif m.status == "inconclusive":
            ET.SubElement(case, "skipped", message=m.detail)
        else:
            ET.SubElement(case, "system-out").text = text
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def benchmark_action_json(result: CheckResult) -> str:
    """github-action-benchmark `customSmallerIsBetter` entries for the current time and memory values."""
    entries = []
    for m in result.metrics:
        if m.kind == "exact" or not isinstance(m.current, (int, float)):
            continue
        value = float(m.current) / (2**20 if m.unit == "bytes" else 1)
        entry: dict[str, object] = {
            "name": f"{result.workload} {m.metric} ({m.statistic})",
            "unit": "MiB" if m.unit == "bytes" else m.unit,
            "value": round(value, 6),
            "extra": f"{m.status}: {m.detail}" if m.detail else m.status,
        }
        if m.noise is not None and math.isfinite(m.noise):
            entry["range"] = f"± {m.noise * value:.4g}"
        entries.append(entry)
    return json.dumps(entries, indent=1) + "\n"
