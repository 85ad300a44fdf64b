"""A small SVG chart library: scales, ticks, axes, bars, scatter, lines, intervals, legends.

Reports must work offline and the runtime dependencies are fixed, so charts are written as
inline SVG text rather than drawn by a plotting package. Each chart is a frozen dataclass of
plain numbers and strings; `render_svg(chart)` turns it into one `<svg>` element.

Every plotted datum (a bar segment, a point, an interval) is one element with
`class="mark"` and a `data-series` attribute, so tests and tools can count what was drawn.
The `<svg>` carries no xmlns attribute: inline SVG in HTML5 does not need it, and it would be
the only external-looking URL in a self-contained report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Literal

from attnprof.store import short_hash

FONT = "font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif"
CHAR_WIDTH = 6.6  # average glyph width in px of the 11 px label font, for layout estimates
AXIS_COLOR = "#444444"
GRID_COLOR = "#e3e3e3"
TEXT_COLOR = "#222222"
LINEAR_LIMIT = 1e300  # the largest magnitude a linear axis spans


# --------------------------------------------------------------------------- scales


@dataclass(frozen=True)
class LinearScale:
    """Maps [lo, hi] linearly onto [0, 1]."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.hi <= self.lo:
            raise ValueError(f"LinearScale needs finite lo < hi, got [{self.lo}, {self.hi}]")

    def fraction(self, value: float) -> float:
        return (value - self.lo) / (self.hi - self.lo)

    def ticks(self) -> list[float]:
        step = _nice_step((self.hi - self.lo) / 5)
        first = math.ceil(self.lo / step - 1e-9) * step
        count = math.floor((self.hi - first) / step + 1e-9) + 1
        return [_clean(first + i * step) for i in range(count)]

    @classmethod
    def covering(cls, values: Sequence[float], include_zero: bool = True, pad: float = 0.0) -> LinearScale:
        """A scale with nice round ends that contains every finite value, with `pad` (a share of
        the range) of room beyond the data's extremes so marks drawn there are not cut by the axes."""
        # Room for the padding and the ticks: a value beyond ±1e300 is drawn at that edge.
        finite = [min(max(v, -LINEAR_LIMIT), LINEAR_LIMIT) for v in values if math.isfinite(v)] or [0.0, 1.0]
        lo, hi = min(finite), max(finite)
        if hi <= lo:  # a single value: centre it
            margin = abs(lo) / 2 or 1.0
            lo, hi = lo - margin, hi + margin
        margin = pad * (hi - lo)
        lo, hi = lo - margin, hi + margin
        if include_zero:
            lo, hi = min(lo, 0.0) if min(finite) < 0 else 0.0, max(hi, 0.0) if max(finite) > 0 else 0.0
            if hi <= lo:  # every value is zero
                hi = lo + 1.0
        step = _nice_step((hi - lo) / 5)
        return cls(math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step)


@dataclass(frozen=True)
class LogScale:
    """Maps [lo, hi] (both > 0) logarithmically onto [0, 1]; ticks at 1-2-5 or powers of ten."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (0 < self.lo < self.hi and math.isfinite(self.hi)):
            raise ValueError(f"LogScale needs 0 < lo < hi, got [{self.lo}, {self.hi}]")

    def fraction(self, value: float) -> float:
        value = max(value, self.lo * 1e-3)  # keep non-positive values drawable, far below the axis
        return (math.log10(value) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))

    def ticks(self) -> list[float]:
        decades = math.log10(self.hi) - math.log10(self.lo)
        multipliers = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
        stride = max(1, math.ceil(decades / 8))  # at most ~8 labelled decades
        ticks = []
        for exponent in range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1):
            if exponent % stride:
                continue
            for m in multipliers:
                value = m * 10.0**exponent
                if self.lo * (1 - 1e-9) <= value <= self.hi * (1 + 1e-9):
                    ticks.append(value)
        return ticks

    @classmethod
    def covering(cls, values: Sequence[float]) -> LogScale:
        """Whole decades around the positive finite values."""
        positive = [v for v in values if math.isfinite(v) and v > 0] or [1.0]
        # Decades a float holds with room for ticks: a subnormal or near-overflow value is drawn at the edge.
        low = min(max(math.floor(math.log10(min(positive))), -300), 299)
        high = min(max(math.ceil(math.log10(max(positive))), low + 1), 300)
        return cls(10.0**low, 10.0**high)


Scale = LinearScale | LogScale


def _nice_step(raw: float) -> float:
    """The 1-2-5 step at or above `raw`."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * magnitude >= raw * (1 - 1e-9):
            return m * magnitude
    return 10.0 * magnitude


