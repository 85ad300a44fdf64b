"""`attnprof baseline [TARGET] --out profiles/NAME.json`: record the profile `check` compares against.

Settings not given on the command line come from ATTNPROF_* variables, then
[tool.attnprof.settings] in pyproject.toml, then the workload's own defaults.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attnprof import backends
from attnprof.cli import options
from attnprof.cli.check import record_baseline
from attnprof.errors import UsageError
from attnprof.measure.dtypes import canonical_dtype_name
from attnprof.profiling.run import run_profile
from attnprof.report.console import log, stdout_console
from attnprof.report.table import print_profile
from attnprof.settings import ProjectConfig, resolve_settings
from attnprof.store import record_json
from attnprof.targets.workload import load_workload


def baseline_command(
    target: str = typer.Argument(None, help="The workload (default: [tool.attnprof] target, else zoo:decoder)."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to save it (default: [tool.attnprof] baseline)."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Batch size."),
    seq_len: int = typer.Option(None, "--seq-len", "-s", help="Sequence length."),
    dtype: str = typer.Option(None, "--dtype", help="fp32, fp16, bf16 or fp64."),
    backend: str = typer.Option(None, "--backend", help=f"SDPA backend: {', '.join(backends.NAMES)}."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:N, or meta (dry run: FLOPs and memory only)."),
    mode: str = typer.Option(None, "--mode", help="infer (no_grad forward) or train (forward + backward)."),
    warmup: int = typer.Option(None, "--warmup", help="Warm-up steps, discarded."),
    repeats: int = typer.Option(None, "--repeats", help="Timed steps: the samples each check is judged on."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for torch (default: leave as is)."),
    reference_probe: bool = typer.Option(
        None, "--reference-probe/--no-reference-probe",
        help="Time a fixed reference workload after each step, so `check` can divide out the machine's drift "
        "(default: on).",
    ),
    clock: str = options.CLOCK,
    as_json: bool = typer.Option(False, "--json", help="Print the profile JSON to stdout and nothing else."),
    debug: bool = typer.Option(False, "--debug", help="Show attnprof's traceback on errors."),
) -> None:
    """Profile TARGET and save it as the baseline for `attnprof check`."""
    config = ProjectConfig.load()
    destination = config.resolve("baseline", str(out) if out else None, None)
    if destination is None:
        raise UsageError("where to? pass --out FILE, set ATTNPROF_BASELINE or [tool.attnprof] baseline")
    workload = load_workload(config.resolve("target", target, None))
    cli = {
        "batch_size": batch_size, "seq_len": seq_len, "backend": backend, "device": device, "mode": mode,
        "warmup": warmup, "repeats": repeats, "threads": threads, "clock": clock,
        "reference_probe": reference_probe,
        "dtype": canonical_dtype_name(dtype) if dtype is not None else None,
    }
    # Baselines carry the probe unless told otherwise: it is what keeps checks from drifting.
    settings = resolve_settings(workload, {"reference_probe": True, **config.settings_overrides(cli)})
    log(f"recording a baseline of {workload.target} ({settings.repeats} repeats)")
    profile = run_profile(workload, settings)
    record_baseline(Path(destination), profile)
    if as_json:
        typer.echo(record_json(profile))
    else:
        print_profile(profile, stdout_console())
