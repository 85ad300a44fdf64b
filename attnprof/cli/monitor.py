"""`attnprof monitor [--pid PID | -- COMMAND]`: live GPU utilization, memory, power and clocks."""

from __future__ import annotations

from pathlib import Path

import typer

from attnprof.cli import options
from attnprof.doctor.records import MIN_INTERVAL_S
from attnprof.report.console import log, stdout_console


def monitor_command(
    command: list[str] = typer.Argument(None, help="A command to launch and watch (after --)."),
    pid: int = options.count_option(None, "--pid", low=1, high=2**22, help="Watch this running process."),
    interval: float = options.number_option(
        1.0, "--interval", low=MIN_INTERVAL_S, high=86_400.0,
        help=f"Seconds between samples (at least {MIN_INTERVAL_S}).",
    ),
    duration: float = options.number_option(
        None, "--duration", low=0.0, high=1e7, above_low=True, help="Stop after this many seconds."
    ),
    record: Path = typer.Option(None, "--record", help="Save every sample to this JSON file."),
    debug: bool = options.DEBUG,
) -> None:
    """Watch every NVIDIA GPU live; with a command, until it exits (its exit code is returned)."""
    from attnprof.doctor.monitor import MonitorOptions, run_monitor
    from attnprof.report.monitor import LiveMonitor

    watch = MonitorOptions(interval_s=interval, duration_s=duration, pid=pid, command=command or (),
                             record=record)
    with LiveMonitor(stdout_console()) as live:
        code = run_monitor(watch, live.update)
    if record is not None:
        log(f"saved {record}")
    if code:
        raise typer.Exit(code)
