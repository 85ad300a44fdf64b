"""Writing a command's records: stdout and the CI files of `check` and `compare`, through the one
format registry (attnprof.report.formats), and the verdict that ends a check."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from attnprof.errors import RegressionFound, UsageError
from attnprof.gate.compare import summary
from attnprof.gate.records import CheckResult
from attnprof.profiling.records import Profile
from attnprof.report.adapter import RecordAdapter, ReportOptions
from attnprof.report.check import print_check
from attnprof.report.console import log, print_result, stdout_console
from attnprof.report.formats import FORMATS, OutputFormat
from attnprof.report.registry import adapter_for_record
from attnprof.store import atomic_write_bytes, atomic_write_text, file_identity, write_record


def refuse_overwriting(outputs: Mapping[str, Path | None], inputs: Mapping[str, Path | None]) -> None:
    """Refuse (exit 2), before anything runs, an output file that is one of the command's inputs
    or another of its outputs: `profile model.py --out model.py` would destroy the model.
    `outputs` maps each flag to its file, `inputs` what each input is to its file."""
    taken: dict[Any, str] = {}
    for what, path in inputs.items():
        identity = file_identity(path) if path is not None else None
        if identity is not None:
            taken.setdefault(identity, f"{what} ({path})")
    for flag, path in outputs.items():
        identity = file_identity(path) if path is not None else None
        if identity is None:  # not given, or written into (a device, a FIFO): nothing is replaced
            continue
        if identity in taken:
            raise UsageError(f"{flag} {path} would write over {taken[identity]}: name another file")
        taken[identity] = f"the file of {flag} ({path})"


def output_option(name: str) -> Any:
    """The flag `--NAME FILE` that writes the record in the registry's format NAME."""
    return typer.Option(None, f"--{name}", help=f"Write {FORMATS[name].description}.")


def write_output(
    output: OutputFormat, adapter: RecordAdapter[Any], record: Any, path: Path, options: ReportOptions
) -> None:
    data = output.render(adapter, record, options)
    if isinstance(data, bytes):
        atomic_write_bytes(path, data)
    else:
        atomic_write_text(path, data)
    log(f"wrote {path}")


def write_outputs(record: object, paths: Mapping[str, Path | None]) -> None:
    """Write `record` in each format named in `paths` to its file; a format given no file is skipped."""
    adapter = adapter_for_record(record)
    for name, path in paths.items():
        if path is not None:
            write_output(FORMATS[name], adapter, record, path, ReportOptions())


def print_output(name: str, record: object) -> None:
    """`record` in the text format `name` on stdout, and nothing else."""
    print_result(FORMATS[name].render(adapter_for_record(record), record, ReportOptions()), end="")


def report_and_judge(
    result: CheckResult,
    markdown: Path | None,
    junit: Path | None,
    result_file: Path | None,
    benchmark_json: Path | None,
    show_all: bool,
    as_json: bool,
    fail_on_regression: bool = True,
) -> None:
    """Print the table (or the JSON), write the requested CI files, and raise RegressionFound
    (exit 1) on a regression."""
    if as_json:
        print_output("json", result)
    else:
        print_check(result, stdout_console(), show_all)
    write_outputs(result, {"markdown": markdown, "junit": junit, "benchmark-json": benchmark_json})
    if result_file is not None:  # the record itself, with its schema version: what `attnprof report` reads
        write_record(result_file, result)
        log(f"wrote {result_file}")
    if fail_on_regression and result.verdict == "regression":
        raise RegressionFound(summary(result))


def record_baseline(path: Path, profile: Profile) -> None:
    write_record(path, profile)
    log(f"baseline saved to {path}")
