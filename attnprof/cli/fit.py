"""`attnprof fit TARGET`: sweep the knobs, fit the latency and memory cost model, show its error."""

from __future__ import annotations

from pathlib import Path

import typer

from attnprof import backends
from attnprof.cli import options
from attnprof.cli.outputs import refuse_overwriting
from attnprof.costmodel.knobs import Config, default_knobs, parse_knob
from attnprof.costmodel.records import Measurement
from attnprof.errors import FitRejected, UsageError
from attnprof.report.console import log, print_result, stdout_console
from attnprof.report.progress import progress as progress_bar
from attnprof.settings import LIMITS, resolve_settings
from attnprof.store import DEFAULT_PROFILE_DIR, record_json, write_record

# Sweeps time many configurations: fewer repeats than a single profile, medians still.
SWEEP_WARMUP = 1
SWEEP_REPEATS = 5
DEFAULT_TIMEOUT = "10m"  # per isolated configuration


def fit_command(
    target: str = typer.Argument(None, help=f"{options.TARGET_HELP}."),
    batch_size: str = typer.Option(None, "--batch-size", "-b", help="Range LOW:HIGH or a value (default 1:4)."),
    seq_len: str = typer.Option(None, "--seq-len", "-s", help="Range LOW:HIGH or a value (default 32:256)."),
    dtype: str = typer.Option(None, "--dtype", help="Comma-separated dtypes (default fp32,bf16)."),
    backend: str = typer.Option(
        None,
        "--backend",
        help=f"Comma-separated SDPA backends (default {','.join(backends.default_sweep('cpu'))} on CPU).",
    ),
    threads: str = typer.Option(None, "--threads", help="Comma-separated CPU thread counts (default: current)."),
    mode: str = options.MODE,
    device: str = options.GPU_DEVICE,
    clock: str = options.CLOCK,
    max_measurements: int = options.count_option(
        24, "--max-measurements", "-n", low=1, high=100_000, help="Most configurations to measure."
    ),
    time_budget: str = typer.Option(None, "--time-budget", help="Stop starting measurements after e.g. 90s, 5m."),
    warmup: int = options.count_option(
        SWEEP_WARMUP, "--warmup", low=LIMITS["warmup"][0], high=LIMITS["warmup"][1],
        help="Warm-up steps per configuration.",
    ),
    repeats: int = options.count_option(
        SWEEP_REPEATS, "--repeats", low=LIMITS["repeats"][0], high=LIMITS["repeats"][1],
        help="Timed steps per configuration (median used).",
    ),
    folds: int = options.count_option(
        5, "--folds", low=2, high=1000, help="Cross-validation folds (leave-one-shape-out when few shapes)."
    ),
    isolate: bool = typer.Option(
        False, "--isolate", help="Measure each configuration in its own process: a crash or hang costs that point only."
    ),
    timeout: str = typer.Option(
        None, "--timeout", help=f"With --isolate: give up on a point after e.g. 90s (default {DEFAULT_TIMEOUT})."
    ),
    profiles_dir: Path = typer.Option(DEFAULT_PROFILE_DIR, "--profiles-dir", help="Measurement store folder."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to save the model JSON (default: under profiles/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the model JSON to stdout and nothing else."),
    debug: bool = options.DEBUG,
) -> None:
    """Measure a space-filling sweep of configurations and fit the cost model (resumes a stopped sweep)."""
    import torch

    from attnprof.costmodel.design import parse_duration
    from attnprof.costmodel.sweep import fit_workload
    from attnprof.report.fit import print_fit
    from attnprof.targets.load import load_workload, target_source

    refuse_overwriting({"--out": out}, {"the model": target_source(target)})
    workload = load_workload(target)
    base = resolve_settings(
        workload, {"mode": mode, "device": device, "warmup": warmup, "repeats": repeats, "clock": clock}
    )
    knobs = default_knobs(base.device, torch.get_num_threads())
    for name, text in [
        ("batch_size", batch_size),
        ("seq_len", seq_len),
        ("dtype", dtype),
        ("backend", backend),
        ("threads", threads),
    ]:
        if text is not None:
            knobs[name] = parse_knob(name, text)
    budget_s = parse_duration(time_budget) if time_budget is not None else None
    if timeout is not None and not isolate:
        raise UsageError("--timeout needs --isolate: only a separate process can be stopped safely")
    timeout_s = parse_duration(timeout or DEFAULT_TIMEOUT, flag="--timeout") if isolate else None

    def shown(config: Config) -> str:
        return f"batch {config['batch_size']} seq {config['seq_len']} {config['dtype']} {config['backend']}"

    def starting(config: Config, index: int, total: int) -> None:
        bar.describe(f"measuring {index + 1}/{total}: {shown(config)}")

    def progress(measurement: Measurement, index: int, total: int) -> None:
        result = (
            f"{measurement.time_ms.median:.2f} ms"
            if measurement.time_ms is not None
            else f"{measurement.status}: {measurement.reason}"
        )
        log(f"[{index + 1}/{total}] {shown(measurement.config)}: {result}")
        bar.update(index + 1, total)

    log(f"sweeping {workload.target}: up to {max_measurements} configurations")
    with progress_bar("sweep", total=max_measurements) as bar:  # on a terminal only
        run = fit_workload(
            workload,
            base,
            knobs,
            max_measurements=max_measurements,
            time_budget_s=budget_s,
            folds=folds,
            folder=profiles_dir,
            on_measured=progress,
            isolate_timeout_s=timeout_s,
            on_start=starting,
        )
    sweep = run.sweep
    log(f"measured {sweep.measured} new, reused {sweep.reused} from {run.store_path}")
    if sweep.stopped:
        log(f"stopped early: {sweep.stopped}; {len(sweep.skipped)} configurations not measured (rerun to resume)")
    for note in run.notes:
        log(f"note: {note}")
    path = out if out is not None else run.model_path
    write_record(path, run.model)
    log(f"saved {path}")
    rejected = run.model.unusable_reason()
    if not as_json:
        print_fit(run.model, stdout_console())
    elif rejected is None:  # a failing command leaves stdout empty: the saved file is there to read
        print_result(record_json(run.model))
    if rejected is not None:
        raise FitRejected(
            f"the cost model is not usable: {rejected}; measure more configurations (--max-measurements, "
            "--time-budget) or narrower ranges, and fit again (the sweep resumes)"
        )
