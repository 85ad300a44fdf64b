"""A tuned Plan in the report: the explanation of the tune run that made it (baseline vs plan,
what each knob contributes, what binds) and the plan's adapter (its choices, and baseline /
predicted / measured figures)."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from rich.console import Console

from attnprof.plans.records import ParetoPoint, Plan, PlanChoices, PlanFigures
from attnprof.profiling.records import BLOCK_KINDS, Profile
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, human_bytes
from attnprof.report.console_table import Column, FittedTable, Row
from attnprof.report.svg import (
    Chart,
    IntervalChart,
    IntervalRow,
    LinearScale,
    LineSeries,
    OffScale,
    Point,
    ScatterSeries,
    XYChart,
)

if TYPE_CHECKING:  # the tuning loop imports torch; rendering its outcome does not need it
    from attnprof.tuning.loop import TuneOutcome

BINDING_UTILISATION = 0.95  # a limit used this much is called binding


def format_metric(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if metric == "memory_bytes":
        return human_bytes(value)
    if metric == "latency_ms":
        return f"{value:.3f} ms"
    if metric == "energy_j":
        return f"{value:.3g} J"
    if metric == "throughput":
        return f"{value:.1f} samples/s"
    return f"{value:.3g}"


def _plain(value: float) -> str:
    """A spread in a figure's unit, two significant digits and never an exponent: 0.42, 4.2, 420."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2g}"


def _signed(metric: str, value: float) -> str:
    return ("+" if value >= 0 else "-") + format_metric(metric, abs(value))


def print_tune(outcome: TuneOutcome, console: Console, pareto: bool = False) -> None:
    search = outcome.search
    console.print(
        f"searched {search.problems} global configuration(s) ({search.evaluated} solved) with "
        f"{', '.join(search.solvers)}; estimates: {outcome.estimator_source}; "
        f"{outcome.measurements} configuration(s) measured"
    )
    if outcome.plan is None and search.infeasibility is not None:
        console.print("[bold]no plan satisfies the budget[/bold]")
        console.print(search.infeasibility.describe(outcome.limits, format_metric), markup=False)
        _print_excluded(outcome, console)
        return
    _print_figures(outcome, console)
    _print_constraints(outcome, console)
    _print_contributions(outcome, console)
    _print_layers(outcome, console)
    _print_verifications(outcome, console)
    if pareto:
        _print_frontier(outcome, console)
    _print_excluded(outcome, console)


def _print_figures(outcome: TuneOutcome, console: Console) -> None:
    plan = outcome.plan
    figures: list[PlanFigures | None] = [outcome.baseline_figures]
    if plan is not None:
        figures += [plan.predicted, plan.measured]
    columns = [Column("", "left"), *(Column(name) for name in ("baseline\n(measured)", "plan\n(predicted)",
                                                                "plan\n(measured)")[: len(figures)])]
    rows = [
        Row((metric, *(format_metric(metric, getattr(f, metric)) if f else "-" for f in figures)))
        for metric in ("latency_ms", "memory_bytes", "throughput", "energy_j")
    ]
    if plan is not None and plan.measured is not None:
        rows.append(Row(("max_error", "-", "-", format_metric("max_error", plan.measured.max_error))))
    console.print(FittedTable(columns, rows, title="baseline vs plan"))
    if plan is not None:
        defaults = type(plan.choices)()
        changed = {k: v for k, v in vars(plan.choices).items() if v != getattr(defaults, k) or k == "dtype"}
        console.print("plan: " + ", ".join(f"{k}={v}" for k, v in changed.items()), markup=False)
        if plan.speedup is not None:
            console.print(f"speed-up over the baseline: {speedup_text(plan)} ({outcome.rounds} interleaved rounds)")
        for note in plan.notes:
            console.print(f"note: {note}", markup=False)


def _print_constraints(outcome: TuneOutcome, console: Console) -> None:
    if not outcome.limits or outcome.plan is None:
        return
    plan = outcome.plan
    used = {}
    for metric, limit in outcome.limits.items():
        measured = getattr(plan.measured, metric) if plan.measured else None
        predicted = getattr(plan.predicted, metric)
        value = measured if measured is not None else predicted
        used[metric] = value / limit if value is not None and limit else 0.0
    binding = max(used, key=lambda m: used[m])
    rows = []
    for metric, limit in outcome.limits.items():
        measured = getattr(plan.measured, metric) if plan.measured else None
        mark = "binding" if metric == binding and used[metric] >= BINDING_UTILISATION else ""
        rows.append(
            Row(
                (
                    metric,
                    format_metric(metric, limit),
                    format_metric(metric, getattr(plan.predicted, metric)),
                    format_metric(metric, measured),
                    f"{used[metric]:.0%}",
                    mark,
                )
            )
        )
    columns = [Column("limit", "left"), *(Column(name) for name in ("value", "predicted", "measured", "used")),
               Column("", "left")]
    console.print(FittedTable(columns, rows, title="budget"))
    if used[binding] < BINDING_UTILISATION:
        console.print(f"no limit binds: the most used is {binding} at {used[binding]:.0%}")


