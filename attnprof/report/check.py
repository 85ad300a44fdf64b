"""A CheckResult in the report: the terminal table, Markdown for GITHUB_STEP_SUMMARY or a PR
comment, JUnit XML (one test case per metric), github-action-benchmark's customSmallerIsBetter
JSON, and its adapter (the verdict, each metric, and the changes with their intervals)."""

from __future__ import annotations

import io
import json
import math
import xml.etree.ElementTree as ET
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from attnprof.gate.compare import layer_label
from attnprof.gate.compare import summary as verdict_line
from attnprof.gate.records import Attribution, CheckResult, MetricCheck
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, human_bytes, human_count
from attnprof.report.console import xml_text
from attnprof.report.console_table import Column, FittedTable, Row
from attnprof.report.svg import Chart, IntervalChart, IntervalRow, ReferenceLine

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
VERDICT_MARK = {
    "pass": "✅ pass",
    "regression": "❌ regression",
    "inconclusive": "⚠️ inconclusive",
    "error": "⛔ error: nothing was checked",
}
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


def shown_values(metric: MetricCheck) -> tuple[str, str]:
    """Baseline and current as the tables show them; in full when rounding would hide a difference."""
    baseline, current = format_value(metric.baseline, metric.unit), format_value(metric.current, metric.unit)
    if baseline == current and metric.baseline != metric.current and all(
        isinstance(v, int) for v in (metric.baseline, metric.current)
    ):
        return f"{metric.baseline:,}", f"{metric.current:,}"
    return baseline, current


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
    if result.drift_factor:  # None: no probe; 0 comes only from a damaged file
        lines.append(f"timings relative to the reference probe (machine speed now x{1 / result.drift_factor:.3f} "
                     "of the baseline's)")
    return lines + [f"warning: {w}" for w in result.warnings]


# The check table's columns, by priority: what a narrow terminal leaves out first has the highest.
CHECK_COLUMNS = (
    Column("status", "left", priority=0),
    Column("metric", "left", priority=0, wraps=True),
    Column("stat", "left", priority=5),
    Column("baseline", priority=0, wraps=True, max_width=18),  # a layout is a long text; numbers stay whole
    Column("current", priority=0, wraps=True, max_width=18),
    Column("change", priority=0),
    Column("limit", priority=3),
    Column("p", priority=4),
    Column("detail", "left", priority=2, wraps=True),
)


def check_table(result: CheckResult, show_all: bool = False) -> FittedTable:
    rows = [
        Row(
            (
                Text(m.status, style=STATUS_STYLE[m.status]),
                m.metric,
                m.statistic,
                *shown_values(m),
                format_change(m),
                _limit(m),
                _p_value(m),
                m.detail if m.status not in ("pass", "info") else "",
            )
        )
        for m in shown_metrics(result, show_all)
    ]
    return FittedTable(CHECK_COLUMNS, rows, title=f"attnprof {result.command}: {result.verdict}")


ATTRIBUTION_HEADERS = (
    "module", "phase", "own time before", "own time now", "growth", "share of the phase", "step growth from it",
    "p (Holm)",
)


def _attribution_cells(a: Attribution) -> list[str]:
    return [
        layer_label(a.layer),
        a.phase,
        format_value(a.baseline_ms, "ms"),
        format_value(a.current_ms, "ms"),
        f"{a.delta_ms:+.3f} ms",
        f"{a.baseline_share:.1%} -> {a.current_share:.1%}",
        f"{a.step_growth:+.1%}",
        f"{a.p_value:.2g}",
    ]


def attribution_table(result: CheckResult) -> FittedTable:
    columns = [
        Column(header, "left" if header in ("module", "phase") else "right", priority=priority,
               wraps=header == "module")
        for header, priority in zip(ATTRIBUTION_HEADERS, (0, 0, 2, 2, 0, 1, 0, 1), strict=True)
    ]
    rows = [Row(tuple(_attribution_cells(attribution))) for attribution in result.attribution]
    return FittedTable(columns, rows, title="where the step's growth comes from")


