"""The report's charts for a profile: time per block (attention vs the rest), roofline, memory.

Each function takes a record and returns a chart description from `svg.py`; nothing here
draws. Colours are fixed per layer kind so the same kind looks the same in every chart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnprof.profiling.records import LayerStats, Profile, TimeStats
from attnprof.report.svg import (
    BarChart,
    BarRow,
    BarSeries,
    LineSeries,
    LogScale,
    Point,
    ScatterSeries,
    XYChart,
)

KIND_COLORS: dict[str, str] = {
    "attention": "#d62728",
    "mlp": "#1f77b4",
    "norm": "#9467bd",
    "embedding": "#8c564b",
    "other": "#17becf",  # not a grey: anti-aliased text is grey
}
REST_COLOR = "#1f77b4"
BACKWARD_SHADES = {"attention": "#f4a3a3", "rest": "#9ec8ea"}
PEAK_COLOR = "#333333"
MAX_MEMORY_ROWS = 60
MIB = 2**20


@dataclass(frozen=True)
class Peaks:
    """The device's peak dense compute and memory bandwidth: the roofline's two ceilings."""

    tflops: float
    bandwidth_gbs: float  # GB/s (1e9 bytes per second)
    source: str  # where the numbers come from: a datasheet, a calibration, the command line

    def __post_init__(self) -> None:
        for name in ("tflops", "bandwidth_gbs"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"peak {name} must be a positive number, got {value!r}")

    @property
    def ridge_intensity(self) -> float:
        """FLOP/byte where the bandwidth ceiling meets the compute ceiling."""
        return self.tflops * 1e12 / (self.bandwidth_gbs * 1e9)


def _parent(name: str) -> str | None:
    if name == "":
        return None
    return name.rsplit(".", 1)[0] if "." in name else ""


def _contains(ancestor: str, name: str) -> bool:
    return ancestor == "" or name == ancestor or name.startswith(ancestor + ".")


def _is_attention(layer: LayerStats) -> bool:
    return layer.attention is not None or layer.kind == "attention"


def _outermost(layers: list[LayerStats]) -> list[LayerStats]:
    """Attention layers not nested inside another attention layer (an attention module's own
    children, such as its projections, are part of it)."""
    return [
        layer
        for layer in layers
        if not any(o is not layer and o.name != layer.name and _contains(o.name, layer.name) for o in layers)
    ]


def attention_blocks(profile: Profile) -> list[tuple[LayerStats, list[LayerStats]]]:
    """The modules that each hold exactly one attention layer, as high up the tree as possible
    (a transformer block), with the attention layers inside them; in execution order."""
    attention = _outermost([layer for layer in profile.layers if _is_attention(layer)])
    by_name = {layer.name: layer for layer in profile.layers}

    def count(name: str) -> int:
        return sum(1 for a in attention if _contains(name, a.name))

    blocks = []
    for layer in profile.layers:
        if count(layer.name) != 1:
            continue
        parent = _parent(layer.name)
        if parent is not None and parent in by_name and count(parent) == 1:
            continue  # the parent is the block
        blocks.append((layer, [a for a in attention if _contains(layer.name, a.name)]))
    return blocks


@dataclass(frozen=True)
class AttentionTime:
    """Attention's share of the step, both ways: inclusive (the outermost attention modules with
    everything they call: projections, rotary, norms inside) and self (their own ops alone)."""

    inclusive_share: float
    self_share: float


def attention_time(profile: Profile) -> AttentionTime | None:
    """None when the step was not timed or no attention module was found."""
    step = _median(profile.totals.time_ms)
    attention = [layer for layer in profile.layers if _is_attention(layer)]
    if step <= 0 or not attention:
        return None
    inclusive = sum(_median(layer.time_ms) for layer in _outermost(attention))
    own = sum(layer.self_time_ms or 0.0 for layer in attention)
    return AttentionTime(inclusive / step, own / step)


def _median(stats: TimeStats | None) -> float:
    """The median in ms, 0 when not timed (a dry run) or unknown."""
    return stats.median if stats is not None and math.isfinite(stats.median) else 0.0


def time_breakdown_chart(profile: Profile) -> BarChart:
    """One bar per transformer block, split into attention and the rest; a last bar for the time
    spent outside the blocks (embeddings, head, loss), so the bars add up to the step time."""
    train = profile.settings.mode == "train"
    blocks = attention_blocks(profile)
    if not blocks:  # no attention found: the model's direct children, all "rest"
        blocks = [(layer, []) for layer in profile.layers if layer.name and _parent(layer.name) == ""]
    rows = []
    accounted = 0.0
    for block, attention in blocks:
        forward = _median(block.time_ms)
        backward = _median(block.backward_time_ms)
        att_forward = sum(_median(a.time_ms) for a in attention)
        att_backward = sum(_median(a.backward_time_ms) for a in attention)
        accounted += forward + backward
        rest_forward, rest_backward = max(forward - att_forward, 0.0), max(backward - att_backward, 0.0)
        values = (att_forward, att_backward, rest_forward, rest_backward) if train else (att_forward, rest_forward)
        rows.append(BarRow(block.name or "(model)", values))
    step = _median(profile.totals.time_ms)
    outside = max(step - accounted, 0.0)
    if outside > 0:
        rows.append(BarRow("outside blocks", (0.0, 0.0, outside, 0.0) if train else (0.0, outside)))
    if train:
        series = (
            BarSeries("attention forward", KIND_COLORS["attention"]),
            BarSeries("attention backward", BACKWARD_SHADES["attention"]),
            BarSeries("rest forward", REST_COLOR),
            BarSeries("rest backward", BACKWARD_SHADES["rest"]),
        )
    else:
        series = (BarSeries("attention", KIND_COLORS["attention"]), BarSeries("rest", REST_COLOR))
    share = attention_time(profile)
    note = f"step median {step:.4g} ms; {len(blocks)} blocks"
    if share is not None:
        note += (f"; attention {100 * share.inclusive_share:.1f}% of the step incl., "
                 f"{100 * share.self_share:.1f}% self (its own ops)")
    return BarChart(
        title="Time per block: attention (incl. its projections) vs the rest",
        x_label="median time per step (ms)" + (", forward + backward" if train else ""),
        series=series,
        rows=tuple(rows),
        note=note
        if profile.totals.time_ms is not None
        else "not timed (a dry run): no times to show",
        value_format="{:.3g} ms",
    )


def roofline_points(profile: Profile) -> list[tuple[LayerStats, float, float]]:
    """(layer, FLOP/byte, achieved TFLOP/s) of each layer that computes on its own.

    A layer's `flops` and `bytes` exclude its children, so its own time (`self_time_ms`) is
    the matching denominator.
    """
    points = []
    for layer in profile.layers:
        seconds = (layer.self_time_ms or 0.0) * 1e-3
        if layer.flops <= 0 or layer.bytes <= 0 or not (math.isfinite(seconds) and seconds > 0):
            continue
        points.append((layer, layer.flops / layer.bytes, layer.flops / seconds / 1e12))
    return points


def roofline_chart(profile: Profile, peaks: Peaks | None, missing_reason: str | None = None) -> XYChart:
    """Each computing layer against the ceilings; without peaks, the points alone and why."""
    points = roofline_points(profile)
    intensities = [p[1] for p in points] or [1.0]
    achieved = [p[2] for p in points] or [1.0]
    if peaks is not None:
        intensities.append(peaks.ridge_intensity)
        achieved.append(peaks.tflops)
    x_scale = LogScale.covering(intensities)
    y_scale = LogScale.covering(achieved)
    series: list[ScatterSeries | LineSeries] = []
    if peaks is not None:
        # Attainable TFLOP/s = min(peak compute, intensity x bandwidth), drawn across the x range.
        tbps = peaks.bandwidth_gbs / 1000
        corner = (peaks.ridge_intensity, peaks.tflops)
        left = (x_scale.lo, x_scale.lo * tbps)
        series.append(
            LineSeries(
                f"peak {peaks.tflops:.3g} TFLOP/s, {peaks.bandwidth_gbs:.3g} GB/s",
                PEAK_COLOR,
                (left, corner, (x_scale.hi, peaks.tflops)),
            )
        )
        y_scale = LogScale(min(y_scale.lo, 10 ** math.floor(math.log10(left[1]))), y_scale.hi)
    for kind, color in KIND_COLORS.items():
        kind_points = tuple(
            Point(
                x,
                y,
                f"{layer.name} ({layer.type}): {layer.flops:.3g} FLOP, {x:.3g} FLOP/byte, {y:.3g} TFLOP/s",
            )
            for layer, x, y in points
            if (kind == "attention" and _is_attention(layer)) or (layer.kind == kind and not _is_attention(layer))
        )
        if kind_points:
            series.append(ScatterSeries(kind, color, kind_points))
    note = (
        f"peaks: {peaks.source}; ridge at {peaks.ridge_intensity:.3g} FLOP/byte"
        if peaks is not None
        else f"ceilings not drawn: {missing_reason or 'no peaks known for this device'}"
    )
    return XYChart(
        title=f"Roofline: {len(points)} layers against the device's peaks",
        x_label="arithmetic intensity (FLOP/byte, own ops)",
        y_label="achieved TFLOP/s (own time)",
        x_scale=x_scale,
        y_scale=y_scale,
        series=tuple(series),
        note=note,
    )


def memory_chart(profile: Profile) -> BarChart:
    """Peak activation memory of each layer above its level at entry (inclusive of children)."""
    layers = [layer for layer in profile.layers if layer.memory_bytes > 0]
    omitted = 0
    if len(layers) > MAX_MEMORY_ROWS:
        keep = {id(layer) for layer in sorted(layers, key=lambda lyr: -lyr.memory_bytes)[:MAX_MEMORY_ROWS]}
        omitted = len(layers) - MAX_MEMORY_ROWS
        layers = [layer for layer in layers if id(layer) in keep]
    kinds = [k for k in KIND_COLORS if any(_kind_of(layer) == k for layer in layers)]
    rows = tuple(
        BarRow(
            layer.name or "(model)",
            tuple(layer.memory_bytes / MIB if _kind_of(layer) == k else 0.0 for k in kinds),
        )
        for layer in layers
    )
    note = f"step peak {profile.totals.peak_memory_bytes / MIB:.3g} MiB"
    if omitted:
        note += f"; the {MAX_MEMORY_ROWS} largest of {len(layers) + omitted} layers shown"
    return BarChart(
        title="Memory per layer",
        x_label="peak activation memory above entry (MiB)",
        series=tuple(BarSeries(k, KIND_COLORS[k]) for k in kinds),
        rows=rows,
        note=note,
        value_format="{:.3g} MiB",
    )


def _kind_of(layer: LayerStats) -> str:
    return "attention" if _is_attention(layer) else layer.kind
