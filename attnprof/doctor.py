"""What this environment can measure: `attnprof doctor` gathers the facts, the CLI shows them.

Each entry of CHECKS is a function returning DoctorChecks; a new fact is one more function in
that list. `calibrate` measures the achievable peaks that % of peak and the roofline class use
on devices without a datasheet entry (CPUs, unlisted GPUs).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from attnprof.errors import InputFileError, NvmlError
from attnprof.measure import hardware, nvml, trace
from attnprof.records import DeviceCalibration, DoctorCheck, DoctorReport
from attnprof.store import machine_info

CUDA_BUILD_FIX = "install a CUDA build of torch (https://pytorch.org/get-started/locally/)"


def cuda_checks() -> list[DoctorCheck]:
    if not torch.backends.cuda.is_built():
        return [DoctorCheck("CUDA", "info", f"torch {torch.__version__} is a CPU build", CUDA_BUILD_FIX)]
    if not torch.cuda.is_available():
        return [
            DoctorCheck(
                "CUDA",
                "warn",
                f"torch is built with CUDA {torch.version.cuda} but sees no GPU",
                "check the NVIDIA driver (nvidia-smi) and CUDA_VISIBLE_DEVICES",
            )
        ]
    count = torch.cuda.device_count()
    return [DoctorCheck("CUDA", "ok", f"CUDA {torch.version.cuda}, {count} GPU(s) visible to torch")]


def nvml_checks() -> list[DoctorCheck]:
    """The driver, each GPU NVML sees, and which telemetry each one reports."""
    try:
        with nvml.session():
            driver = nvml.driver_version()
            gpus = nvml.list_gpus()
            checks = [DoctorCheck("NVML", "ok", f"driver {driver}, {len(gpus)} GPU(s)")]
            for info, handle in gpus:
                reader = nvml.DeviceReader(info, handle)
                reader.read(0.0)
                missing = sorted(reader.reasons)
                detail = f"{info.name} ({info.uuid}){', MIG' if info.mig else ''}"
                if missing:
                    why = "; ".join(f"{k}: {reader.reasons[k]}" for k in missing)
                    checks.append(DoctorCheck(f"NVML GPU {info.nvml_index}", "warn", f"{detail}; no {why}"))
                else:
                    checks.append(DoctorCheck(f"NVML GPU {info.nvml_index}", "ok", f"{detail}; all readings"))
            return checks
    except NvmlError as exc:
        return [
            DoctorCheck(
                "NVML",
                "missing",
                f"{exc}; no power, energy or clocks",
                "power and energy are read on NVIDIA GPUs with their driver installed",
            )
        ]


def peak_checks() -> list[DoctorCheck]:
    """Where each device's peak comes from: datasheet, calibration, or nowhere yet."""
    machine = machine_info()
    calibration_file = hardware.calibration_path(machine)
    try:
        calibration = hardware.load_calibration(machine)
    except InputFileError as exc:
        return [DoctorCheck("calibration", "warn", str(exc), "run `attnprof doctor --calibrate`")]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    checks = []
    for device in devices:
        key = hardware.device_key(device)
        spec = hardware.find_spec(key) if device.type == "cuda" else None
        measured = calibration.devices.get(key) if calibration is not None else None
        if spec is not None:
            bf16 = spec.tflops["bf16"]
            detail = f"{key}: datasheet {spec.name}, bf16 {bf16:g} TFLOP/s, {spec.memory_gbps:g} GB/s"
            checks.append(DoctorCheck(f"peak {device}", "ok", detail))
        elif measured is not None:
            figures = ", ".join(f"{d} {t:.3g}" for d, t in measured.gemm_tflops.items())
            detail = f"{key}: calibrated {measured.created}: {figures} TFLOP/s, {measured.copy_gbps:.3g} GB/s"
            checks.append(DoctorCheck(f"peak {device}", "ok", detail))
        else:
            checks.append(
                DoctorCheck(
                    f"peak {device}",
                    "missing",
                    f"{key}: no peak known, so no % of peak and no roofline class",
                    f"run `attnprof doctor --calibrate` (writes {calibration_file})",
                )
            )
    return checks


def cupti_checks() -> list[DoctorCheck]:
    """Whether `profile --trace` will see GPU kernels: a one-matmul trial trace."""
    if not torch.cuda.is_available():
        return [DoctorCheck("CUPTI", "info", "no CUDA device: `--trace` records CPU ops")]
    device = torch.device("cuda", torch.cuda.current_device())
    a = torch.randn(256, 256, device=device)
    summary = trace.run_trace(lambda: a @ a, device, warmup=1, active=1)
    if summary.kernels > 0:
        return [DoctorCheck("CUPTI", "ok", f"kernel tracing works ({summary.kernels} kernel(s) in a trial)")]
    return [
        DoctorCheck(
            "CUPTI",
            "warn",
            "a trial trace recorded no GPU kernels; `--trace` falls back to CUDA event timing",
            "stop other profilers (Nsight Systems, another torch.profiler) and check that CUPTI "
            "is installed with the CUDA toolkit",
        )
    ]


CHECKS: list[Callable[[], list[DoctorCheck]]] = [cuda_checks, nvml_checks, cupti_checks, peak_checks]


def gather() -> DoctorReport:
    checks = [check for gather_one in CHECKS for check in gather_one()]
    return DoctorReport(checks=checks, calibration_file=str(hardware.calibration_path(machine_info())))


def calibrate(devices: list[torch.device], budget_s: float = 0.5) -> tuple[list[DeviceCalibration], Path]:
    """Measure and store the achievable peaks of `devices` on this machine."""
    machine = machine_info()
    measured = []
    path = hardware.calibration_path(machine)
    for device in devices:
        result = hardware.calibrate(device, budget_s=budget_s)
        path = hardware.save_calibration(result, machine)
        measured.append(result)
    return measured, path


def default_calibration_devices() -> list[torch.device]:
    """The CPU, and the current GPU when there is one."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
    return devices