def _print_contributions(outcome: TuneOutcome, console: Console) -> None:
    if not outcome.contributions:
        console.print("knobs: the plan keeps every knob at its reference value")
        return
    columns = [Column("knob", "left"), Column("change", "left", wraps=True), Column("latency"), Column("memory")]
    rows = [
        Row((c.knob, c.change, _signed("latency_ms", c.latency_ms), _signed("memory_bytes", c.memory_bytes)))
        for c in outcome.contributions
    ]
    console.print(FittedTable(columns, rows, title="what each knob contributes (predicted, alone, vs the reference)"))


def _layer_times(profile: Profile | None) -> dict[str, float]:
    if profile is None:
        return {}
    return {layer.name: layer.time_ms.median for layer in profile.layers if layer.time_ms is not None}


def _print_layers(outcome: TuneOutcome, console: Console) -> None:
    """Attention and MLP layers: baseline vs the applied plan's measured forward time, and head changes."""
    winner = outcome.winner
    plan_times = _layer_times(winner.profile if winner else None)
    base_times = _layer_times(outcome.baseline)
    choices = outcome.plan.choices if outcome.plan else None
    micro_steps = choices.micro_steps(outcome.baseline.settings.batch_size) if winner and choices else 1
    rows = []
    for layer in outcome.baseline.layers:
        if layer.kind not in BLOCK_KINDS:
            continue
        change = []
        if choices is not None:
            if layer.name in choices.prune_heads:
                change.append(f"prune {choices.prune_heads[layer.name]} head(s)")
            if layer.name in choices.kv_heads:
                change.append(f"kv heads -> {choices.kv_heads[layer.name]}")
            if layer.name in choices.checkpoint:
                change.append("checkpoint")
        plan_ms = plan_times.get(layer.name)
        rows.append(
            Row(
                (
                    layer.name,
                    layer.kind,
                    f"{base_times.get(layer.name, math.nan):.3f}",
                    "-" if plan_ms is None else f"{micro_steps * plan_ms:.3f}",
                    ", ".join(change),
                )
            )
        )
    columns = [
        Column("layer", "left", wraps=True),
        Column("block", "left", priority=2),
        Column("baseline\nms incl."),
        Column("plan\nms incl."),
        Column("change", "left", priority=1, wraps=True),
    ]
    console.print(FittedTable(columns, rows, title="per layer: baseline vs plan"))


def _print_verifications(outcome: TuneOutcome, console: Console) -> None:
    if not outcome.verifications:
        return
    rows = []
    for i, v in enumerate(outcome.verifications, 1):
        predicted = v.predicted
        measured = v.measured
        sigma = predicted.latency_sigma_ms or 0.0
        unverified = "predicted only" if v.measured is None else "measured apart"  # under torchrun (tuning/launch)
        status = ("tied" if v.tied else "accepted") if v.accepted else ("rejected" if v.can_run else unverified)
        verdict = status + (f": {v.reason}" if v.reason else "")
        if v is outcome.winner and v.accepted:
            verdict = "winner"
        rows.append(
            Row(
                (
                    str(i),
                    "unchanged (the workload as it runs)" if v.choices == PlanChoices() else v.candidate.describe(),
                    f"{format_metric('latency_ms', predicted.latency_ms)} ± {_plain(sigma)}",
                    format_metric("latency_ms", measured.latency_ms if measured else None),
                    format_metric("memory_bytes", predicted.memory_bytes),
                    format_metric("memory_bytes", measured.memory_bytes if measured else None),
                    verdict,
                )
            )
        )
    columns = [
        Column("#"),
        Column("plan", "left", wraps=True),
        Column("latency\npredicted"),
        Column("latency\nmeasured"),
        Column("memory\npredicted", priority=2),
        Column("memory\nmeasured", priority=1),
        Column("verdict", "left", wraps=True),
    ]
    console.print(FittedTable(columns, rows, title="candidates: predicted vs measured"))


