"""What this environment can do: the facts behind `attnprof doctor`, gathered without any CLI.

Each section is a plain function returning Findings; `SECTIONS` lists them in display order,
so a new fact (a driver check, a calibration) is one more function. A finding that stops a
feature from working is a `problem` or a `warn` and carries the fix.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from attnprof import backends
from attnprof.doctor.records import DoctorReport, Finding
from attnprof.errors import InputFileError, NvmlError
from attnprof.machine import machine_info
from attnprof.measure import hardware, links, nvml, trace
from attnprof.measure.device import resolve_device
from attnprof.measure.records import LinkCalibration
from attnprof.store import timestamp


def torch_section() -> list[Finding]:
    findings = [
        Finding("torch", "torch", "ok", f"torch {torch.__version__}, Python {platform.python_version()}"),
        Finding(
            "torch",
            "threads",
            "info",
            f"{torch.get_num_threads()} intra-op threads on {os.cpu_count()} logical CPUs",
        ),
    ]
    driver_present = _nvidia_driver_present()
    if torch.version.cuda is None:
        if driver_present:
            findings.append(
                Finding(
                    "torch",
                    "cuda",
                    "problem",
                    "torch is a CPU-only build but an NVIDIA driver is installed",
                    "install a CUDA build of torch (scripts/setup.sh does when nvidia-smi lists a GPU, "
                    "or set ATTNPROF_TORCH to the torch requirement you want)",
                )
            )
        else:
            findings.append(
                Finding(
                    "torch",
                    "cuda",
                    "info",
                    "CPU-only torch and no NVIDIA driver: profiles run on the CPU; CUDA timing, "
                    "kernel traces and energy need an NVIDIA GPU",
                )
            )
    elif not torch.cuda.is_available():
        findings.append(
            Finding(
                "torch",
                "cuda",
                "problem",
                f"torch is built for CUDA {torch.version.cuda} but no GPU is usable",
                "check that `nvidia-smi` lists a GPU, that the driver supports CUDA "
                f"{torch.version.cuda}, and that CUDA_VISIBLE_DEVICES "
                f"({os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}) names a device",
            )
        )
    else:
        findings.append(Finding("torch", "cuda", "ok", f"CUDA {torch.version.cuda} available"))
    return findings


def gpu_section() -> list[Finding]:
    if not torch.cuda.is_available():
        return []
    findings = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        findings.append(
            Finding(
                "gpu",
                f"cuda:{index}",
                "ok",
                f"{props.name}, compute capability {props.major}.{props.minor}, "
                f"{props.total_memory / 2**30:.1f} GiB",
            )
        )
    return findings


def sdpa_devices() -> list[str]:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + [f"cuda:{i}" for i in range(gpus)]


def probe_sdpa(device: str, backend: str) -> str | None:
    """Run scaled_dot_product_attention on a tiny causal input with only `backend` allowed.

    Returns None when it ran, else why not (torch's own reason when it gives one).
    """
    dtype = torch.float32 if device == "cpu" else torch.float16  # fused GPU kernels need half precision
    query = torch.randn(1, 2, 8, 16, device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with backends.kernel_scope(backend)():
                torch.nn.functional.scaled_dot_product_attention(query, query, query, is_causal=True)
            return None
        except RuntimeError as exc:
            # torch explains the refusal in warnings ("... not used because ..."); prefer those.
            reasons = [str(w.message).splitlines()[0] for w in caught if "because" in str(w.message)]
            return "; ".join(reasons) or str(exc).splitlines()[0]


def sdpa_section() -> list[Finding]:
    findings = []
    for device in sdpa_devices():
        for backend in backends.SDPA_NAMES:
            reason = probe_sdpa(device, backend)
            name = f"{device} {backend}"
            if reason is None:
                findings.append(Finding("sdpa", name, "ok", "runs"))
            elif not backends.runs_on(backend, torch.device(device).type):
                findings.append(Finding("sdpa", name, "info", "not implemented on CPU by PyTorch"))
            elif backend == backends.REFERENCE:
                findings.append(
                    Finding(
                        "sdpa",
                        name,
                        "problem",
                        f"the reference kernel fails: {reason}",
                        "reinstall torch; every other backend falls back to this one",
                    )
                )
            else:
                findings.append(
                    Finding(
                        "sdpa",
                        name,
                        "warn",
                        f"unavailable: {reason}",
                        f"plans will not use --backend {backend} on {device}; "
                        "a newer GPU or torch build may enable it",
                    )
                )
    return findings


def transformers_section() -> list[Finding]:
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return [
            Finding(
                "transformers",
                "transformers",
                "warn",
                "not installed: hf: targets cannot be loaded",
                "pip install 'attnprof[hf]'",
            )
        ]
    return [Finding("transformers", "transformers", "ok", f"transformers {version}: hf: targets work")]


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


def nvml_section() -> list[Finding]:
    """The driver, each GPU NVML sees, and which telemetry each one reports."""
    try:
        with nvml.session():
            driver = nvml.driver_version()
            gpus = nvml.list_gpus()
            findings = [Finding("nvml", "driver", "ok", f"NVIDIA driver {driver}, {len(gpus)} GPU(s)")]
            for info, handle in gpus:
                reader = nvml.DeviceReader(info, handle)
                reader.read(0.0)
                detail = f"{info.name} ({info.uuid}){', MIG' if info.mig else ''}"
                if reader.reasons:
                    missing = "; ".join(f"{name}: {why}" for name, why in sorted(reader.reasons.items()))
                    findings.append(
                        Finding(
                            "nvml",
                            f"gpu {info.nvml_index}",
                            "warn",
                            f"{detail}; not reported: {missing}",
                            "profiles record these as null with the reason; energy falls back to "
                            "integrated power when only the energy counter is missing",
                        )
                    )
                else:
                    findings.append(Finding("nvml", f"gpu {info.nvml_index}", "ok", f"{detail}; every reading"))
            return findings
    except NvmlError as exc:
        status = "problem" if torch.cuda.is_available() else "info"
        return [
            Finding(
                "nvml",
                "driver",
                status,
                f"{exc}: no power, energy or clocks",
                "install the NVIDIA driver (NVML ships with it); CPU profiles never need it",
            )
        ]


def cupti_section() -> list[Finding]:
    """Whether `profile --trace` sees GPU kernels: a one-matmul trial trace."""
    if not torch.cuda.is_available():
        return [Finding("cupti", "kernel trace", "info", "no CUDA device: `--trace` records CPU ops")]
    device = torch.device("cuda", torch.cuda.current_device())
    a = torch.randn(256, 256, device=device)
    summary = trace.run_trace(lambda: a @ a, device, warmup=1, active=1)
    if summary.kernels > 0:
        return [Finding("cupti", "kernel trace", "ok", f"{summary.kernels} kernel(s) recorded in a trial")]
    return [
        Finding(
            "cupti",
            "kernel trace",
            "warn",
            "a trial trace recorded no GPU kernels; `--trace` falls back to CUDA event timing",
            "stop other profilers (Nsight Systems, another torch.profiler) and check that CUPTI "
            "ships with your CUDA toolkit",
        )
    ]


def peaks_section() -> list[Finding]:
    """Where each device's peak comes from: datasheet, calibration, or nowhere yet."""
    machine = machine_info()
    path = hardware.calibration_path(machine)
    try:
        calibration = hardware.load_calibration(machine)
    except InputFileError as exc:
        return [Finding("peaks", "calibration", "problem", str(exc), "run `attnprof doctor --calibrate`")]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    findings = []
    for device in devices:
        key = hardware.device_key(device)
        spec = hardware.find_spec(key) if device.type == "cuda" else None
        measured = calibration.devices.get(key) if calibration is not None else None
        if spec is not None:
            detail = (f"{key}: datasheet {spec.name}, bf16 {spec.tflops['bf16']:g} TFLOP/s, "
                      f"{spec.memory_gbps:g} GB/s")
            findings.append(Finding("peaks", str(device), "ok", detail))
        elif measured is not None:
            figures = ", ".join(f"{dtype} {tflops:.3g}" for dtype, tflops in measured.gemm_tflops.items())
            detail = (f"{key}: calibrated {measured.created}: {figures} TFLOP/s, "
                      f"copy {measured.copy_gbps:.3g} GB/s ({path})")
            findings.append(Finding("peaks", str(device), "ok", detail))
        else:
            findings.append(
                Finding(
                    "peaks",
                    str(device),
                    "warn",
                    f"{key}: no peak known, so no % of peak and no roofline class (`bound`)",
                    f"run `attnprof doctor --calibrate` (writes {path})",
                )
            )
    return findings


def calibrate(devices: list[torch.device], budget_s: float = 0.5) -> list[Finding]:
    """Measure and store the achievable peaks of `devices` on this machine."""
    machine = machine_info()
    findings = []
    for device in devices:
        measured = hardware.calibrate(device, budget_s=budget_s)
        path = hardware.save_calibration(measured, machine)
        figures = ", ".join(f"{dtype} {tflops:.3g}" for dtype, tflops in measured.gemm_tflops.items())
        findings.append(
            Finding("calibration", str(device), "ok",
                    f"GEMM TFLOP/s {figures}; copy {measured.copy_gbps:.3g} GB/s; saved to {path}")
        )
    return findings


def calibrate_link(device: torch.device) -> list[Finding]:
    """Measure α and β of the collectives between the ranks of this torchrun run (every rank calls
    it); rank 0 stores them with this machine's calibration."""
    import torch.distributed as dist

    measured = links.calibrate_links(device)
    if dist.get_rank() != 0:
        return []
    path = links.save_link_calibration(measured, machine_info())
    return [Finding("calibration", f"{measured.backend} link", "ok", f"{_link_figures(measured)}; saved to {path}")]


def _link_figures(measured: LinkCalibration) -> str:
    fits = ", ".join(
        f"{name} α {fit.alpha_us:.3g} µs β {fit.beta_gbps:.3g} GB/s" for name, fit in measured.collectives.items()
    )
    return (f"{measured.world_size} ranks on {measured.device}: {fits}; compute with every rank at once "
            f"{measured.compute_slowdown:.2f}× slower than alone")


def links_section() -> list[Finding]:
    """Which links between ranks tune prices from measurements; the others use datasheet figures."""
    try:
        calibration = hardware.load_calibration(machine_info())
    except InputFileError:
        return []  # peaks_section reports the damaged file
    measured = calibration.links.values() if calibration is not None else []
    findings = [
        Finding("links", f"{m.backend} link", "ok", f"calibrated {m.created}: {_link_figures(m)}") for m in measured
    ]
    return findings or [
        Finding(
            "links",
            "links",
            "info",
            "no link between ranks calibrated: sharding plans are priced with datasheet figures",
            "run `torchrun --standalone --nproc-per-node=2 -m attnprof doctor --calibrate --link`",
        )
    ]


def calibration_devices(spec: str | None) -> list[torch.device]:
    """`--device` for --calibrate: the given one, else the CPU and the current GPU if any."""
    if spec is not None:
        return [resolve_device(spec)]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda", torch.cuda.current_device()))
    return devices


SECTIONS: tuple[Callable[[], list[Finding]], ...] = (
    torch_section,
    gpu_section,
    nvml_section,
    cupti_section,
    sdpa_section,
    peaks_section,
    links_section,
    transformers_section,
)


def gather() -> DoctorReport:
    findings: list[Finding] = []
    for section in SECTIONS:
        findings.extend(section())
    created = timestamp()
    return DoctorReport(findings=findings, created=created)
