"""`attnprof report FILE`: a saved profile, fit, plan, check result or distributed profile in another format.

It writes through the same format registry (attnprof.report.formats) as the output files of other
commands (`check --junit FILE`, ...), by way of cli/outputs.py.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attnprof.cli.options import number_option
from attnprof.cli.outputs import refuse_overwriting, write_output
from attnprof.errors import UsageError
from attnprof.report.adapter import ReportOptions
from attnprof.report.console import detail, print_result, stdout_console
from attnprof.report.formats import FORMATS, formats_help
from attnprof.report.plots import Peaks
from attnprof.report.registry import load_report_record


def report_command(
    file: Path = typer.Argument(..., help="A saved profile, fit, plan, check result or distributed profile (JSON)."),
    fmt: str = typer.Option("table", "--format", "-f", help=formats_help()),
    out: Path = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
    peak_tflops: float = number_option(
        None, "--peak-tflops", low=0.0, high=1e7, above_low=True, help="Roofline: the device's peak TFLOP/s."
    ),
    peak_bandwidth: float = number_option(
        None, "--peak-bandwidth", low=0.0, high=1e9, above_low=True, help="Roofline: peak memory bandwidth in GB/s."
    ),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json: the record's JSON and nothing else."),
) -> None:
    """Render a saved record as a table, markdown, JSON, CSV, Parquet or a self-contained HTML report."""
    if as_json:
        fmt = "json"
    output = FORMATS.get(fmt)
    if output is None:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if output.binary and out is None:
        raise UsageError(f"--format {fmt} writes a binary file: name it with --out FILE")
    options = ReportOptions(peaks=peaks_from_flags(peak_tflops, peak_bandwidth))
    refuse_overwriting({"--out": out}, {"the record": file})
    adapter, record = load_report_record(file)
    detail(f"{file}: a {adapter.kind} record, rendered as {fmt}")
    if out is not None:
        write_output(output, adapter, record, out, options)
    elif output.terminal is not None:
        stdout_console().print(output.terminal(adapter, record))
    else:
        print_result(output.render(adapter, record, options), end="")


def peaks_from_flags(tflops: float | None, bandwidth_gbs: float | None) -> Peaks | None:
    if tflops is None and bandwidth_gbs is None:
        return None
    if tflops is None or bandwidth_gbs is None:
        raise UsageError("the roofline needs both --peak-tflops and --peak-bandwidth")
    return Peaks(tflops, bandwidth_gbs, "given on the command line")