def _print_frontier(outcome: TuneOutcome, console: Console) -> None:
    frontier = outcome.search.frontier
    if not frontier:
        return
    metrics = sorted({m for c in frontier for m in c.totals if m != "quality_loss"})
    columns = [Column("plan", "left", wraps=True), *(Column(m) for m in metrics), Column("fits", "left")]
    rows = [
        Row((c.describe(), *(format_metric(m, c.totals.get(m)) for m in metrics),
             "yes" if c.feasible(outcome.limits) else "no"))
        for c in frontier
    ]
    console.print(FittedTable(columns, rows, title="Pareto frontier (predicted)"))


def _print_excluded(outcome: TuneOutcome, console: Console) -> None:
    if not outcome.excluded:
        return
    by_reason: dict[str, list[str]] = defaultdict(list)
    for e in outcome.excluded:
        by_reason[f"{e.knob}: {e.reason}"].append(e.value)
    console.print("left out of the space:")
    for reason, values in by_reason.items():
        shown = ", ".join(values[:4]) + (f" (+{len(values) - 4} more)" if len(values) > 4 else "")
        console.print(f"  {reason} [{shown}]", markup=False)


# The adapter: what `attnprof report` shows of a saved plan, in every format.
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
REJECTED_COLOR = "#7f7f7f"
BASELINE_COLOR = "#555555"
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


def speedup_text(plan: Plan) -> str:
    """The measured speed-up with its interval, e.g. "x1.42 [1.38, 1.47] (95%)"."""
    ratio = plan.speedup
    if ratio is None:
        return "—"
    return f"x{ratio.value:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] ({ratio.confidence:.0%})"


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
        ("speed-up", speedup_text(plan)),
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


# A budget within this share of the plans' range beyond them is drawn to scale; one farther is
# marked by an arrow at the edge, so the plans are not squeezed into a corner by it.
BUDGET_IN_SCALE = 0.5


def _in_scale(values: list[float], limit: float) -> bool:
    lo, hi = min(values), max(values)
    reach = BUDGET_IN_SCALE * max(hi - lo, abs(hi) * 0.1)
    return lo - reach <= limit <= hi + reach


def pareto_chart(plan: Plan) -> XYChart | None:
    axes = frontier_axes(plan)
    if axes is None:
        return None
    (x, y), limits = axes, plan.budgets.limits()
    (x_label, x_scale), (y_label, y_scale) = METRIC_AXES[x], METRIC_AXES[y]
    drawn = [p for p in plan.frontier if x in p.totals and y in p.totals]
    if not drawn:
        return None

    def point(p: ParetoPoint) -> Point:
        status = f"rejected after measurement: {p.rejected}" if p.rejected else (
            "fits the budget" if p.feasible else "over budget")
        return Point(
            p.totals[x] * x_scale,
            p.totals[y] * y_scale,
            f"{p.label}: {format_metric(x, p.totals[x])}, {format_metric(y, p.totals[y])} (predicted; "
            f"{'the chosen plan; ' if p.chosen else ''}{status})",
        )

    xs = [p.totals[x] * x_scale for p in drawn]
    ys = [p.totals[y] * y_scale for p in drawn]
    off_scale: list[OffScale] = []
    budget_x = limits[x] * x_scale if x in limits else None
    budget_y = limits[y] * y_scale if y in limits else None
    if budget_x is not None and not _in_scale(xs, budget_x):
        off_scale.append(OffScale("x", f"budget {_limit(x, limits[x])}: right of the chart"))
        budget_x = None
    if budget_y is not None and not _in_scale(ys, budget_y):
        off_scale.append(OffScale("y", f"budget {_limit(y, limits[y])}: above the chart"))
        budget_y = None
    x_axis = LinearScale.covering(xs + ([budget_x] if budget_x is not None else []), include_zero=False, pad=0.08)
    y_axis = LinearScale.covering(ys + ([budget_y] if budget_y is not None else []), include_zero=False, pad=0.08)
    frontier = sorted((p for p in drawn if p.on_frontier), key=lambda p: p.totals[x])
    series: list[ScatterSeries | LineSeries] = [
        LineSeries(
            "frontier",
            FRONTIER_LINE_COLOR,
            tuple((p.totals[x] * x_scale, p.totals[y] * y_scale) for p in frontier),
            in_legend=False,
        )
    ]
    if budget_y is not None:
        series.append(LineSeries("budget", BUDGET_COLOR, ((x_axis.lo, budget_y), (x_axis.hi, budget_y)), dashed=True))
    if budget_x is not None:
        series.append(LineSeries("budget", BUDGET_COLOR, ((budget_x, y_axis.lo), (budget_x, y_axis.hi)), dashed=True,
                                 in_legend=budget_y is None))
    for name, color, keep in (
        ("fits the budget", FITS_COLOR, lambda p: p.feasible and not p.rejected and not p.chosen),
        ("over budget", OVER_BUDGET_COLOR, lambda p: not p.feasible and not p.rejected and not p.chosen),
        ("rejected after measurement", REJECTED_COLOR, lambda p: p.rejected is not None and not p.chosen),
    ):
        points = tuple(point(p) for p in drawn if keep(p))
        if points:
            series.append(ScatterSeries(name, color, points))
    chosen = tuple(point(p) for p in drawn if p.chosen)
    if chosen:
        series.append(ScatterSeries("chosen plan", CHOSEN_COLOR, chosen, shape="diamond"))
    rejected = sum(1 for p in drawn if p.rejected)
    return XYChart(
        title=f"Pareto frontier: {x_label.split(' (')[0]} against {y_label.split(' (')[0]} (predicted)",
        x_label=x_label,
        y_label=y_label,
        x_scale=x_axis,
        y_scale=y_axis,
        series=tuple(series),
        note=f"{len(drawn)} plans{f', {rejected} rejected after measurement' if rejected else ''}; budget "
        f"{', '.join(_limit(m, v) for m, v in limits.items() if m in (x, y)) or 'on neither axis'}; "
        "lower left is better",
        off_scale=tuple(off_scale),
    )


