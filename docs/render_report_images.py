"""Regenerate the README's report pictures: profile the default workload and rasterise its first
chart; given a plan `attnprof tune` wrote, also its latency chart and its Pareto frontier.

    PYTHONPATH=. python docs/render_report_images.py [plan.json]   # needs cairosvg (pip install 'attnprof[test]')
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import cairosvg
import torch

from attnprof.plans.records import Plan
from attnprof.profiling.run import run_profile
from attnprof.report.adapter import ReportOptions
from attnprof.report.html import render_html
from attnprof.report.plan import comparison_charts, pareto_chart
from attnprof.report.svg import Chart, render_svg
from attnprof.settings import resolve_settings
from attnprof.store import read_record
from attnprof.targets.load import load_workload

HERE = Path(__file__).parent
PICTURE = HERE / "report-time-per-block.png"
PLAN_LATENCY = HERE / "report-plan-latency.png"
PLAN_PARETO = HERE / "report-plan-pareto.png"


def write_png(svg: str, path: Path) -> None:
    path.write_bytes(cairosvg.svg2png(bytestring=svg.encode("utf-8"), scale=1.5))
    print(f"wrote {path}")


def main(plan_file: str | None) -> None:
    torch.manual_seed(0)
    workload = load_workload("zoo:decoder")
    profile = run_profile(workload, resolve_settings(workload, {"repeats": 5, "warmup": 2}))
    write_png(re.findall(r"<svg.*?</svg>", render_html(profile, ReportOptions()), re.DOTALL)[0], PICTURE)
    if plan_file is None:
        return
    plan = read_record(Path(plan_file), Plan)
    latency: Chart = comparison_charts(plan)[0]
    write_png(render_svg(latency), PLAN_LATENCY)
    pareto = pareto_chart(plan)
    if pareto is not None:
        write_png(render_svg(pareto), PLAN_PARETO)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
