"""A tuned Plan in the report: the explanation of the tune run that made it (baseline vs plan,
what each knob contributes, what binds) and the plan's adapter (its choices, and baseline /
predicted / measured figures)."""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from attnprof.plans.records import ParetoPoint, Plan, PlanChoices, PlanFigures
from attnprof.profiling.records import Profile
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, human_bytes
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
    table = Table(title="baseline vs plan", title_justify="left")
    table.add_column("")
    for name in ("baseline (measured)", "plan (predicted)", "plan (measured)"):
        table.add_column(name, justify="right")
    rows: list[tuple[str, PlanFigures | None]] = [("baseline", outcome.baseline_figures)]
    if plan is not None:
        rows += [("predicted", plan.predicted), ("measured", plan.measured)]
    for metric in ("latency_ms", "memory_bytes", "throughput", "energy_j"):
        table.add_row(metric, *(format_metric(metric, getattr(f, metric)) if f else "-" for _, f in rows))
    if plan is not None and plan.measured is not None:
        table.add_row("max_error", "-", "-", format_metric("max_error", plan.measured.max_error))
    console.print(table)
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
    table = Table(title="budget", title_justify="left")
    for name in ("limit", "value", "predicted", "measured", "used", ""):
        table.add_column(name, justify="right")
    plan = outcome.plan
    used = {}
    for metric, limit in outcome.limits.items():
        measured = getattr(plan.measured, metric) if plan.measured else None
        predicted = getattr(plan.predicted, metric)
        value = measured if measured is not None else predicted
        used[metric] = value / limit if value is not None and limit else 0.0
    binding = max(used, key=lambda m: used[m])
    for metric, limit in outcome.limits.items():
        measured = getattr(plan.measured, metric) if plan.measured else None
        mark = "binding" if metric == binding and used[metric] >= BINDING_UTILISATION else ""
        table.add_row(
            metric,
            format_metric(metric, limit),
            format_metric(metric, getattr(plan.predicted, metric)),
            format_metric(metric, measured),
            f"{used[metric]:.0%}",
            mark,
        )
    console.print(table)
    if used[binding] < BINDING_UTILISATION:
        console.print(f"no limit binds: the most used is {binding} at {used[binding]:.0%}")


def _print_contributions(outcome: TuneOutcome, console: Console) -> None:
    if not outcome.contributions:
        console.print("knobs: the plan keeps every knob at its reference value")
        return
    table = Table(title="what each knob contributes (predicted, alone, vs the reference)", title_justify="left")
    for name in ("knob", "change", "latency", "memory"):
        table.add_column(name, justify="right" if name in ("latency", "memory") else "left")
    for c in outcome.contributions:
        table.add_row(c.knob, c.change, _signed("latency_ms", c.latency_ms), _signed("memory_bytes", c.memory_bytes))
    console.print(table)


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
    table = Table(title="per layer: baseline vs plan", title_justify="left")
    for name in ("layer", "kind", "baseline ms", "plan ms", "change"):
        table.add_column(name, justify="right" if name.endswith("ms") else "left")
    micro_steps = 1
    if winner is not None and choices is not None and choices.batch_size:
        micro_steps = max(outcome.baseline.settings.batch_size // choices.batch_size, 1)
    for layer in outcome.baseline.layers:
        if layer.kind not in ("attention", "mlp"):
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
        table.add_row(
            layer.name,
            layer.kind,
            f"{base_times.get(layer.name, math.nan):.3f}",
            "-" if plan_ms is None else f"{micro_steps * plan_ms:.3f}",
            ", ".join(change),
        )
    console.print(table)


def _print_verifications(outcome: TuneOutcome, console: Console) -> None:
    if not outcome.verifications:
        return
    table = Table(title="candidates: predicted vs measured", title_justify="left")
    for name in ("#", "plan", "predicted", "measured", "memory pred", "memory meas", "verdict"):
        table.add_column(name, justify="left" if name in ("plan", "verdict") else "right")
    for i, v in enumerate(outcome.verifications, 1):
        predicted = v.predicted
        measured = v.measured
        sigma = predicted.latency_sigma_ms or 0.0
        status = ("tied" if v.tied else "accepted") if v.accepted else ("rejected" if v.can_run else "predicted only")
        verdict = status + (f": {v.reason}" if v.reason else "")
        if v is outcome.winner and v.accepted:
            verdict = "winner"
        table.add_row(
            str(i),
            v.candidate.describe(),
            f"{format_metric('latency_ms', predicted.latency_ms)} ± {sigma:.2g}",
            format_metric("latency_ms", measured.latency_ms if measured else None),
            format_metric("memory_bytes", predicted.memory_bytes),
            format_metric("memory_bytes", measured.memory_bytes if measured else None),
            verdict,
        )
    console.print(table)


def _print_frontier(outcome: TuneOutcome, console: Console) -> None:
    frontier = outcome.search.frontier
    if not frontier:
        return
    metrics = sorted({m for c in frontier for m in c.totals if m != "quality_loss"})
    table = Table(title="Pareto frontier (predicted)", title_justify="left")
    table.add_column("plan")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("fits")
    for c in frontier:
        table.add_row(
            c.describe(),
            *(format_metric(m, c.totals.get(m)) for m in metrics),
            "yes" if c.feasible(outcome.limits) else "no",
        )
    console.print(table)


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
