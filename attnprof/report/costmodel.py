"""Tables of a fitted cost model (its cross-validated error) and of one prediction."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from attnprof.costmodel.fit import latency_group
from attnprof.costmodel.records import COST_KINDS, CostModel, Prediction
from attnprof.report.table import human_bytes

# Performance targets of the cost model on held-out configurations (DESIGN.md).
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


def print_fit(model: CostModel, console: Console) -> None:
    console.print(validation_table(model))
    console.print(groups_table(model))


def prediction_table(prediction: Prediction, layers: int | None = None) -> Table:
    config = prediction.config
    title = " · ".join(f"{key} {value}" for key, value in config.items())
    table = Table(title=f"predicted · {title}", title_justify="left", pad_edge=False)
    for header, justify in [("layer", "left"), ("kind", "left"), ("ms", "right"), ("± ms", "right")]:
        table.add_column(header, justify=justify, no_wrap=True, overflow="ellipsis")
    rows = sorted(prediction.layers, key=lambda layer: -layer.time_ms)
    for layer in rows if layers is None else rows[:layers]:
        style = "bold magenta" if layer.kind == "attention" else ""
        table.add_row(
            Text(layer.name or "(model)", style=style), layer.kind, f"{layer.time_ms:.3f}", f"{layer.time_sigma_ms:.3f}"
        )
    table.add_section()
    for kind in COST_KINDS:
        table.add_row(Text(f"all {kind} layers", style="bold"), "", f"{prediction.kind_time_ms[kind]:.3f}", "")
    table.add_row(
        Text("total (step)", style="bold"), "", f"{prediction.time_ms:.3f}", f"{prediction.time_sigma_ms:.3f}"
    )
    return table


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
