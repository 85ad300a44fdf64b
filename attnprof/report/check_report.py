"""Report adapter for a CheckResult (`attnprof report check.json`): verdict, metrics, and a chart
of each timing and memory change against its limit."""

from __future__ import annotations

import math
from typing import Any

from attnprof.check import summary as verdict_line
from attnprof.records import CheckResult, MetricCheck
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, frame
from attnprof.report.check import ordered
from attnprof.report.svg import Chart, IntervalChart, IntervalRow, ReferenceLine

# Numbers and text apart, so every column has one type (CSV and Parquet need that).
METRIC_COLUMNS = (
    "status", "metric", "kind", "statistic", "baseline", "current", "baseline_text", "current_text", "unit",
    "change", "limit", "p_value", "detail",
)
STATUS_COLORS = {
    "regression": "#d62728",
    "changed": "#d62728",
    "inconclusive": "#ff7f0e",
    "improved": "#2ca02c",
    "pass": "#7f7f7f",
}
CHART_ROWS = 40
MEDIAN_EFFICIENCY = 1.2533  # SE of a sample median / SE of the mean, for normal data


def _number(value: int | float | str | None) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def metric_rows(result: CheckResult) -> list[dict[str, Any]]:
    return [
        {
            "status": m.status,
            "metric": m.metric,
            "kind": m.kind,
            "statistic": m.statistic,
            "baseline": _number(m.baseline),
            "current": _number(m.current),
            "baseline_text": m.baseline if isinstance(m.baseline, str) else None,
            "current_text": m.current if isinstance(m.current, str) else None,
            "unit": m.unit,
            "change": m.change,
            "limit": m.threshold,
            "p_value": m.p_value,
            "detail": m.detail,
        }
        for m in ordered(result)
    ]


def sections(result: CheckResult) -> list[Section]:
    rows = metric_rows(result)
    failing = tuple(r["status"] in ("regression", "changed") for r in rows)
    return [Section("Metrics", frame(METRIC_COLUMNS, rows), highlight=failing)]


def summary(result: CheckResult) -> list[tuple[str, str]]:
    facts = [
        ("verdict", result.verdict),
        ("summary", verdict_line(result)),
        ("workload", result.workload),
        ("baseline", f"{result.baseline} ({result.baseline_commit or 'no commit'})"),
        ("current", f"{result.current} ({result.current_commit or 'no commit'})"),
        ("thresholds", ", ".join(result.thresholds)),
        ("significance", f"p < {result.alpha:g}, one-sided Mann-Whitney U"),
    ]
    return facts + [("warning", w) for w in result.warnings]


def _interval(m: MetricCheck) -> tuple[float, float]:
    """An approximate 95% interval of the change (%), from the per-sample noise of the median."""
    assert m.change is not None
    if m.kind != "time" or not m.noise or not m.baseline_samples or not m.current_samples:
        return 100 * m.change, 100 * m.change
    spread = MEDIAN_EFFICIENCY * m.noise * math.sqrt(1 / m.baseline_samples + 1 / m.current_samples)
    return 100 * (m.change - 1.96 * spread), 100 * (m.change + 1.96 * spread)


def charts(result: CheckResult, options: ReportOptions) -> list[Chart]:
    shown = [
        m
        for m in ordered(result)
        if m.kind != "exact"
        and m.change is not None
        and math.isfinite(m.change)
        and m.status in STATUS_COLORS
        and (m.status != "pass" or m.metric in ("step", "peak_memory"))
    ][:CHART_ROWS]
    if not shown:
        return []
    rows = []
    for m in shown:
        lo, hi = _interval(m)
        limit = "off" if m.threshold is None else f"{m.threshold:.1%}"
        rows.append(
            IntervalRow(
                f"{m.metric} ({m.statistic})",
                100 * m.change,
                lo,
                hi,
                m.status,
                f"{m.change:+.1%} (limit {limit}); {m.detail}",
            )
        )
    return [
        IntervalChart(
            title="Changes against the baseline",
            x_label="change from the baseline (%), with an approximate 95% interval for timings",
            rows=tuple(rows),
            statuses={s: c for s, c in STATUS_COLORS.items() if any(r.status == s for r in rows)},
            reference_lines=(ReferenceLine(0.0, "baseline"),),
            note="limits: " + ", ".join(result.thresholds),
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
)
