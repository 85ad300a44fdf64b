"""`attnprof check [TARGET] --baseline FILE`: re-profile with the baseline's settings and judge.

`attnprof check [TARGET] --against BASE_TARGET` judges TARGET against the baseline's code
profiled in the same job (a checkout of the base branch, say), the two interleaved in short
turns so the machine's drift hits both alike (attnprof.profiling.interleave); no baseline file is read.
`--against-ref REF` does the same with TARGET as git REF has it, from a temporary worktree
(attnprof.gate.refs).

Exit 0 pass (inconclusive metrics are reported, not failed), 1 regression, 2 bad input,
3 the user's code failed or exited, 4 machine mismatch unless --allow-machine-mismatch. A check
that measured nothing never exits 0: the result, Markdown and JUnit files it was asked for say
why. Options not given on the command line come from ATTNPROF_* variables, then [tool.attnprof]
in pyproject.toml (attnprof.settings).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import typer

from attnprof.cli import options as shared
from attnprof.cli.outputs import output_option, record_baseline, refuse_overwriting, report_and_judge, write_outputs
from attnprof.errors import AttnprofError, UsageError
from attnprof.gate.compare import CheckOptions, check_machine, compare_profiles, error_result
from attnprof.machine import machine_info
from attnprof.profiling.records import Profile, load_profile
from attnprof.report.console import log
from attnprof.settings import ProjectConfig
from attnprof.store import write_record


def check_command(
    target: str = typer.Argument(None, help="The workload (default: [tool.attnprof] target, else the baseline's)."),
    baseline: Path = typer.Option(None, "--baseline", "-B", help="Baseline profile JSON (env ATTNPROF_BASELINE)."),
    against: str = typer.Option(
        None, "--against", help="Profile this target (the baseline's code, e.g. a checkout of the base branch) "
        "interleaved with TARGET in this job, and judge TARGET against it instead of a baseline file.",
    ),
    against_ref: str = typer.Option(
        None, "--against-ref", help="Judge TARGET against itself as git REF has it (e.g. origin/main): a temporary "
        "worktree of REF is profiled interleaved with this checkout (uncommitted changes included), then removed.",
    ),
    threshold: list[str] = shared.THRESHOLD,
    metric: list[str] = shared.METRIC,
    alpha: float = shared.ALPHA,
    module_limit: str = shared.MODULE_LIMIT,
    allow_machine_mismatch: bool = shared.ALLOW_MACHINE_MISMATCH,
    update_baseline: bool = typer.Option(
        False, "--update-baseline", help="Save this run as the new baseline (after reporting); exit 0."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Also save this run's profile JSON here."),
    markdown: Path = output_option("markdown"),
    junit: Path = output_option("junit"),
    result_file: Path = shared.CHECK_RESULT,
    benchmark_json: Path = output_option("benchmark-json"),
    show_all: bool = shared.SHOW_ALL,
    as_json: bool = shared.CHECK_JSON,
    debug: bool = shared.DEBUG,
) -> None:
    """Re-profile TARGET with the baseline's settings and fail (exit 1) on a significant regression."""
    started = time.monotonic()
    config = ProjectConfig.load()
    options = shared.check_options(config, threshold, metric, alpha, allow_machine_mismatch, module_limit)
    named_baseline = config.resolve("baseline", str(baseline) if baseline else None, None)
    interleaved = against is not None or against_ref is not None
    refuse_overwriting(
        {"--out": out, "--markdown": markdown, "--junit": junit, "--result": result_file,
         "--benchmark-json": benchmark_json},
        {"the baseline": Path(named_baseline) if named_baseline and not interleaved else None},
    )
    given = [flag for flag, value in (("--against", against), ("--against-ref", against_ref)) if value is not None]
    if len(given) > 1:
        raise UsageError("--against and --against-ref each name the baseline's code: give one")
    if given and update_baseline:
        raise UsageError(f"--update-baseline records a baseline file; it does not combine with {given[0]}")
    try:
        if interleaved:
            reference, current, baseline_label = profile_interleaved_sides(config, target, against, against_ref)
        else:
            baseline_path, reference, current = profile_for_baseline(
                config, target, baseline, options, update_baseline
            )
            baseline_label = str(baseline_path)
        if out is not None:
            write_record(out, current)
            log(f"saved {out}")
        if update_baseline:  # the baseline is being replaced: report against it whatever machine made it
            options = dataclasses.replace(options, allow_machine_mismatch=True)
        result = compare_profiles(reference, current, options, baseline_label, "this run")
    except (AttnprofError, KeyboardInterrupt) as exc:  # nothing judged: the CI files say why, never green
        reason = str(exc) if isinstance(exc, AttnprofError) else "interrupted"
        failed = error_result(reason, target or str(config.resolve("target", None, "the default target")), options)
        failed.duration_s = time.monotonic() - started
        write_outputs(failed, {"markdown": markdown, "junit": junit})
        if result_file is not None:
            write_record(result_file, failed)
            log(f"wrote {result_file}")
        raise
    result.duration_s = time.monotonic() - started
    report_and_judge(
        result, markdown, junit, result_file, benchmark_json, show_all, as_json, fail_on_regression=not update_baseline
    )
    if update_baseline:
        record_baseline(Path(baseline_label), current)