def _clean(value: float) -> float:
    return 0.0 if abs(value) < 1e-12 else float(f"{value:.12g}")


def format_number(value: float) -> str:
    """Compact tick label: 0.002, 0.5, 12, 1.5k, 3M, 2e-06."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    if magnitude < 1e-3:
        return f"{value:.0e}"
    return f"{value:.3g}"


# --------------------------------------------------------------------------- chart inputs


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str = ""  # shown as the tooltip


@dataclass(frozen=True)
class ScatterSeries:
    name: str
    color: str
    points: tuple[Point, ...]
    shape: Literal["circle", "diamond"] = "circle"
    size: float = 4.5


@dataclass(frozen=True)
class LineSeries:
    """A polyline, e.g. a roofline ceiling, a Pareto frontier or the y = x diagonal."""

    name: str
    color: str
    points: tuple[tuple[float, float], ...]
    dashed: bool = False
    counts_as_mark: bool = False  # reference lines are not data marks
    in_legend: bool = True


@dataclass(frozen=True)
class OffScale:
    """A value beyond an axis's range (a budget far above every plan): an arrow at that edge, labelled."""

    axis: Literal["x", "y"]
    label: str
    color: str = "#555555"


@dataclass(frozen=True)
class XYChart:
    """Numeric x and y axes (linear or log) carrying scatter and line series."""

    title: str
    x_label: str
    y_label: str
    x_scale: Scale
    y_scale: Scale
    series: tuple[ScatterSeries | LineSeries, ...]
    width: int = 720
    height: int = 440
    note: str = ""
    off_scale: tuple[OffScale, ...] = ()  # values past the high end of an axis, each marked by an arrow


@dataclass(frozen=True)
class BarSeries:
    name: str
    color: str


@dataclass(frozen=True)
class BarRow:
    """One horizontal bar: its segment values line up with the chart's series, stacked left to right."""

    label: str
    values: tuple[float, ...]
    tooltip: str = ""


@dataclass(frozen=True)
class BarChart:
    title: str
    x_label: str
    series: tuple[BarSeries, ...]
    rows: tuple[BarRow, ...]
    width: int = 720
    row_height: int = 18
    note: str = ""
    value_format: str = "{:.3g}"  # the total printed at the end of each bar

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row.values) != len(self.series):
                raise ValueError(f"bar {row.label!r} has {len(row.values)} values for {len(self.series)} series")


@dataclass(frozen=True)
class IntervalRow:
    """An estimate with its interval, e.g. a relative change and its confidence interval."""

    label: str
    estimate: float
    lo: float
    hi: float
    status: str  # a key of IntervalChart.statuses: picks the colour and the legend entry
    tooltip: str = ""


@dataclass(frozen=True)
class ReferenceLine:
    value: float
    label: str
    color: str = "#888888"
    side: Literal["left", "centre", "right"] = "centre"  # where the label sits: lines close together


@dataclass(frozen=True)
class IntervalChart:
    title: str
    x_label: str
    rows: tuple[IntervalRow, ...]
    statuses: dict[str, str]  # status -> colour
    reference_lines: tuple[ReferenceLine, ...] = ()
    width: int = 720
    row_height: int = 22
    note: str = ""


Chart = XYChart | BarChart | IntervalChart


# --------------------------------------------------------------------------- rendering


@dataclass
class _Svg:
    width: float
    height: float
    parts: list[str] = field(default_factory=list)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(
        self,
        x: float,
        y: float,
        content: str,
        *,
        size: int = 11,
        anchor: str = "start",
        weight: str = "normal",
        color: str = TEXT_COLOR,
        rotate: bool = False,
    ) -> None:
        transform = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}" fill="{color}"{transform}>{escape(content)}</text>'
        )

    def line(self, x1: float, y1: float, x2: float, y2: float, color: str, width: float = 1, dash: str = "") -> None:
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
            f'stroke="{color}" stroke-width="{width}"{dash_attr}/>'
        )

    def render(self, title: str) -> str:
        return (
            f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{self.width:.0f}" '
            f'height="{self.height:.0f}" viewBox="0 0 {self.width:.0f} {self.height:.0f}" style="{FONT}">'
            f'<rect width="100%" height="100%" fill="#ffffff"/>' + "".join(self.parts) + "</svg>"
        )


