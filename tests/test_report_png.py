"""The HTML report's charts rendered to PNG: real images with one mark per plotted layer.

cairosvg rasterises the same SVG the HTML embeds; marks are counted as connected regions
of exactly the series colour (anti-aliased edges never match exactly; interiors do).
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from scipy import ndimage

from attnprof.report.adapter import ReportOptions
from attnprof.report.check import STATUS_COLORS
from attnprof.report.check import charts as check_charts
from attnprof.report.fit import POINT_COLOR
from attnprof.report.fit import charts as fit_charts
from attnprof.report.html import render_html
from attnprof.report.plan import CHOSEN_COLOR, FITS_COLOR, OVER_BUDGET_COLOR, pareto_chart
from attnprof.report.plots import KIND_COLORS, REST_COLOR, Peaks
from attnprof.report.svg import render_svg
from tests.samples import sample_check, sample_fit, sample_plan, sample_profile

try:
    import cairosvg
    from PIL import Image
except (ImportError, OSError) as exc:  # OSError: the cairo C library itself is missing
    pytest.skip(f"cairosvg cannot render here: {exc}", allow_module_level=True)


def render_png(svg: str) -> np.ndarray:
    png = cairosvg.svg2png(bytestring=svg.encode("utf-8"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def regions_of(image: np.ndarray, color: str) -> int:
    rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    mask = np.all(image == rgb, axis=-1)
    _, count = ndimage.label(mask)
    return count


@pytest.fixture(scope="module")
def charts() -> dict[str, np.ndarray]:
    html = render_html(sample_profile(blocks=3), ReportOptions(peaks=Peaks(1.0, 50.0, "test")))
    svgs = re.findall(r"<svg.*?</svg>", html, re.DOTALL)
    assert len(svgs) == 3
    return dict(zip(("time", "roofline", "memory"), (render_png(s) for s in svgs), strict=True))


def test_images_are_not_empty(charts: dict[str, np.ndarray]) -> None:
    for name, image in charts.items():
        height, width, _ = image.shape
        assert width >= 600 and height >= 150, name
        drawn = np.any(image != 255, axis=-1).mean()
        assert 0.02 < drawn < 0.9, f"{name}: {drawn:.1%} of pixels drawn"


# Each count is the plotted marks plus one legend swatch of the same colour.
def test_time_chart_has_a_bar_per_block(charts: dict[str, np.ndarray]) -> None:
    assert regions_of(charts["time"], KIND_COLORS["attention"]) == 3 + 1
    assert regions_of(charts["time"], REST_COLOR) == 4 + 1  # 3 blocks + time outside them


def test_roofline_has_a_point_per_computing_layer(charts: dict[str, np.ndarray]) -> None:
    assert regions_of(charts["roofline"], KIND_COLORS["attention"]) == 3 + 1
    assert regions_of(charts["roofline"], KIND_COLORS["mlp"]) == 3 + 1
    assert regions_of(charts["roofline"], KIND_COLORS["other"]) == 4 + 1  # 3 qkv + lm_head


def test_memory_chart_has_a_bar_per_layer(charts: dict[str, np.ndarray]) -> None:
    assert regions_of(charts["memory"], KIND_COLORS["attention"]) == 3 + 1
    assert regions_of(charts["memory"], KIND_COLORS["embedding"]) == 1 + 1


def test_pareto_chart_marks_each_plan_and_the_chosen_one() -> None:
    chart = pareto_chart(sample_plan())
    assert chart is not None
    image = render_png(render_svg(chart))
    # sample_plan: one plan fits besides the chosen one, two are over budget
    assert regions_of(image, FITS_COLOR) == 1 + 1
    assert regions_of(image, OVER_BUDGET_COLOR) == 2 + 1
    assert regions_of(image, CHOSEN_COLOR) == 1 + 1


def test_check_chart_marks_each_compared_metric() -> None:
    result = sample_check()
    (chart,) = check_charts(result, ReportOptions())
    image = render_png(render_svg(chart))
    # sample_check: one layer 30% slower (a regression), the FLOP count changed (exact)
    assert regions_of(image, STATUS_COLORS["regression"]) >= 1 + 1  # the +5% threshold line shares it
    assert regions_of(image, STATUS_COLORS["changed"]) == 1 + 1
    inconclusive = sum(1 for m in result.metrics if m.status == "inconclusive")  # timing noise decides how many
    legend = 1 if inconclusive else 0  # the legend lists only the statuses drawn
    assert regions_of(image, STATUS_COLORS["inconclusive"]) == inconclusive + legend


def test_fit_charts_mark_each_held_out_configuration() -> None:
    model = sample_fit()
    assert model.validation is not None
    for chart in fit_charts(model, ReportOptions()):
        image = render_png(render_svg(chart))
        assert regions_of(image, POINT_COLOR) == len(model.validation.details) + 1
