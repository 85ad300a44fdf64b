"""`attnprof doctor`: what this environment can do, and how to fix what it cannot."""

from __future__ import annotations

import typer

from attnprof.cli import options
from attnprof.errors import UsageError
from attnprof.report.console import log, print_result, stdout_console
from attnprof.report.doctor import doctor_summary, doctor_table
from attnprof.store import record_json


def doctor_command(
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON to stdout and nothing else."),
    calibrate_peaks: bool = typer.Option(False, "--calibrate", help="Measure GEMM TFLOP/s per dtype and copy "
                                         "bandwidth, and store them for % of peak and the roofline class."),
    device: str = typer.Option(None, "--device", help="Device to calibrate (default: the CPU and the current GPU)."),
    threads: int = options.setting_option("threads", "--threads", help="CPU threads for torch while calibrating; "
                                          "match `profile --threads` (calibrations are kept per thread count)."),
) -> None:
    """Check torch, CUDA, GPUs, NVML, CUPTI, SDPA backends, device peaks and optional packages; each problem
    comes with its fix."""
    import torch

    from attnprof.doctor.environment import calibrate, calibration_devices, gather

    measured = []
    if (device is not None or threads is not None) and not calibrate_peaks:
        raise UsageError("--device and --threads only apply with --calibrate")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    if calibrate_peaks:
        devices = calibration_devices(device)
        log(f"calibrating {', '.join(map(str, devices))} (a few seconds each)")
        measured = calibrate(devices)
    report = gather()
    report.findings[:0] = measured
    if as_json:
        print_result(record_json(report))
        return
    stdout_console().print(doctor_table(report))
    log(doctor_summary(report))