def charts(plan: Plan, options: ReportOptions) -> list[Chart]:
    frontier = pareto_chart(plan)
    return [*comparison_charts(plan), *([frontier] if frontier is not None else [])]


# Each figure's chart: its name, whether more is better, and how a value in its unit is written.
FIGURE_CHARTS = {
    "latency_ms": ("latency per step", False, "{:.4g} ms"),
    "memory_bytes": ("peak memory", False, "{:.4g} MiB"),
    "energy_j": ("energy per step", False, "{:.4g} J"),
    "throughput": ("throughput", True, "{:.4g} samples/s"),
}


def comparison_charts(plan: Plan) -> list[Chart]:
    """One chart per figure, on an axis of its own unit: the baseline, the plan as predicted
    (± one sigma) and as measured."""
    charts: list[Chart] = []
    for row in figure_rows(plan):
        if row["predicted"] is None and row["measured"] is None:
            continue
        name, higher_is_better, written = FIGURE_CHARTS[row["metric"]]
        baseline = row["baseline"]

        def versus(value: float, baseline: float | None = baseline) -> str:
            return f" ({value / baseline - 1:+.1%} vs the baseline)" if baseline else ""

        rows = []
        if baseline is not None:
            rows.append(IntervalRow("baseline, measured", baseline, baseline, baseline, "baseline",
                                    f"baseline, measured: {written.format(baseline)}"))
        if row["predicted"] is not None:
            value, sigma = row["predicted"], row["predicted_sigma"] or 0.0
            rows.append(IntervalRow(
                "plan, predicted", value, value - sigma, value + sigma, "predicted ± 1σ",
                f"plan, predicted: {written.format(value)} ± {written.format(sigma)}{versus(value)}",
            ))
        if row["measured"] is not None:
            value = row["measured"]
            rows.append(IntervalRow("plan, measured", value, value, value, "measured",
                                    f"plan, measured: {written.format(value)}{versus(value)}"))
        charts.append(
            IntervalChart(
                title=f"{name[0].upper()}{name[1:]}: the baseline, and the plan predicted and measured",
                x_label=f"{name} ({row['unit']})",
                rows=tuple(rows),
                statuses={"baseline": BASELINE_COLOR, "predicted ± 1σ": PREDICTED_COLOR, "measured": MEASURED_COLOR},
                note=("higher" if higher_is_better else "lower") + " is better; hover a mark for its value",
            )
        )
    return charts


ADAPTER: RecordAdapter[Plan] = RecordAdapter(
    kind="plan",
    record_type=Plan,
    recognizes=lambda data: "choices" in data and "objective" in data,
    title=lambda plan: f"attnprof plan: {plan.workload.name or plan.workload.target}",
    summary=summary,
    sections=sections,
    charts=charts,
)
