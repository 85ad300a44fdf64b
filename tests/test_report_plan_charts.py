"""A plan's HTML charts: one figure per axis in its own unit, the Pareto axes scaled to the plans
with the budget marked (drawn when near them, an arrow when far), numbers in every tooltip,
candidates rejected after measurement drawn as such."""

from __future__ import annotations

import dataclasses
import re

from attnprof.plans.records import Plan
from attnprof.report.plan import comparison_charts, pareto_chart
from attnprof.report.svg import IntervalChart, LinearScale, LineSeries, ScatterSeries, XYChart, count_marks, render_svg
from tests.samples import MIB, sample_plan


def tooltips(svg: str) -> list[str]:
    return re.findall(r"<title>(.*?)</title>", svg)


def test_each_figure_has_its_own_chart_in_its_own_unit() -> None:
    charts = comparison_charts(sample_plan())
    assert [c.x_label for c in charts] == ["latency per step (ms)", "peak memory (MiB)"]
    latency = charts[0]
    assert isinstance(latency, IntervalChart)
    values = {row.label: (row.estimate, row.lo, row.hi) for row in latency.rows}
    assert values == {  # sample_plan: baseline 10 ms, predicted 6 ± 1 ms, measured 6.5 ms
        "baseline, measured": (10.0, 10.0, 10.0),
        "plan, predicted": (6.0, 5.0, 7.0),
        "plan, measured": (6.5, 6.5, 6.5),
    }
    svg = render_svg(latency)
    assert "plan, predicted: 6 ms ± 1 ms (-40.0% vs the baseline)" in tooltips(svg)
    assert "plan, measured: 6.5 ms (-35.0% vs the baseline)" in tooltips(svg)
    memory = charts[1]
    assert isinstance(memory, IntervalChart)
    assert {row.estimate for row in memory.rows} == {32.0, 20.0, 21.0}  # MiB, not a % of anything


def _series(chart: XYChart, name: str) -> ScatterSeries | LineSeries:
    return next(s for s in chart.series if s.name == name)


def test_a_budget_near_the_plans_is_drawn_to_scale() -> None:
    chart = pareto_chart(sample_plan())  # budgets 64 MiB and 8 ms, plans 32-80 MiB and 4-10 ms
    assert chart is not None and not chart.off_scale
    assert isinstance(chart.y_scale, LinearScale) and chart.y_scale.lo <= 32 and chart.y_scale.hi >= 80
    budgets = [s for s in chart.series if isinstance(s, LineSeries) and s.name == "budget"]
    assert {s.points[0][1] for s in budgets if s.points[0][1] == s.points[1][1]} == {64.0}  # the memory line


def test_a_budget_far_above_the_plans_is_an_arrow_and_the_axis_fits_the_plans() -> None:
    plan = sample_plan()
    plan.budgets = dataclasses.replace(plan.budgets, memory_bytes=2048 * MIB)
    chart = pareto_chart(plan)
    assert chart is not None
    assert [o.axis for o in chart.off_scale] == ["y"] and "2048 MiB" in chart.off_scale[0].label
    assert isinstance(chart.y_scale, LinearScale) and chart.y_scale.hi <= 100  # plans reach 80 MiB
    svg = render_svg(chart)
    assert 'class="off-scale"' in svg and "2048 MiB: above the chart" in svg


def test_pareto_tooltips_carry_each_plans_figures() -> None:
    svg = render_svg(pareto_chart(sample_plan()))  # type: ignore[arg-type]
    assert "bf16: 7.000 ms, 40.0 MiB (predicted; fits the budget)" in tooltips(svg)
    assert "bf16 flash: 6.000 ms, 48.0 MiB (predicted; the chosen plan; fits the budget)" in tooltips(svg)


def test_a_candidate_rejected_after_measurement_is_marked_rejected() -> None:
    plan: Plan = sample_plan()
    plan.frontier[1].rejected = "output error 0.3 exceeds 0.01"
    chart = pareto_chart(plan)
    assert chart is not None and "1 rejected after measurement" in chart.note
    svg = render_svg(chart)
    assert count_marks(svg, "rejected after measurement") == 1
    assert count_marks(svg, "fits the budget") == 0  # the other fitting plan is the chosen one
    assert "bf16: 7.000 ms, 40.0 MiB (predicted; rejected after measurement: output error 0.3 exceeds 0.01)" in (
        tooltips(svg)
    )
