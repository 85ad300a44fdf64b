"""What this environment can do: the facts behind `attnprof doctor`, gathered without any CLI.

Each section is a plain function returning Findings; `SECTIONS` lists them in display order,
so a new fact (a driver check, a calibration) is one more function. A finding that stops a
feature from working is a `problem` or a `warn` and carries the fix.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from attnprof.errors import InputFileError, NvmlError
from attnprof.measure import hardware, nvml
from attnprof.records import DoctorReport, Finding
from attnprof.store import machine_info

# Our backend names (Settings.backend) for the SDPA kernels torch can be asked for.
SDPA_BACKENDS: dict[str, str] = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}
# What PyTorch implements on CPU at all (flash and math; see DESIGN.md): others are not a problem there.
CPU_SDPA_BACKENDS = ("math", "flash")


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
                f"{props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.1f} GiB",
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
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.float32 if device == "cpu" else torch.float16  # fused GPU kernels need half precision
    query = torch.randn(1, 2, 8, 16, device=device, dtype=dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[backend])]):
                torch.nn.functional.scaled_dot_product_attention(query, query, query, is_causal=True)
            return None
        except RuntimeError as exc:
            # torch explains the refusal in warnings ("... not used because ..."); prefer those.
            reasons = [str(w.message).splitlines()[0] for w in caught if "because" in str(w.message)]
            return "; ".join(reasons) or str(exc).splitlines()[0]


def sdpa_section() -> list[Finding]:
    findings = []
    for device in sdpa_devices():
        for backend in SDPA_BACKENDS:
            reason = probe_sdpa(device, backend)
            name = f"{device} {backend}"
            if reason is None:
                findings.append(Finding("sdpa", name, "ok", "runs"))
            elif device == "cpu" and backend not in CPU_SDPA_BACKENDS:
                findings.append(Finding("sdpa", name, "info", "not implemented on CPU by PyTorch"))
            elif backend == "math":
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
                        f"plans will not use --backend {backend} on {device}; a newer GPU or torch build may enable it",
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


def nvml_section() -> list[Finding]:
    """The GPUs NVML sees (power and energy come from it), matched to CUDA devices by UUID."""
    try:
        with nvml.session():
            driver = nvml.driver_version()
            gpus = [info for info, _handle in nvml.list_gpus()]
    except NvmlError as exc:
        if torch.cuda.is_available() or _nvidia_driver_present():
            return [
                Finding(
                    "nvml",
                    "nvml",
                    "problem",
                    f"{exc}: power, energy, clocks and `attnprof monitor` are unavailable",
                    "check that the NVIDIA driver is loaded (`nvidia-smi`) and nvidia-ml-py is installed",
                )
            ]
        return [Finding("nvml", "nvml", "info", f"{exc}: no GPU energy or power readings here")]
    cuda_index = {}
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            cuda_index[nvml.normalize_uuid(nvml.cuda_uuid(torch.device("cuda", index)))] = f"cuda:{index}"
    findings = [Finding("nvml", "driver", "ok", f"NVIDIA driver {driver}, {len(gpus)} GPU(s) seen by NVML")]
    for gpu in gpus:
        memory = f", {gpu.memory_total_bytes / 2**30:.1f} GiB" if gpu.memory_total_bytes else ""
        mapped = cuda_index.get(nvml.normalize_uuid(gpu.uuid), "not visible to CUDA")
        detail = f"{gpu.name}{memory}, {gpu.uuid} -> {mapped}"
        if gpu.mig:
            findings.append(
                Finding(
                    "nvml",
                    f"nvml:{gpu.nvml_index}",
                    "warn",
                    detail + ", MIG enabled",
                    "MIG slices report no utilization and share power counters: energy is per whole GPU",
                )
            )
        else:
            findings.append(Finding("nvml", f"nvml:{gpu.nvml_index}", "ok", detail))
    return findings


def cupti_section() -> list[Finding]:
    """Whether torch.profiler records CUDA kernels here (CUPTI present and permitted)."""
    if not torch.cuda.is_available():
        return [Finding("cupti", "cupti", "info", "no CUDA device: `profile --trace` records CPU ops instead")]
    from torch.profiler import ProfilerActivity, profile

    if ProfilerActivity.CUDA not in torch.profiler.supported_activities():
        return [
            Finding(
                "cupti",
                "cupti",
                "problem",
                "this torch build cannot trace CUDA kernels (no CUPTI)",
                "install a CUDA build of torch that ships CUPTI",
            )
        ]
    x = torch.randn(64, 64, device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        (x @ x).sum().item()
    kernels = sum(len(event.kernels) for event in prof.events())
    if kernels == 0:
        return [
            Finding(
                "cupti",
                "cupti",
                "warn",
                "a traced matmul recorded no kernels: CUPTI is not permitted or is in use by another profiler",
                "allow profiling for non-root users (driver option NVreg_RestrictProfilingToAdminUsers=0) or "
                "run as root, and close other profilers; until then timing falls back to CUDA events",
            )
        ]
    return [Finding("cupti", "cupti", "ok", f"kernel tracing works ({kernels} kernels in a test matmul)")]


def peaks_section() -> list[Finding]:
    """The peaks % of peak and the roofline compare with: datasheet for known GPUs, else calibrated."""
    machine = machine_info()
    try:
        calibration = hardware.load_calibration(machine)
    except InputFileError as exc:
        return [Finding("peaks", "calibration", "problem", str(exc), "attnprof doctor --calibrate")]
    findings = []
    for device in sdpa_devices():
        peak = hardware.peak_for(torch.device(device), "fp32", calibration)
        if peak.tflops and peak.memory_gbps:
            findings.append(
                Finding(
                    "peaks",
                    device,
                    "ok",
                    f"{peak.math_mode} {peak.tflops:.4g} TFLOP/s, {peak.memory_gbps:.4g} GB/s "
                    f"({peak.source}, {peak.device})",
                )
            )
        else:
            findings.append(
                Finding(
                    "peaks",
                    device,
                    "warn",
                    "no peak known: % of peak, the roofline class and its ceilings are unavailable"
                    if peak.source is None
                    else f"{peak.reason}",
                    "attnprof doctor --calibrate",
                )
            )
    return findings


def _nvidia_driver_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


SECTIONS: tuple[Callable[[], list[Finding]], ...] = (
    torch_section,
    gpu_section,
    nvml_section,
    cupti_section,
    sdpa_section,
    peaks_section,
    transformers_section,
)


def gather() -> DoctorReport:
    findings: list[Finding] = []
    for section in SECTIONS:
        findings.extend(section())
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return DoctorReport(findings=findings, created=created)