def render_svg(chart: Chart) -> str:
    """The chart as one `<svg>` element (no XML declaration, no external references)."""
    if isinstance(chart, XYChart):
        return _render_xy(chart)
    if isinstance(chart, BarChart):
        return _render_bars(chart)
    return _render_intervals(chart)


def count_marks(svg: str, series: str | None = None) -> int:
    """How many data marks an SVG produced by this module holds (optionally of one series)."""
    if series is None:
        return svg.count('class="mark"')
    return svg.count(f'class="mark" data-series="{escape(series)}"')


def _tooltip(text: str) -> str:
    return f"<title>{escape(text)}</title>" if text else ""


def _legend(svg: _Svg, entries: Sequence[tuple[str, str, str]], x: float, y: float) -> None:
    """Swatches in one row from (x, y); entry = (name, colour, kind: box|dot|diamond|line|dash)."""
    for name, color, kind in entries:
        if kind == "diamond":
            cx, cy = x + 5.5, y - 3.5
            svg.add(
                f'<polygon points="{cx:.1f},{cy - 6:.1f} {cx + 6:.1f},{cy:.1f} {cx:.1f},{cy + 6:.1f} '
                f'{cx - 6:.1f},{cy:.1f}" fill="{color}" stroke="#000000" stroke-width="1"/>'
            )
        elif kind == "box":
            svg.add(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="11" height="11" fill="{color}"/>')
        elif kind == "dot":
            svg.add(f'<circle cx="{x + 5.5:.1f}" cy="{y - 3.5:.1f}" r="4.5" fill="{color}"/>')
        else:
            svg.line(x, y - 3.5, x + 14, y - 3.5, color, 2, "5 3" if kind == "dash" else "")
        svg.text(x + 18, y, name)
        x += 18 + len(name) * CHAR_WIDTH + 16


def _header(svg: _Svg, title: str, note: str) -> float:
    svg.text(12, 22, title, size=14, weight="bold")
    if note:
        svg.text(12, 40, note, size=11, color="#666666")
        return 52
    return 34


def _render_xy(chart: XYChart) -> str:
    svg = _Svg(chart.width, chart.height)
    top = _header(svg, chart.title, chart.note) + 22  # room for the legend row
    y_tick_labels = [format_number(t) for t in chart.y_scale.ticks()]
    left = 30 + max((len(s) for s in y_tick_labels), default=1) * CHAR_WIDTH + 10
    right, bottom = 24, 48
    plot_w, plot_h = chart.width - left - right, chart.height - top - bottom

    def px(x: float) -> float:
        return left + chart.x_scale.fraction(x) * plot_w

    def py(y: float) -> float:
        return top + (1 - chart.y_scale.fraction(y)) * plot_h

    for tick in chart.x_scale.ticks():
        svg.line(px(tick), top, px(tick), top + plot_h, GRID_COLOR)
        svg.text(px(tick), top + plot_h + 15, format_number(tick), anchor="middle")
    for tick, label in zip(chart.y_scale.ticks(), y_tick_labels, strict=True):
        svg.line(left, py(tick), left + plot_w, py(tick), GRID_COLOR)
        svg.text(left - 6, py(tick) + 4, label, anchor="end")
    svg.add(
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{plot_w:.1f}" height="{plot_h:.1f}" '
        f'fill="none" stroke="{AXIS_COLOR}"/>'
    )
    svg.text(left + plot_w / 2, chart.height - 10, chart.x_label, anchor="middle")
    svg.text(14, top + plot_h / 2, chart.y_label, anchor="middle", rotate=True)

    # Clip data to the plot area so out-of-range values never spill over the axes.
    clip_id = "clip" + short_hash([chart.title, chart.x_label, chart.y_label, chart.width, chart.height])
    svg.add(
        f'<clipPath id="{clip_id}"><rect x="{left:.1f}" y="{top:.1f}" '
        f'width="{plot_w:.1f}" height="{plot_h:.1f}"/></clipPath><g clip-path="url(#{clip_id})">'
    )
    legend: list[tuple[str, str, str]] = []
    for series in chart.series:
        if isinstance(series, LineSeries):
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in series.points)
            mark = f' class="mark" data-series="{escape(series.name)}"' if series.counts_as_mark else ""
            dash = ' stroke-dasharray="6 4"' if series.dashed else ""
            svg.add(
                f'<polyline{mark} points="{coords}" fill="none" stroke="{series.color}" '
                f'stroke-width="2"{dash}>{_tooltip(series.name)}</polyline>'
            )
            if series.in_legend:
                legend.append((series.name, series.color, "dash" if series.dashed else "line"))
            continue
        for point in series.points:
            attrs = f'class="mark" data-series="{escape(series.name)}" fill="{series.color}"'
            x, y, r = px(point.x), py(point.y), series.size
            if series.shape == "diamond":
                r *= 1.5
                corners = f"{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} {x - r:.1f},{y:.1f}"
                svg.add(
                    f'<polygon {attrs} points="{corners}" stroke="#000000" stroke-width="1">'
                    f"{_tooltip(point.label)}</polygon>"
                )
            else:
                svg.add(
                    f'<circle {attrs} cx="{x:.1f}" cy="{y:.1f}" r="{r}" stroke="#ffffff" stroke-width="0.8">'
                    f"{_tooltip(point.label)}</circle>"
                )
        legend.append((series.name, series.color, "diamond" if series.shape == "diamond" else "dot"))
    svg.add("</g>")
    for i, beyond in enumerate(chart.off_scale):
        _off_scale_arrow(svg, beyond, left, top, plot_w, plot_h, i)
    _legend(svg, legend, left, top - 10)
    return svg.render(chart.title)