def check_view(result: CheckResult, show_all: bool = False) -> Group:
    """What `check` prints: the header lines, the table, the attribution and the verdict."""
    if result.verdict == "error":
        return Group(Text(f"attnprof {result.command}: {VERDICT_MARK['error']}"), Text(verdict_line(result)))
    parts: list[RenderableType] = [Text(line) for line in _header_lines(result)]
    parts.append(check_table(result, show_all))
    hidden = len(result.metrics) - len(shown_metrics(result, show_all))
    if hidden:
        parts.append(Text(f"{hidden} more metrics pass or are not gated (--all shows them)"))
    if result.attribution:
        parts.append(attribution_table(result))
    parts.append(Text(verdict_line(result)))
    return Group(*parts)


def print_check(result: CheckResult, console: Console, show_all: bool = False) -> None:
    console.print(check_view(result, show_all))


def check_text(result: CheckResult, width: int = 160) -> str:
    """What `print_check` prints, as plain text (a failing test's message, say)."""
    console = Console(file=io.StringIO(), width=width, no_color=True, highlight=False)
    print_check(result, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


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
            *shown_values(m),
            format_change(m),
            _limit(m),
            _p_value(m),
            m.detail if m.status not in ("pass", "info") else "",
        ]
        rows.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return rows


def check_markdown(result: CheckResult) -> str:
    """GitHub-flavoured Markdown: verdict, what failed, and every metric folded away."""
    lines = [f"## attnprof {result.command}: {VERDICT_MARK[result.verdict]}", "", _md_cell(verdict_line(result)), ""]
    if result.verdict == "error":
        return "\n".join(lines)
    lines += [f"- {_md_cell(line)}" for line in _header_lines(result)]
    lines.append("")
    lines += _md_rows(shown_metrics(result, show_all=False))
    if result.attribution:
        lines += ["", "Where the step's growth comes from:", ""]
        lines += ["| " + " | ".join(ATTRIBUTION_HEADERS) + " |", "|---|---|--:|--:|--:|--:|--:|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in _attribution_cells(a)) + " |" for a in result.attribution]
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
    command = f"attnprof {result.command}"
    elapsed = f"{result.duration_s:.3f}" if result.duration_s is not None and math.isfinite(result.duration_s) else "0"
    suites = ET.Element("testsuites", name=command, time=elapsed)
    # timestamp and hostname as JUnit's schema has them (ISO 8601 without a zone, UTC here)
    when = {"timestamp": result.created.removesuffix("+00:00")} if result.created else {}
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"{command} {result.workload}",
        tests=str(len(result.metrics) or 1),
        failures=str(failures),
        errors="1" if result.verdict == "error" else "0",
        skipped=str(skipped),
        time=elapsed,
        hostname=result.hostname or "unknown",
        **when,
    )
    if result.verdict == "error":  # nothing measured: one erroring case, never an empty green suite
        case = ET.SubElement(suite, "testcase", classname="attnprof.check", name=command, time=elapsed)
        ET.SubElement(case, "error", message=result.error or "nothing was checked", type="error")
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
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + xml_text(ET.tostring(suites, encoding="unicode")) + "\n"


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


# The adapter: what `attnprof report` shows of a saved check result, in every format.
METRIC_COLUMNS = (
    "metric",
    "layer",
    "kind",
    "statistic",
    "status",
    "baseline",
    "current",
    "unit",
    "change",
    "threshold",
    "p_value",
    "noise",
    "detail",
)
STATUS_COLORS = {
    "regression": "#d62728",
    "changed": "#ff7f0e",
    "inconclusive": "#bcbd22",
    "pass": "#2ca02c",
    "improved": "#1f77b4",
    "info": "#9467bd",
}
MAX_CHART_ROWS = 40
Z95 = 1.96
MEDIAN_EFFICIENCY = 1.2533  # the standard error of a median is √(π/2) that of a mean for normal noise


def change_interval(metric: MetricCheck) -> tuple[float, float] | None:
    """An approximate 95% interval of the relative change, from the pooled noise of the samples.

    Deterministic metrics (no samples) have no interval: their change is exact.
    """
    if metric.change is None:
        return None
    if metric.noise is None or metric.baseline_samples < 1 or metric.current_samples < 1:
        return metric.change, metric.change
    half = (
        Z95
        * MEDIAN_EFFICIENCY
        * metric.noise
        * math.sqrt(1 / metric.baseline_samples + 1 / metric.current_samples)
        * (1 + metric.change)
    )
    return metric.change - half, metric.change + half


def _values_column(values: list[Any]) -> list[Any]:
    """Baseline/current hold numbers for most metrics and text for some (a backend name):
    one column type is kept so CSV and Parquet stay typed."""
    if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        return values
    return [None if v is None else str(v) for v in values]


