"""`attnprof profile [TARGET]`: per-layer time, memory and FLOPs of one workload."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from attnprof.api import load_plan
from attnprof.cli import options
from attnprof.cli.outputs import refuse_overwriting
from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.plans.records import PlanChoices
from attnprof.profiling.records import distributed_profile_path, profile_path
from attnprof.report.console import detail, log, print_result, set_verbosity, stdout_console
from attnprof.report.html import render_html
from attnprof.report.profile import SORT_KEYS, print_profile
from attnprof.settings import Settings, resolve_settings
from attnprof.store import (
    DEFAULT_PROFILE_DIR,
    ScratchFolder,
    atomic_write_text,
    file_identity,
    record_json,
    write_new_record,
    write_record,
)

if TYPE_CHECKING:
    from attnprof.targets.workload import Workload


def profile_command(
    target: str = typer.Argument(None, help=f"{options.TARGET_HELP} (default: zoo:decoder)."),
    batch_size: int = options.BATCH_SIZE,
    seq_len: int = options.SEQ_LEN,
    dtype: str = options.DTYPE,
    backend: str = options.BACKEND,
    device: str = options.DEVICE,
    mode: str = options.MODE,
    warmup: int = options.WARMUP,
    repeats: int = options.REPEATS,
    threads: int = options.THREADS,
    reference_probe: bool = typer.Option(
        None, "--reference-probe/--no-reference-probe", help=f"{options.REFERENCE_PROBE_HELP}."
    ),
    clock: str = options.CLOCK,
    attn_implementation: str = options.ATTN_IMPLEMENTATION,
    sort: str = typer.Option("order", "--sort", help=f"Row order: {', '.join(SORT_KEYS)}."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to save the profile JSON (default: under profiles/)."),
    no_save: bool = typer.Option(False, "--no-save", help="Do not save the profile."),
    html: Path = typer.Option(None, "--html", help="Also write a self-contained HTML report with charts."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile JSON to stdout and nothing else."),
    trace: bool = typer.Option(False, "--trace", help="Add a short torch.profiler window: kernels (or CPU ops) per "
                                                      "module, the SDPA backend that ran, a Chrome trace."),
    trace_file: Path = typer.Option(None, "--trace-file", help="Where to save the Chrome trace (.json.gz; implies "
                                                               "--trace; default: next to the saved profile)."),
    plan_file: Path = typer.Option(None, "--plan", help="Profile the model with this saved plan applied; a sharded "
                                   "plan runs under torchrun, one profile per rank merged by rank 0."),
    debug: bool = options.DEBUG,
) -> None:
    """Profile a workload: per-layer time, memory, FLOPs and exact attention FLOPs."""
    from attnprof.measure.trace import TRACE_SUFFIX, move_next_to
    from attnprof.plans.sharding import launched_ranks, torchrun_command
    from attnprof.plans.verify import applied_settings, applied_workload
    from attnprof.profiling.run import run_profile
    from attnprof.targets.load import load_workload, target_source

    if sort not in SORT_KEYS:
        raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    refuse_overwriting(
        {"--out": out, "--html": html, "--trace-file": trace_file},
        {"the model": target_source(target), "--plan": plan_file},
    )
    plan = load_plan(plan_file) if plan_file is not None else None
    workload = load_workload(target)
    overrides = options.run_overrides(
        batch_size=batch_size, seq_len=seq_len, dtype=dtype, backend=backend, device=device, mode=mode,
        warmup=warmup, repeats=repeats, threads=threads, clock=clock, reference_probe=reference_probe,
        attn_implementation=attn_implementation,
    )
    settings = resolve_settings(workload, overrides)
    if plan is not None and plan.choices.pipeline_stages > 1 and settings.mode == "train":
        # Only the last stage's output reaches every rank, detached: a backward could not reach the first stages.
        raise EnvironmentUnsupported("a pipeline-stage plan runs inference only: profile it with --mode infer")
    if plan is not None:
        settings = applied_settings(settings, plan.choices)
        workload = applied_workload(workload, settings, plan.choices)
    ranks = launched_ranks()
    world_size = plan.choices.world_size if plan is not None else 1
    if world_size > 1 and ranks is None:
        raise EnvironmentUnsupported(
            f"the plan needs {world_size} ranks: run {torchrun_command(world_size, ['profile', '...'])}"
        )
    if ranks is not None and ranks.world_size > 1:
        if trace or trace_file is not None or html is not None:
            raise UsageError("--trace, --trace-file and --html profile one process; under torchrun drop them")
        profile_distributed(workload, settings, plan.choices if plan is not None else None, out, no_save, as_json)
        return
    log(f"profiling {workload.target} ({settings.mode}, batch {settings.batch_size}, seq {settings.seq_len}, "
        f"{settings.dtype}, {settings.device})")
    trace = trace or trace_file is not None
    # The saved profile's path depends on the run: a trace to go beside it waits in a scratch folder
    # (a profile written into a device or stdout has no beside).
    beside = not no_save and (out is None or file_identity(out) is not None)
    scratch = ScratchFolder("trace") if trace and trace_file is None and beside else None
    with scratch or contextlib.nullcontext():
        pending = scratch.path / f"trace{TRACE_SUFFIX}" if scratch is not None else None
        profile = run_profile(workload, settings, trace=trace, trace_file=trace_file or pending)
        if not no_save:
            # Under profiles/ a name of its own first, never over another run's profile (or its
            # trace, e.g. a second process in the same second); the trace then moves beside it.
            path = out if out is not None else write_new_record(profile_path(profile, DEFAULT_PROFILE_DIR), profile)
            moved = pending is not None and pending.exists() and profile.trace is not None
            if moved:
                profile.trace.trace_file = str(move_next_to(pending, path))
            if out is not None or moved:
                write_record(path, profile)
            log(f"saved {path}")
    if profile.trace is not None and profile.trace.trace_file:
        log(f"Chrome trace: {profile.trace.trace_file} (open in https://ui.perfetto.dev)")
    detail(
        f"{len(profile.layers)} modules; workload fingerprint {profile.workload.fingerprint}; "
        f"timing {profile.timing_source}; machine {profile.machine.fingerprint()}"
    )
    if html is not None:
        atomic_write_text(html, render_html(profile))
        log(f"wrote {html}")
    if as_json:
        print_result(record_json(profile))
    else:
        print_profile(profile, stdout_console(), sort)


def profile_distributed(
    workload: Workload, settings: Settings, choices: PlanChoices | None, out: Path | None, no_save: bool, as_json: bool
) -> None:
    """One rank of a torchrun run: profile this rank; rank 0 saves and prints the merged profile."""
    import torch
    import torch.distributed as dist

    from attnprof.measure.device import resolve_device
    from attnprof.plans.sharding import init_distributed, sharding_label
    from attnprof.profiling.distributed import profile_ranks
    from attnprof.report.distributed import distributed_view

    ranks = init_distributed(resolve_device(settings.device))
    if ranks.rank != 0:
        set_verbosity(-1)  # one report: the other ranks only profile
    log(f"profiling {workload.target} on {ranks.world_size} ranks ({settings.mode}, batch {settings.batch_size}, "
        f"seq {settings.seq_len}, {settings.dtype}, {settings.device})")
    try:
        torch.manual_seed(0)  # every rank builds the same weights, as apply does
        merged = profile_ranks(workload, settings, sharding_label(choices) if choices is not None else None)
    finally:
        dist.destroy_process_group()
    if merged is None:
        return
    if not no_save:
        path = out if out is not None else distributed_profile_path(merged)
        (write_record if out is not None else write_new_record)(path, merged)
        log(f"saved {path}")
    if as_json:
        print_result(record_json(merged))
    else:
        stdout_console().print(distributed_view(merged))