def _off_scale_arrow(svg: _Svg, beyond: OffScale, left: float, top: float, plot_w: float, plot_h: float,
                     index: int) -> None:
    """An arrow inside the plot at the high end of the axis, pointing off it, with its label."""
    tip = _tooltip(beyond.label)
    if beyond.axis == "y":  # top edge, pointing up; label to its left
        x, y = left + plot_w - 12, top + 6 + 16 * index
        svg.add(
            f'<g class="off-scale">{tip}<polygon points="{x - 5:.1f},{y + 9:.1f} {x + 5:.1f},{y + 9:.1f} '
            f'{x:.1f},{y:.1f}" fill="{beyond.color}"/></g>'
        )
        svg.text(x - 9, y + 9, beyond.label, size=10, anchor="end", color=beyond.color)
    else:  # right edge, pointing right; label above it
        x, y = left + plot_w - 6, top + plot_h - 12 - 16 * index
        svg.add(
            f'<g class="off-scale">{tip}<polygon points="{x - 9:.1f},{y - 5:.1f} {x - 9:.1f},{y + 5:.1f} '
            f'{x:.1f},{y:.1f}" fill="{beyond.color}"/></g>'
        )
        svg.text(x - 13, y + 4, beyond.label, size=10, anchor="end", color=beyond.color)


def _render_category_frame(
    svg: _Svg, labels: Sequence[str], scale: Scale, x_label: str, top: float, row_height: float
) -> tuple[float, float, float]:
    """Row labels on the left, a numeric x axis below; returns (left, plot width, plot height)."""
    left = 12 + min(max((len(s) for s in labels), default=1), 48) * CHAR_WIDTH + 10
    plot_w = svg.width - left - 70  # right margin for the value printed after each bar
    plot_h = len(labels) * row_height
    for tick in scale.ticks():
        x = left + scale.fraction(tick) * plot_w
        svg.line(x, top, x, top + plot_h, GRID_COLOR)
        svg.text(x, top + plot_h + 15, format_number(tick), anchor="middle")
    svg.line(left, top, left, top + plot_h, AXIS_COLOR)
    svg.line(left, top + plot_h, left + plot_w, top + plot_h, AXIS_COLOR)
    svg.text(left + plot_w / 2, top + plot_h + 34, x_label, anchor="middle")
    for i, label in enumerate(labels):
        shown = label if len(label) <= 48 else "…" + label[-47:]
        svg.text(left - 6, top + (i + 0.5) * row_height + 4, shown, anchor="end")
    return left, plot_w, plot_h


