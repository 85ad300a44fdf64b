"""`attnprof baseline [TARGET] --out profiles/NAME.json`: record the profile `check` compares against.

Settings not given on the command line come from ATTNPROF_* variables, then
[tool.attnprof.settings] in pyproject.toml, then the workload's own defaults; a baseline carries
the reference probe and at least attnprof.gate.runs.GATE_REPEATS repeats unless told otherwise.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attnprof.cli import options
from attnprof.cli.outputs import record_baseline, refuse_overwriting
from attnprof.errors import UsageError
from attnprof.report.console import log, print_result, stdout_console
from attnprof.report.profile import print_profile
from attnprof.settings import ProjectConfig
from attnprof.store import record_json


def baseline_command(
    target: str = typer.Argument(None, help="The workload (default: [tool.attnprof] target, else zoo:decoder)."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to save it (default: [tool.attnprof] baseline)."),
    batch_size: int = options.BATCH_SIZE,
    seq_len: int = options.SEQ_LEN,
    dtype: str = options.DTYPE,
    backend: str = options.BACKEND,
    device: str = options.DEVICE,
    mode: str = options.MODE,
    warmup: int = options.WARMUP,
    repeats: int = options.setting_option(
        "repeats", "--repeats", help="Timed steps: the samples each check is judged on (default: at least 200)."
    ),
    threads: int = options.THREADS,
    reference_probe: bool = typer.Option(
        None, "--reference-probe/--no-reference-probe", help=f"{options.REFERENCE_PROBE_HELP} (default: on)."
    ),
    clock: str = options.CLOCK,
    as_json: bool = typer.Option(False, "--json", help="Print the profile JSON to stdout and nothing else."),
    debug: bool = options.DEBUG,
) -> None:
    """Profile TARGET and save it as the baseline for `attnprof check`."""
    from attnprof.gate.runs import gate_profile, gate_settings
    from attnprof.targets.load import load_workload, target_source

    config = ProjectConfig.load()
    destination = config.resolve("baseline", str(out) if out else None, None)
    if destination is None:
        raise UsageError("where to? pass --out FILE, set ATTNPROF_BASELINE or [tool.attnprof] baseline")
    target = config.resolve("target", target, None)
    refuse_overwriting({"--out": Path(destination)}, {"the model": target_source(target)})
    workload = load_workload(target)
    cli = options.run_overrides(
        batch_size=batch_size, seq_len=seq_len, dtype=dtype, backend=backend, device=device, mode=mode,
        warmup=warmup, repeats=repeats, threads=threads, clock=clock, reference_probe=reference_probe,
    )
    settings = gate_settings(workload, config, cli)
    log(f"recording a baseline of {workload.target} ({settings.repeats} repeats)")
    profile = gate_profile(workload, settings)
    record_baseline(Path(destination), profile)
    if as_json:
        print_result(record_json(profile))
    else:
        print_profile(profile, stdout_console())
