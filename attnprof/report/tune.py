"""The explanation of a tune run: baseline vs plan, what each knob contributes, what binds."""

from __future__ import annotations

import math
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from attnprof.plans.records import PlanFigures
from attnprof.profiling.records import Profile
from attnprof.report.table import human_bytes
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
        micro_steps = outcome.baseline.settings.batch_size // choices.batch_size
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
        status = "accepted" if v.accepted else ("rejected" if v.can_run else "predicted only")
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