def _render_bars(chart: BarChart) -> str:
    totals = [sum(v for v in row.values if math.isfinite(v)) for row in chart.rows]
    scale = LinearScale.covering(totals)
    height = 34 + (18 if chart.note else 0) + 22 + len(chart.rows) * chart.row_height + 50
    svg = _Svg(chart.width, height)
    top = _header(svg, chart.title, chart.note) + 22
    left, plot_w, _ = _render_category_frame(
        svg, [r.label for r in chart.rows], scale, chart.x_label, top, chart.row_height
    )
    bar_h = chart.row_height * 0.7
    for i, (row, total) in enumerate(zip(chart.rows, totals, strict=True)):
        y = top + i * chart.row_height + (chart.row_height - bar_h) / 2
        start = 0.0
        for series, value in zip(chart.series, row.values, strict=True):
            if not math.isfinite(value) or value <= 0:
                continue
            x0 = left + scale.fraction(start) * plot_w
            x1 = left + scale.fraction(start + value) * plot_w
            tip = row.tooltip or f"{row.label}: {series.name} {chart.value_format.format(value)}"
            svg.add(
                f'<rect class="mark" data-series="{escape(series.name)}" x="{x0:.1f}" y="{y:.1f}" '
                f'width="{max(x1 - x0, 0.5):.1f}" height="{bar_h:.1f}" fill="{series.color}">'
                f"{_tooltip(tip)}</rect>"
            )
            start += value
        svg.text(
            left + scale.fraction(total) * plot_w + 4,
            y + bar_h - 2,
            chart.value_format.format(total),
            size=10,
        )
    _legend(svg, [(s.name, s.color, "box") for s in chart.series], left, top - 10)
    return svg.render(chart.title)


def _render_intervals(chart: IntervalChart) -> str:
    values = [v for row in chart.rows for v in (row.lo, row.hi, row.estimate)]
    values += [line.value for line in chart.reference_lines]
    scale = LinearScale.covering(values, pad=0.03)
    height = 34 + (18 if chart.note else 0) + 34 + len(chart.rows) * chart.row_height + 50
    svg = _Svg(chart.width, height)
    top = _header(svg, chart.title, chart.note) + 34  # legend row, then the reference line labels
    left, plot_w, plot_h = _render_category_frame(
        svg, [r.label for r in chart.rows], scale, chart.x_label, top, chart.row_height
    )

    def px(value: float) -> float:
        return left + scale.fraction(value) * plot_w

    for ref in chart.reference_lines:
        svg.line(px(ref.value), top, px(ref.value), top + plot_h, ref.color, 1.5, "5 3")
        anchor = {"left": "end", "centre": "middle", "right": "start"}[ref.side]
        offset = {"left": -3, "centre": 0, "right": 3}[ref.side]
        svg.text(px(ref.value) + offset, top - 2, ref.label, size=10, anchor=anchor, color=ref.color)
    for i, row in enumerate(chart.rows):
        color = chart.statuses.get(row.status, "#777777")
        y = top + (i + 0.5) * chart.row_height
        tip = row.tooltip or f"{row.label}: {row.estimate:.3g} [{row.lo:.3g}, {row.hi:.3g}] {row.status}"
        svg.add(
            f'<g class="mark" data-series="{escape(row.status)}">{_tooltip(tip)}'
            f'<line x1="{px(row.lo):.1f}" y1="{y:.1f}" x2="{px(row.hi):.1f}" y2="{y:.1f}" '
            f'stroke="{color}" stroke-width="2.5"/>'
            f'<line x1="{px(row.lo):.1f}" y1="{y - 5:.1f}" x2="{px(row.lo):.1f}" y2="{y + 5:.1f}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<line x1="{px(row.hi):.1f}" y1="{y - 5:.1f}" x2="{px(row.hi):.1f}" y2="{y + 5:.1f}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<circle cx="{px(row.estimate):.1f}" cy="{y:.1f}" r="4.5" fill="{color}"/></g>'
        )
    used = [status for status in chart.statuses if any(r.status == status for r in chart.rows)]
    _legend(svg, [(s, chart.statuses[s], "dot") for s in used], left, top - 20)
    return svg.render(chart.title)
