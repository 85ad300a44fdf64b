"""Report adapter for a tuned Plan: its choices, and baseline / predicted / measured figures."""

from __future__ import annotations

import dataclasses
from typing import Any

from attnprof.plans.records import ParetoPoint, Plan, PlanChoices, PlanFigures
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section
from attnprof.report.svg import (
    Chart,
    IntervalChart,
    IntervalRow,
    LinearScale,
    LineSeries,
    Point,
    ReferenceLine,
    ScatterSeries,
    XYChart,
)

CHOICE_COLUMNS = ("knob", "value", "changed")
FIGURE_COLUMNS = ("metric", "unit", "baseline", "predicted", "predicted_sigma", "measured", "measured_change")
# Figures with a baseline to compare against: (field, sigma field or None, unit, scale to that unit)
COMPARED = (
    ("latency_ms", "latency_sigma_ms", "ms", 1.0),
    ("memory_bytes", "memory_sigma_bytes", "MiB", 1 / 2**20),
    ("energy_j", None, "J", 1.0),
    ("throughput", None, "samples/s", 1.0),
)
PREDICTED_COLOR = "#1f77b4"
MEASURED_COLOR = "#d62728"
FITS_COLOR = "#2ca02c"
OVER_BUDGET_COLOR = "#ff7f0e"
CHOSEN_COLOR = "#d62728"
FRONTIER_LINE_COLOR = "#999999"
BUDGET_COLOR = "#555555"
# Axis of each predicted metric: (label, scale to the unit shown)
METRIC_AXES = {
    "latency_ms": ("latency per step (ms)", 1.0),
    "memory_bytes": ("peak memory (MiB)", 1 / 2**20),
    "energy_j": ("energy per step (J)", 1.0),
}
OBJECTIVE_AXIS = {"latency": "latency_ms", "throughput": "latency_ms", "memory": "memory_bytes", "energy": "energy_j"}


def _limit(metric: str, value: float) -> str:
    if metric == "memory_bytes":
        return f"memory ≤ {value / 2**20:.4g} MiB"
    return f"{metric.rsplit('_', 1)[0]} ≤ {value:.4g} {metric.rsplit('_', 1)[-1]}"


def _choice_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "—"
    return str(value)


def choices_rows(choices: PlanChoices) -> list[dict[str, Any]]:
    defaults = PlanChoices()
    return [
        {
            "knob": f.name,
            "value": _choice_value(getattr(choices, f.name)),
            "changed": getattr(choices, f.name) != getattr(defaults, f.name),
        }
        for f in dataclasses.fields(PlanChoices)
    ]


def _scaled(figures: PlanFigures | None, name: str | None, scale: float) -> float | None:
    if figures is None or name is None:
        return None
    value = getattr(figures, name)
    return None if value is None else value * scale


