"""`attnprof compare A.json B.json`: judge saved profile B against saved profile A.

Same statistics, thresholds, outputs and exit codes as `attnprof check`, without profiling.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attnprof.cli.check import THRESHOLD_HELP, check_options, report_and_judge
from attnprof.gate.compare import compare_profiles
from attnprof.gate.stats import DEFAULT_ALPHA
from attnprof.profiling.records import load_profile
from attnprof.settings import ProjectConfig


def compare_command(
    baseline: Path = typer.Argument(..., help="The baseline profile JSON (A)."),
    current: Path = typer.Argument(..., help="The profile JSON to judge against it (B)."),
    threshold: list[str] = typer.Option(None, "--threshold", "-t", help=THRESHOLD_HELP),
    metric: list[str] = typer.Option(None, "--metric", "-m", help="Glob of metric names to compare, repeatable."),
    alpha: float = typer.Option(None, "--alpha", help=f"Significance level (default {DEFAULT_ALPHA})."),
    allow_machine_mismatch: bool = typer.Option(
        False, "--allow-machine-mismatch", help="Compare profiles from different machines (warns)."
    ),
    markdown: Path = typer.Option(None, "--markdown", help="Write Markdown (e.g. $GITHUB_STEP_SUMMARY)."),
    junit: Path = typer.Option(None, "--junit", help="Write JUnit XML, one test case per metric."),
    result_file: Path = typer.Option(None, "--result", help="Write the check result JSON to this file."),
    benchmark_json: Path = typer.Option(
        None, "--benchmark-json", help="Write github-action-benchmark customSmallerIsBetter JSON."
    ),
    show_all: bool = typer.Option(False, "--all", help="List every metric, passing ones too."),
    as_json: bool = typer.Option(False, "--json", help="Print the check result JSON to stdout and nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show attnprof's traceback on errors."),
) -> None:
    """Compare two saved profiles; exit 1 when B regressed significantly against A."""
    options = check_options(ProjectConfig.load(), threshold, metric, alpha, allow_machine_mismatch)
    result = compare_profiles(load_profile(baseline), load_profile(current), options, str(baseline), str(current))
    report_and_judge(result, markdown, junit, result_file, benchmark_json, show_all, as_json)