def profile_for_baseline(
    config: ProjectConfig, target: str | None, baseline: Path | None, options: CheckOptions, update_baseline: bool
) -> tuple[Path, Profile, Profile]:
    """The baseline file, its profile, and TARGET profiled now with the baseline's settings."""
    from attnprof.gate.runs import gate_profile
    from attnprof.targets.load import load_workload

    baseline_text = config.resolve("baseline", str(baseline) if baseline else None, None)
    if baseline_text is None:
        raise UsageError("no baseline: pass --baseline FILE, set ATTNPROF_BASELINE or [tool.attnprof] baseline")
    baseline_path = Path(baseline_text)
    if update_baseline and not baseline_path.exists():
        raise UsageError(
            f"{baseline_path}: no baseline to update; record one with attnprof baseline TARGET --out {baseline_path}"
        )
    reference = load_profile(baseline_path)
    # Refuse another machine before spending a profile run on it (the thread count is the
    # baseline's setting, applied during the run, so it is compared afterwards).
    here = dataclasses.replace(machine_info(), threads=reference.machine.threads)
    check_machine(reference.machine, here, options.allow_machine_mismatch or update_baseline)
    workload = load_workload(shared.workload_target(config, target, baseline_path, reference.workload.target))
    log(f"profiling {workload.target} with the settings of {baseline_path}")
    return baseline_path, reference, gate_profile(workload, reference.settings)


def profile_interleaved_sides(
    config: ProjectConfig, target: str | None, against: str | None, against_ref: str | None
) -> tuple[Profile, Profile, str]:
    """The baseline's side (BASE_TARGET, or TARGET at git REF) and TARGET, profiled interleaved
    with TARGET's settings as a baseline would record them (gate.runs.gate_settings), and the
    baseline's label."""
    from attnprof.gate.refs import resolve_ref
    from attnprof.gate.runs import gate_settings, profile_against, profile_against_ref
    from attnprof.targets.load import load_workload

    if against_ref is not None:
        resolve_ref(against_ref)  # outside a repository or an unknown ref: exit 2 before any code runs
    workload = load_workload(config.resolve("target", target, None))
    settings = gate_settings(workload, config, {})
    if against_ref is not None:
        log(f"profiling {workload.target} at {against_ref} and here, interleaved ({settings.repeats} repeats each)")
        return profile_against_ref(against_ref, workload, settings)
    assert against is not None
    log(f"profiling {against} and {workload.target} interleaved ({settings.repeats} repeats each)")
    reference, current = profile_against(against, workload, settings)
    return reference, current, f"{against} (interleaved)"