def sections(result: CheckResult) -> list[Section]:
    baselines = _values_column([m.baseline for m in result.metrics])
    currents = _values_column([m.current for m in result.metrics])
    rows = [
        {
            **{c: getattr(m, c) for c in METRIC_COLUMNS if c not in ("baseline", "current")},
            "baseline": b,
            "current": c,
        }
        for m, b, c in zip(result.metrics, baselines, currents, strict=True)
    ]
    return [Section("Metrics", METRIC_COLUMNS, rows, highlight=tuple(m.failed for m in result.metrics))]


def summary(result: CheckResult) -> list[tuple[str, str]]:
    counts: dict[str, int] = {}
    for m in result.metrics:
        counts[m.status] = counts.get(m.status, 0) + 1
    facts = [
        ("verdict", result.verdict),
        ("workload", result.workload),
        ("baseline", f"{result.baseline} (commit {result.baseline_commit or '—'})"),
        ("current", f"{result.current} (commit {result.current_commit or '—'})"),
        ("metrics", ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"),
        ("thresholds", ", ".join(result.thresholds) or "defaults"),
        ("significance", f"p < {result.alpha:g}"),
    ]
    if result.error:
        facts.append(("error", result.error))
    if result.culprit_layers():
        facts.append(("culprit layers", ", ".join(result.culprit_layers())))
    facts += [
        (f"step growth from {layer_label(a.layer)} ({a.phase})",
         f"own time {a.delta_ms:+.3g} ms, step {a.step_growth:+.1%} from it alone, p={a.p_value:.2g}")
        for a in result.attribution
    ]
    if result.drift_factor is not None:
        facts.append(("drift correction", f"reference probe x{result.drift_factor:.3f} of the baseline's time"))
    facts += [("machine difference", d) for d in result.machine_differences]
    facts += [("warning", w) for w in result.warnings]
    return facts


def charts(result: CheckResult, options: ReportOptions) -> list[Chart]:
    # Measured metrics with their intervals; exact ones only when they changed (an unchanged
    # FLOP count is a dot on zero that says nothing).
    compared = [(m, change_interval(m)) for m in result.metrics if m.kind != "exact" or m.failed]
    compared = [(m, interval) for m, interval in compared if interval is not None]
    # Failures and doubts first, then the rest in their order, so a long check keeps what matters.
    priority = {"regression": 0, "changed": 0, "inconclusive": 1}
    compared.sort(key=lambda item: priority.get(item[0].status, 2))
    shown = compared[:MAX_CHART_ROWS]
    if not shown:
        return []
    rows = tuple(
        IntervalRow(
            f"{m.metric} ({m.statistic})",
            100 * m.change,
            100 * lo,
            100 * hi,
            m.status,
            tooltip=f"{m.metric} ({m.layer or 'step'}): {m.change:+.2%} [{lo:+.2%}, {hi:+.2%}] {m.status}"
            + (f", p = {m.p_value:.2g}" if m.p_value is not None else ""),
        )
        for m, (lo, hi) in shown
        if m.change is not None
    )
    thresholds = sorted({m.threshold for m, _ in shown if m.threshold})[:3]
    note = "intervals: ≈95% from the pooled sample noise; exact metrics have none"
    if len(compared) > len(shown):
        note += f"; {len(shown)} of {len(compared)} metrics shown"
    return [
        IntervalChart(
            title=f"Check: changes against the baseline ({result.verdict})",
            x_label="change from the baseline (%)",
            rows=rows,
            statuses=STATUS_COLORS,
            reference_lines=(
                ReferenceLine(0.0, "baseline", side="left"),
                *(
                    ReferenceLine(100 * t, f"+{100 * t:g}%", STATUS_COLORS["regression"], side="right")
                    for t in thresholds
                ),
            ),
            note=note,
        )
    ]


ADAPTER: RecordAdapter[CheckResult] = RecordAdapter(
    kind="check",
    record_type=CheckResult,
    recognizes=lambda data: "verdict" in data and "metrics" in data,
    title=lambda result: f"attnprof {result.command}: {result.workload} — {result.verdict}",
    summary=summary,
    sections=sections,
    charts=charts,
    terminal=lambda result: check_view(result, show_all=True),
    renderings={"markdown": check_markdown, "junit": check_junit, "benchmark-json": benchmark_action_json},
)
