"""The SVG chart library: scales, ticks, marks and escaping."""

from __future__ import annotations

import math

import pytest

from attnprof.report.svg import (
    BarChart,
    BarRow,
    BarSeries,
    IntervalChart,
    IntervalRow,
    LinearScale,
    LineSeries,
    LogScale,
    Point,
    ReferenceLine,
    ScatterSeries,
    XYChart,
    count_marks,
    format_number,
    render_svg,
)


def test_linear_ticks_are_round_and_cover_the_range() -> None:
    scale = LinearScale.covering([0.3, 7.2])
    # the 1-2-5 step above 7.2 / 5 = 1.44 is 2, so the axis runs 0..8 in steps of 2
    assert (scale.lo, scale.hi) == (0.0, 8.0)
    assert scale.ticks() == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert scale.fraction(4.0) == 0.5


def test_linear_scale_of_equal_values_is_still_drawable() -> None:
    scale = LinearScale.covering([5.0, 5.0], include_zero=False)
    assert scale.lo < 5.0 <= scale.hi


def test_log_ticks_are_decades_over_wide_ranges_and_1_2_5_over_narrow_ones() -> None:
    assert LogScale(1e-3, 10).ticks() == [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    assert LogScale(1, 100).ticks() == [1, 2, 5, 10, 20, 50, 100]
    wide = LogScale(1e-6, 1e6).ticks()
    assert len(wide) <= 8 and wide[0] == 1e-6 and wide[-1] == 1e6
    assert LogScale(1, 100).fraction(10) == pytest.approx(0.5)


def test_log_scale_covers_whole_decades() -> None:
    scale = LogScale.covering([0.03, 250.0, -1.0, math.nan])  # non-positive and NaN are ignored
    assert (scale.lo, scale.hi) == (0.01, 1000.0)


@pytest.mark.parametrize("lo, hi", [(0, 1), (-1, 10), (5, 5)])
def test_log_scale_rejects_non_positive_or_empty_ranges(lo: float, hi: float) -> None:
    with pytest.raises(ValueError):
        LogScale(lo, hi)


def test_format_number() -> None:
    assert [format_number(v) for v in (0, 0.5, 12, 1500, 3e6, 2e-6)] == [
        "0",
        "0.5",
        "12",
        "1.5k",
        "3M",
        "2e-06",
    ]


def test_xy_chart_has_one_mark_per_point_and_none_for_reference_lines() -> None:
    chart = XYChart(
        "t",
        "x",
        "y",
        LogScale(0.1, 100),
        LogScale(0.01, 10),
        (
            LineSeries("ceiling", "#333333", ((0.1, 0.01), (10, 1), (100, 1))),
            ScatterSeries("a", "#ff0000", (Point(1, 0.1), Point(2, 0.2), Point(3, 0.3))),
            ScatterSeries("b", "#0000ff", (Point(5, 1),), shape="diamond"),
        ),
    )
    svg = render_svg(chart)
    assert count_marks(svg) == 4
    assert count_marks(svg, "a") == 3 and count_marks(svg, "b") == 1
    assert svg.startswith("<svg") and svg.endswith("</svg>")


def test_bar_chart_draws_only_positive_segments() -> None:
    chart = BarChart(
        "bars",
        "ms",
        (BarSeries("attention", "#ff0000"), BarSeries("rest", "#0000ff")),
        (BarRow("a", (1.0, 2.0)), BarRow("b", (0.0, 3.0)), BarRow("c", (math.nan, 1.0))),
    )
    svg = render_svg(chart)
    assert count_marks(svg, "attention") == 1
    assert count_marks(svg, "rest") == 3


def test_bar_rows_must_match_the_series() -> None:
    with pytest.raises(ValueError, match="2 values for 1 series"):
        BarChart("x", "y", (BarSeries("s", "#000000"),), (BarRow("r", (1.0, 2.0)),))


def test_interval_chart_marks_and_reference_lines() -> None:
    chart = IntervalChart(
        "check",
        "change (%)",
        (IntervalRow("step", 1, -1, 3, "pass"), IntervalRow("attn", 12, 9, 15, "regression")),
        {"pass": "#00aa00", "regression": "#ff0000", "inconclusive": "#999999"},
        (ReferenceLine(5, "threshold"),),
    )
    svg = render_svg(chart)
    assert count_marks(svg) == 2 and count_marks(svg, "regression") == 1
    assert "threshold" in svg
    assert "inconclusive" not in svg  # unused statuses stay out of the legend


def test_text_is_escaped() -> None:
    chart = BarChart("<b>&", "ms", (BarSeries("s<1>", "#000000"),), (BarRow("x<script>", (1.0,)),))
    svg = render_svg(chart)
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert count_marks(svg, "s<1>") == 1
