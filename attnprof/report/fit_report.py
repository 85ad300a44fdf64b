"""Report adapter for a fitted CostModel: its held-out error, predicted vs measured, and the fits."""

from __future__ import annotations

from typing import Any

from rich.console import Group

from attnprof.costmodel.records import CostModel, LinearFit
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section
from attnprof.report.costmodel import groups_table, validation_table
from attnprof.report.svg import Chart, LineSeries, LogScale, Point, ScatterSeries, XYChart

VALIDATION_COLUMNS = (
    "key",
    "config",
    "measured_ms",
    "predicted_ms",
    "latency_error",
    "measured_memory_bytes",
    "predicted_memory_bytes",
    "memory_error",
)
FIT_COLUMNS = ("target", "kind", "group", "terms", "relative_std", "points", "pooled")
INFEASIBLE_COLUMNS = ("config", "status", "reason")
POINT_COLOR = "#1f77b4"
DIAGONAL_COLOR = "#888888"
MIB = 2**20


def _config(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _relative_error(predicted: float, measured: float) -> float | None:
    return predicted / measured - 1 if measured else None


def _fit_row(target: str, kind: str, group: str, fit: LinearFit) -> dict[str, Any]:
    terms = " + ".join(f"{c:.4g}·{f}" for f, c in zip(fit.features, fit.coefficients, strict=True))
    return {
        "target": target,
        "kind": kind,
        "group": group,
        "terms": terms,
        "relative_std": fit.relative_std,
        "points": fit.points,
        "pooled": fit.pooled,
    }


def sections(model: CostModel) -> list[Section]:
    details = model.validation.details if model.validation is not None else []
    validation_rows = [
        {
            "key": p.key,
            "config": _config(p.config),
            "measured_ms": p.measured_ms,
            "predicted_ms": p.predicted_ms,
            "latency_error": _relative_error(p.predicted_ms, p.measured_ms),
            "measured_memory_bytes": p.measured_memory_bytes,
            "predicted_memory_bytes": p.predicted_memory_bytes,
            "memory_error": _relative_error(p.predicted_memory_bytes, p.measured_memory_bytes),
        }
        for p in details
    ]
    fit_rows = [
        _fit_row("latency", kind, group, fit) for kind, fits in model.latency.items() for group, fit in fits.items()
    ]
    fit_rows += [_fit_row("memory", "step", group, fit) for group, fit in model.memory.items()]
    infeasible_rows = [{"config": _config(p.config), "status": p.status, "reason": p.reason} for p in model.infeasible]
    return [
        Section("Held-out predictions (cross-validation)", VALIDATION_COLUMNS, validation_rows),
        Section("Fitted models", FIT_COLUMNS, fit_rows),
        Section("Infeasible configurations", INFEASIBLE_COLUMNS, infeasible_rows),
    ]


def summary(model: CostModel) -> list[tuple[str, str]]:
    facts = [
        ("target", model.target),
        ("fingerprint", model.workload_fingerprint),
        ("machine", f"{model.machine.gpu_name or model.machine.cpu}; torch {model.machine.torch}"),
        ("measurements", f"{model.measurements} ({len(model.infeasible)} infeasible), {len(model.groups)} groups"),
    ]
    v = model.validation
    if v is not None:
        facts += [
            ("validation", f"{v.method}, {v.folds} folds, {v.points} points"),
            ("latency MAPE", f"{v.latency_mape:.2f}%"),  # Validation holds percentages
            ("memory MAPE", f"{v.memory_mape:.2f}%"),
            ("Spearman", "—" if v.spearman is None else f"{v.spearman:.3f}"),
            (
                "top-1 agreement",
                "—" if v.top1_agreement is None else f"{v.top1_agreement:.0%} of {v.top1_decisions} decisions",
            ),
        ]
    else:
        facts.append(("validation", "not run"))
    facts.append(("created", model.created))
    return facts


def _predicted_vs_measured(title: str, unit: str, pairs: list[tuple[float, float, str]]) -> XYChart:
    """Log-log scatter of (measured, predicted) with the y = x line: on it, the model is exact."""
    scale = LogScale.covering([v for m, p, _ in pairs for v in (m, p)])
    return XYChart(
        title=title,
        x_label=f"measured ({unit})",
        y_label=f"predicted ({unit})",
        x_scale=scale,
        y_scale=scale,
        series=(
            LineSeries(
                "predicted = measured", DIAGONAL_COLOR, ((scale.lo, scale.lo), (scale.hi, scale.hi)), dashed=True
            ),
            ScatterSeries("held-out configuration", POINT_COLOR, tuple(Point(m, p, label) for m, p, label in pairs)),
        ),
        width=560,
        height=460,
    )


def charts(model: CostModel, options: ReportOptions) -> list[Chart]:
    if model.validation is None or not model.validation.details:
        return []
    details = model.validation.details
    latency = [(p.measured_ms, p.predicted_ms, f"{p.key}: {_config(p.config)}") for p in details]
    memory = [
        (p.measured_memory_bytes / MIB, p.predicted_memory_bytes / MIB, f"{p.key}: {_config(p.config)}")
        for p in details
    ]
    v = model.validation
    return [
        _predicted_vs_measured(f"Latency: predicted vs measured (MAPE {v.latency_mape:.1f}%)", "ms", latency),
        _predicted_vs_measured(f"Peak memory: predicted vs measured (MAPE {v.memory_mape:.1f}%)", "MiB", memory),
    ]


ADAPTER: RecordAdapter[CostModel] = RecordAdapter(
    kind="fit",
    record_type=CostModel,
    recognizes=lambda data: "latency" in data and "groups" in data and "measurements" in data,
    title=lambda model: f"attnprof fit: {model.target}",
    summary=summary,
    sections=sections,
    charts=charts,
    terminal=lambda model: Group(validation_table(model), groups_table(model)),
)
