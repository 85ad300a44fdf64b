"""A fitted CostModel in the report: its tables (cross-validated error against the targets,
fits per choice combination), the table of one Prediction, and the model's adapter (held-out
error, predicted vs measured, and the fits)."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from attnprof.costmodel.knobs import latency_group
from attnprof.costmodel.records import COST_KINDS, CostModel, LinearFit, Prediction
from attnprof.report.adapter import RecordAdapter, ReportOptions, Section, human_bytes
from attnprof.report.console_table import Column, FittedTable, Row
from attnprof.report.svg import Chart, LineSeries, LogScale, Point, ScatterSeries, XYChart

# Performance targets of the cost model on held-out configurations (docs/architecture.md).
TARGET_LATENCY_MAPE = 5.0
TARGET_MEMORY_MAPE = 3.0
TARGET_TOP1 = 0.90


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}%"


def _verdict(ok: bool) -> Text:
    return Text("meets target", style="green") if ok else Text("misses target", style="yellow")


def validation_table(model: CostModel) -> Table:
    table = Table(title=f"cost model · {model.target}", title_justify="left", pad_edge=False)
    for header, justify in [("metric", "left"), ("value", "right"), ("target", "right"), ("", "left")]:
        table.add_column(header, justify=justify, no_wrap=True)
    infeasible = len(model.infeasible)
    table.add_row("measurements", f"{model.measurements}", "", f"{infeasible} infeasible" if infeasible else "")
    validation = model.validation
    if validation is None:
        table.add_row("validation", "none", "", "")
        return table
    table.add_row("validation", validation.method, "", f"{validation.points} predictions")
    table.add_row(
        "latency MAPE",
        _percent(validation.latency_mape),
        f"≤ {TARGET_LATENCY_MAPE:.0f}%",
        _verdict(validation.latency_mape <= TARGET_LATENCY_MAPE),
    )
    memory_ok = math.isfinite(validation.memory_mape) and validation.memory_mape <= TARGET_MEMORY_MAPE
    table.add_row("memory MAPE", _percent(validation.memory_mape), f"≤ {TARGET_MEMORY_MAPE:.0f}%", _verdict(memory_ok))
    table.add_row("Spearman (latency)", "n/a" if validation.spearman is None else f"{validation.spearman:.3f}", "", "")
    if validation.top1_agreement is None:
        table.add_row("top-1 agreement", "n/a", f"≥ {TARGET_TOP1:.0%}", "no shape measured with two choices")
    else:
        table.add_row(
            "top-1 agreement",
            f"{validation.top1_agreement:.0%}",
            f"≥ {TARGET_TOP1:.0%}",
            Text.assemble(_verdict(validation.top1_agreement >= TARGET_TOP1), f" ({validation.top1_decisions} shapes)"),
        )
    return table


def groups_table(model: CostModel) -> Table:
    """Per choice combination: measured range and the spread of each kind's fit."""

    table = Table(title="fits per choice combination", title_justify="left", pad_edge=False)
    table.add_column("choices", no_wrap=True)
    table.add_column("points", justify="right")
    table.add_column("batch", justify="right")
    table.add_column("seq", justify="right")
    for kind in COST_KINDS:
        table.add_column(f"{kind} ±", justify="right")
    table.add_column("memory ±", justify="right")
    for group, info in sorted(model.groups.items()):
        cells = []
        for kind in COST_KINDS:
            fit = model.latency[kind].get(latency_group(kind, info.config))
            cells.append("-" if fit is None else f"{100 * fit.relative_std:.1f}%" + (" pooled" if fit.pooled else ""))
        memory = model.memory.get(group)
        batch, seq = info.ranges.get("batch_size", ["?", "?"]), info.ranges.get("seq_len", ["?", "?"])
        table.add_row(
            group,
            str(info.points),
            f"{batch[0]}–{batch[1]}",
            f"{seq[0]}–{seq[1]}",
            *cells,
            "-" if memory is None else f"{100 * memory.relative_std:.2f}%",
        )
    return table


def fit_view(model: CostModel) -> Group:
    return Group(validation_table(model), groups_table(model))


def print_fit(model: CostModel, console: Console) -> None:
    console.print(fit_view(model))


def prediction_table(prediction: Prediction, layers: int | None = None) -> FittedTable:
    config = prediction.config
    title = " · ".join(f"{key} {value}" for key, value in config.items())
    columns = [Column("layer", "left", wraps=True), Column("block", "left"), Column("ms"), Column("± ms")]
    ordered = sorted(prediction.layers, key=lambda layer: -layer.time_ms)
    rows = [
        Row((layer.name or "(model)", layer.kind, f"{layer.time_ms:.3f}", f"{layer.time_sigma_ms:.3f}"),
            style="bold magenta" if layer.kind == "attention" else "")
        for layer in (ordered if layers is None else ordered[:layers])
    ]
    rows += [
        Row((Text(f"all {kind}", style="bold"), "", f"{prediction.kind_time_ms[kind]:.3f}", ""),
            section=index == 0)
        for index, kind in enumerate(COST_KINDS)
    ]
    rows.append(Row((Text("total (step)", style="bold"), "", f"{prediction.time_ms:.3f}",
                     f"{prediction.time_sigma_ms:.3f}")))
    return FittedTable(columns, rows, title=f"predicted · {title}",
                       caption="block: the attention or MLP block a layer is part of; other: the rest")


def print_prediction(prediction: Prediction, console: Console, layers: int | None = None) -> None:
    console.print(prediction_table(prediction, layers))
    memory = (
        "n/a"
        if not math.isfinite(prediction.memory_bytes)
        else f"{human_bytes(prediction.memory_bytes)} ± {human_bytes(prediction.memory_sigma_bytes)}"
    )
    console.print(f"latency: {prediction.time_ms:.3f} ± {prediction.time_sigma_ms:.3f} ms · peak memory: {memory}")
    if not prediction.feasible:
        console.print(Text(f"infeasible: {prediction.infeasible_reason}", style="bold red"))
    if prediction.extrapolated:
        console.print(Text("extrapolated outside the measured ranges", style="yellow"))


# The adapter: what `attnprof report` shows of a saved fitted cost model, in every format.
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
    terminal=fit_view,
)
