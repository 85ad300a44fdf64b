"""`attnprof doctor`: what this environment can do, and how to fix what it cannot."""

from __future__ import annotations

import typer

from attnprof.cli import options
from attnprof.doctor.records import Finding
from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.report.console import log, print_result, set_verbosity, stdout_console
from attnprof.report.doctor import doctor_summary, doctor_table
from attnprof.store import record_json


def doctor_command(
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON to stdout and nothing else."),
    calibrate_peaks: bool = typer.Option(False, "--calibrate", help="Measure GEMM TFLOP/s per dtype and copy "
                                         "bandwidth, and store them for % of peak and the roofline class."),
    link: bool = typer.Option(False, "--link", help="With --calibrate under torchrun: measure α and β of "
                              "all-reduce, all-gather and reduce-scatter between the ranks, for tune."),
    device: str = typer.Option(None, "--device", help="Device to calibrate (default: the CPU and the current GPU)."),
    threads: int = options.setting_option("threads", "--threads", help="CPU threads for torch while calibrating; "
                                          "match `profile --threads` (calibrations are kept per thread count)."),
) -> None:
    """Check torch, CUDA, GPUs, NVML, CUPTI, SDPA backends, device peaks and optional packages; each problem
    comes with its fix."""
    import torch

    from attnprof.doctor.environment import calibrate, calibration_devices, gather

    measured: list[Finding] | None = []
    if (device is not None or threads is not None) and not calibrate_peaks:
        raise UsageError("--device and --threads only apply with --calibrate")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {threads}")
        torch.set_num_threads(threads)
    if link and not calibrate_peaks:
        raise UsageError("--link only applies with --calibrate")
    if link:
        measured = calibrate_ranks(device)
        if measured is None:
            return
    elif calibrate_peaks:
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


def calibrate_ranks(device: str | None) -> list[Finding] | None:
    """`--calibrate --link` on one rank: every rank measures, rank 0 stores and reports (None elsewhere)."""
    import torch
    import torch.distributed as dist

    from attnprof.doctor.environment import calibrate_link
    from attnprof.measure.device import resolve_device
    from attnprof.plans.sharding import init_distributed, launched_ranks, rank_device, torchrun_command

    ranks = launched_ranks()
    if ranks is None or ranks.world_size < 2:
        raise EnvironmentUnsupported(
            f"--link measures the link between ranks: run {torchrun_command(2, ['doctor', '--calibrate', '--link'])}"
        )
    run_device = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ranks = init_distributed(run_device)
    if ranks.rank != 0:
        set_verbosity(-1)
    log(f"timing all-reduce, all-gather and reduce-scatter between {ranks.world_size} ranks (a few seconds)")
    try:
        findings = calibrate_link(rank_device(run_device, ranks))
    finally:
        dist.destroy_process_group()
    return findings if ranks.rank == 0 else None

