"""`attnprof doctor`: what this environment can do, and how to fix what it cannot."""

from __future__ import annotations

import json

import typer

from attnprof.doctor import gather
from attnprof.records import to_json_dict
from attnprof.report.console import log, stdout_console
from attnprof.report.doctor_view import doctor_summary, doctor_table


def doctor_command(
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON to stdout and nothing else."),
) -> None:
    """Check torch, CUDA, GPUs, SDPA backends and optional packages; each problem comes with its fix."""
    report = gather()
    if as_json:
        typer.echo(json.dumps(to_json_dict(report), indent=1, allow_nan=False))
        return
    stdout_console().print(doctor_table(report))
    log(doctor_summary(report))
