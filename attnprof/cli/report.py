"""`attnprof report FILE`: a saved profile, fit, plan or check result in another format."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from attnprof.errors import UsageError
from attnprof.report.adapter import ReportOptions
from attnprof.report.console import detail, log, stdout_console
from attnprof.report.formats import (
    BINARY_FORMATS,
    FORMATS,
    render_parquet,
    render_table,
    render_table_text,
    render_text,
)
from attnprof.report.plots import Peaks
from attnprof.report.registry import load_report_record
from attnprof.store import atomic_write_bytes, atomic_write_text


def report_command(
    file: Path = typer.Argument(..., help="A saved profile, fit, plan or check result (JSON)."),
    fmt: str = typer.Option("table", "--format", "-f", help=f"Output format: {', '.join(FORMATS)}."),
    out: Path = typer.Option(None, "--out", "-o", help="Write to this file instead of stdout."),
    peak_tflops: float = typer.Option(None, "--peak-tflops", help="Roofline: the device's peak TFLOP/s."),
    peak_bandwidth: float = typer.Option(None, "--peak-bandwidth", help="Roofline: peak memory bandwidth in GB/s."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json: the record's JSON and nothing else."),
) -> None:
    """Render a saved record as a table, markdown, JSON, CSV, Parquet or a self-contained HTML report."""
    if as_json:
        fmt = "json"
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt in BINARY_FORMATS and out is None:
        raise UsageError(f"--format {fmt} writes a binary file: name it with --out FILE")
    options = ReportOptions(peaks=peaks_from_flags(peak_tflops, peak_bandwidth))
    adapter, record = load_report_record(file)
    detail(f"{file}: a {adapter.kind} record, rendered as {fmt}")
    if fmt in BINARY_FORMATS:
        atomic_write_bytes(out, render_parquet(adapter, record))
    elif fmt == "table" and out is None:
        stdout_console().print(render_table(adapter, record))
        return
    else:
        text = render_table_text(adapter, record) if fmt == "table" else render_text(adapter, record, fmt, options)
        if out is None:
            typer.echo(text, nl=False)
            return
        atomic_write_text(out, text)
    log(f"wrote {out}")


def peaks_from_flags(tflops: float | None, bandwidth_gbs: float | None) -> Peaks | None:
    if tflops is None and bandwidth_gbs is None:
        return None
    if tflops is None or bandwidth_gbs is None:
        raise UsageError("the roofline needs both --peak-tflops and --peak-bandwidth")
    for flag, value in (("--peak-tflops", tflops), ("--peak-bandwidth", bandwidth_gbs)):
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} must be a positive number, got {value!r}")
    return Peaks(tflops, bandwidth_gbs, "given on the command line")
