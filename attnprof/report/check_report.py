"""Report adapter for a CheckResult: the verdict, each metric, and the changes with their intervals."""

from __future__ import annotations

import math
from typing import Any

from attnprof.gate.records import CheckResult, MetricCheck
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section
from attnprof.report.check import check_markdown, check_table
from attnprof.report.svg import Chart, IntervalChart, IntervalRow, ReferenceLine

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
    if result.culprit_layers():
        facts.append(("culprit layers", ", ".join(result.culprit_layers())))
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
    title=lambda result: f"attnprof check: {result.workload} — {result.verdict}",
    summary=summary,
    sections=sections,
    charts=charts,
    terminal=lambda result: check_table(result, show_all=True),
    markdown=check_markdown,
)