def figure_rows(plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for name, sigma, unit, scale in COMPARED:
        baseline = _scaled(plan.baseline, name, scale)
        predicted = _scaled(plan.predicted, name, scale)
        measured = _scaled(plan.measured, name, scale)
        if baseline is None and predicted is None and measured is None:
            continue
        rows.append(
            {
                "metric": name,
                "unit": unit,
                "baseline": baseline,
                "predicted": predicted,
                "predicted_sigma": _scaled(plan.predicted, sigma, scale),
                "measured": measured,
                "measured_change": None if not (baseline and measured is not None) else measured / baseline - 1,
            }
        )
    return rows


def sections(plan: Plan) -> list[Section]:
    rows = choices_rows(plan.choices)
    return [
        Section("Choices", CHOICE_COLUMNS, rows, highlight=tuple(r["changed"] for r in rows)),
        Section("Figures per step", FIGURE_COLUMNS, figure_rows(plan)),
    ]


def summary(plan: Plan) -> list[tuple[str, str]]:
    changed = [r for r in choices_rows(plan.choices) if r["changed"]]
    budgets = ", ".join(_limit(k, v) for k, v in plan.budgets.limits().items()) or "none"
    return [
        ("workload", f"{plan.workload.name or plan.workload.target} ({plan.workload.fingerprint})"),
        ("device", plan.device),
        ("objective", plan.objective),
        ("budgets", budgets + (f", {plan.budgets.gpus} GPUs" if plan.budgets.gpus > 1 else "")),
        ("plan", "; ".join(f"{r['knob']} = {r['value']}" for r in changed) or "the baseline as it is"),
        ("verified", "yes, by measurement" if plan.verified else "no"),
        ("solver", plan.solver or "—"),
        ("created", plan.created or "—"),
    ]


def frontier_axes(plan: Plan) -> tuple[str, str] | None:
    """(x, y) metrics of the Pareto chart: the objective, then the budgeted metric it trades with."""
    present = {m for p in plan.frontier for m in p.totals if m in METRIC_AXES}
    x = OBJECTIVE_AXIS[plan.objective]
    budgeted = [m for m in plan.budgets.limits() if m != x and m in present]
    others = [m for m in METRIC_AXES if m != x and m in present]
    y = (budgeted or others or [None])[0]
    return (x, y) if x in present and y is not None else None


def pareto_chart(plan: Plan) -> XYChart | None:
    axes = frontier_axes(plan)
    if axes is None:
        return None
    (x, y), limits = axes, plan.budgets.limits()
    (x_label, x_scale), (y_label, y_scale) = METRIC_AXES[x], METRIC_AXES[y]
    drawn = [p for p in plan.frontier if x in p.totals and y in p.totals]

    def point(p: ParetoPoint) -> Point:
        fits = "fits the budget" if p.feasible else "over budget"
        return Point(p.totals[x] * x_scale, p.totals[y] * y_scale, f"{p.label} ({fits})")

    xs = [p.totals[x] * x_scale for p in drawn] + ([limits[x] * x_scale] if x in limits else [])
    ys = [p.totals[y] * y_scale for p in drawn] + ([limits[y] * y_scale] if y in limits else [])
    x_axis, y_axis = LinearScale.covering(xs, pad=0.05), LinearScale.covering(ys, pad=0.05)
    frontier = sorted((p for p in drawn if p.on_frontier), key=lambda p: p.totals[x])
    series: list[ScatterSeries | LineSeries] = [
        LineSeries(
            "frontier",
            FRONTIER_LINE_COLOR,
            tuple((p.totals[x] * x_scale, p.totals[y] * y_scale) for p in frontier),
            in_legend=False,
        )
    ]
    if y in limits:
        level = limits[y] * y_scale
        series.append(LineSeries("budget", BUDGET_COLOR, ((x_axis.lo, level), (x_axis.hi, level)), dashed=True))
    if x in limits:
        level = limits[x] * x_scale
        series.append(
            LineSeries(
                "budget", BUDGET_COLOR, ((level, y_axis.lo), (level, y_axis.hi)), dashed=True, in_legend=y not in limits
            )
        )
    for name, color, keep in (
        ("fits the budget", FITS_COLOR, lambda p: p.feasible and not p.chosen),
        ("over budget", OVER_BUDGET_COLOR, lambda p: not p.feasible and not p.chosen),
    ):
        points = tuple(point(p) for p in drawn if keep(p))
        if points:
            series.append(ScatterSeries(name, color, points))
    chosen = tuple(point(p) for p in drawn if p.chosen)
    if chosen:
        series.append(ScatterSeries("chosen plan", CHOSEN_COLOR, chosen, shape="diamond"))
    return XYChart(
        title=f"Pareto frontier: {x_label.split(' (')[0]} against {y_label.split(' (')[0]} (predicted)",
        x_label=x_label,
        y_label=y_label,
        x_scale=x_axis,
        y_scale=y_axis,
        series=tuple(series),
        note=f"{len(drawn)} plans; lower and to the left is better",
    )


def charts(plan: Plan, options: ReportOptions) -> list[Chart]:
    frontier = pareto_chart(plan)
    return [*comparison_charts(plan), *([frontier] if frontier is not None else [])]


def comparison_charts(plan: Plan) -> list[Chart]:
    """Relative change against the baseline, predicted (± one sigma) next to measured."""
    rows = []
    for row in figure_rows(plan):
        baseline = row["baseline"]
        if not baseline:
            continue
        if row["predicted"] is not None:
            sigma = row["predicted_sigma"] or 0.0
            rows.append(
                IntervalRow(
                    f"{row['metric']} predicted",
                    100 * (row["predicted"] / baseline - 1),
                    100 * ((row["predicted"] - sigma) / baseline - 1),
                    100 * ((row["predicted"] + sigma) / baseline - 1),
                    "predicted ± 1σ",
                )
            )
        if row["measured"] is not None:
            change = 100 * (row["measured"] / baseline - 1)
            rows.append(IntervalRow(f"{row['metric']} measured", change, change, change, "measured"))
    if not rows:
        return []
    return [
        IntervalChart(
            title="Plan against the baseline: predicted vs measured",
            x_label="change from the baseline (%)",
            rows=tuple(rows),
            statuses={"predicted ± 1σ": PREDICTED_COLOR, "measured": MEASURED_COLOR},
            reference_lines=(ReferenceLine(0.0, "baseline", side="left"),),
        )
    ]


ADAPTER: RecordAdapter[Plan] = RecordAdapter(
    kind="plan",
    record_type=Plan,
    recognizes=lambda data: "choices" in data and "objective" in data,
    title=lambda plan: f"attnprof plan: {plan.workload.name or plan.workload.target}",
    summary=summary,
    sections=sections,
    charts=charts,
)
