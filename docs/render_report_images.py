"""Regenerate the README's report picture: profile the default workload, rasterise its first chart.

    PYTHONPATH=. python docs/render_report_images.py   # needs cairosvg (pip install 'attnprof[test]')
"""

from __future__ import annotations

import re
from pathlib import Path

import cairosvg
import torch

from attnprof.profiling.run import run_profile
from attnprof.report.html import render_html
from attnprof.settings import resolve_settings
from attnprof.targets.load import load_workload

HERE = Path(__file__).parent
PICTURE = HERE / "report-time-per-block.png"


def main() -> None:
    torch.manual_seed(0)
    workload = load_workload("zoo:decoder")
    profile = run_profile(workload, resolve_settings(workload, {"repeats": 5, "warmup": 2}))
    svg = re.findall(r"<svg.*?</svg>", render_html(profile), re.DOTALL)[0]
    PICTURE.write_bytes(cairosvg.svg2png(bytestring=svg.encode("utf-8"), scale=1.5))
    print(f"wrote {PICTURE}")


if __name__ == "__main__":
    main()
