"""`attnprof compare A.json B.json`: judge saved profile B against saved profile A.

Same statistics, thresholds, outputs and exit codes as `attnprof check`, without profiling.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from attnprof.cli import options as shared
from attnprof.cli.outputs import output_option, refuse_overwriting, report_and_judge
from attnprof.gate.compare import compare_profiles
from attnprof.profiling.records import load_profile
from attnprof.settings import ProjectConfig


def compare_command(
    baseline: Path = typer.Argument(..., help="The baseline profile JSON (A)."),
    current: Path = typer.Argument(..., help="The profile JSON to judge against it (B)."),
    threshold: list[str] = shared.THRESHOLD,
    metric: list[str] = shared.METRIC,
    alpha: float = shared.ALPHA,
    module_limit: str = shared.MODULE_LIMIT,
    allow_machine_mismatch: bool = shared.ALLOW_MACHINE_MISMATCH,
    markdown: Path = output_option("markdown"),
    junit: Path = output_option("junit"),
    result_file: Path = shared.CHECK_RESULT,
    benchmark_json: Path = output_option("benchmark-json"),
    show_all: bool = shared.SHOW_ALL,
    as_json: bool = shared.CHECK_JSON,
    debug: bool = shared.DEBUG,
) -> None:
    """Compare two saved profiles; exit 1 when B regressed significantly against A."""
    started = time.monotonic()
    refuse_overwriting(
        {"--markdown": markdown, "--junit": junit, "--result": result_file, "--benchmark-json": benchmark_json},
        {"the baseline": baseline, "the profile": current},
    )
    options = shared.check_options(
        ProjectConfig.load(), threshold, metric, alpha, allow_machine_mismatch, module_limit
    )
    result = compare_profiles(load_profile(baseline), load_profile(current), options, str(baseline), str(current))
    result.command = "compare"
    result.duration_s = time.monotonic() - started
    report_and_judge(result, markdown, junit, result_file, benchmark_json, show_all, as_json)
