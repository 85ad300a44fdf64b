"""Device peaks: datasheet figures for NVIDIA datacenter GPUs, calibrated figures for the rest.

Peaks give each layer its % of peak and its roofline class (`bound`): a layer whose arithmetic
intensity (FLOPs per byte moved) is below the device's ridge point (peak FLOP/s / bandwidth)
is memory-bound, otherwise compute-bound. GPUs in the table use their datasheet numbers; any
other device (CPUs, unknown GPUs) uses the figures `attnprof doctor --calibrate` measured on
this machine, stored in a per-machine calibration file.

Datasheets print tensor-core figures "with sparsity" (2:4 structured); the table holds the
dense figures, i.e. half of those. Bandwidths are in GB/s (10^9 bytes/s).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from attnprof.errors import InputFileError, UsageError
from attnprof.machine import MachineInfo
from attnprof.measure.records import Bound, Calibration, DeviceCalibration, DevicePeak
from attnprof.store import read_record, timestamp, write_record

CACHE_DIR_ENV = "ATTNPROF_CACHE_DIR"


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet peaks of one GPU model."""

    name: str
    keywords: tuple[str, ...]  # all must appear in the lower-cased device name
    tflops: Mapping[str, float]  # dense peak per math mode: fp64, fp32, tf32, fp16, bf16, fp8
    memory_gbps: float
    interconnect: str  # key into INTERCONNECTS: the GPU-to-GPU link of the usual board


# Ordered most specific first: the first spec whose keywords all appear in the name wins.
GPU_SPECS: tuple[DeviceSpec, ...] = (
    # NVIDIA H200 Tensor Core GPU datasheet (https://www.nvidia.com/en-us/data-center/h200/),
    # H200 NVL column: FP64 30, FP64 TC 60, FP32 60, TF32 835*, BF16/FP16 1,671*, FP8 3,341*;
    # 4.8 TB/s HBM3e. (* with sparsity: halved here)
    DeviceSpec(
        "H200 NVL",
        ("h200", "nvl"),
        {"fp64": 60.0, "fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5, "fp8": 1670.5},
        4800.0,
        "nvlink4",
    ),
    # Same datasheet, H200 SXM column: FP64 34, FP64 TC 67, FP32 67, TF32 989*, BF16/FP16 1,979*,
    # FP8 3,958*; 4.8 TB/s HBM3e; NVLink 900 GB/s.
    DeviceSpec(
        "H200 SXM",
        ("h200",),
        {"fp64": 67.0, "fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5, "fp8": 1979.0},
        4800.0,
        "nvlink4",
    ),
    # NVIDIA H100 Tensor Core GPU datasheet (https://www.nvidia.com/en-us/data-center/h100/),
    # H100 NVL column: FP64 30, FP64 TC 60, FP32 60, TF32 835*, BF16/FP16 1,671*, FP8 3,341*;
    # 3.9 TB/s HBM3.
    DeviceSpec(
        "H100 NVL",
        ("h100", "nvl"),
        {"fp64": 60.0, "fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5, "fp8": 1670.5},
        3900.0,
        "nvlink4",
    ),
    # Same datasheet, H100 PCIe column: FP64 26, FP64 TC 51, FP32 51, TF32 756*, BF16/FP16 1,513*,
    # FP8 3,026*; 2 TB/s HBM2e; PCIe Gen5 128 GB/s.
    DeviceSpec(
        "H100 PCIe",
        ("h100", "pcie"),
        {"fp64": 51.0, "fp32": 51.0, "tf32": 378.0, "fp16": 756.5, "bf16": 756.5, "fp8": 1513.0},
        2000.0,
        "pcie5",
    ),
    # Same datasheet, H100 SXM column: FP64 34, FP64 TC 67, FP32 67, TF32 989*, BF16/FP16 1,979*,
    # FP8 3,958*; 3.35 TB/s HBM3; NVLink 900 GB/s. torch names it "NVIDIA H100 80GB HBM3".
    DeviceSpec(
        "H100 SXM",
        ("h100",),
        {"fp64": 67.0, "fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5, "fp8": 1979.0},
        3350.0,
        "nvlink4",
    ),
    # NVIDIA A100 Tensor Core GPU datasheet (https://www.nvidia.com/en-us/data-center/a100/):
    # FP64 9.7, FP64 TC 19.5, FP32 19.5, TF32 312*, BF16/FP16 624* for every variant;
    # bandwidth 80GB PCIe 1,935 GB/s, 80GB SXM 2,039 GB/s, 40GB 1,555 GB/s. No FP8.
    DeviceSpec(
        "A100 80GB PCIe",
        ("a100", "80gb", "pcie"),
        {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
        1935.0,
        "pcie4",
    ),
    DeviceSpec(
        "A100 80GB SXM",
        ("a100", "80gb"),
        {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
        2039.0,
        "nvlink3",
    ),
    DeviceSpec(
        "A100 40GB PCIe",
        ("a100", "pcie"),
        {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
        1555.0,
        "pcie4",
    ),
    DeviceSpec(
        "A100 40GB SXM",
        ("a100",),
        {"fp64": 19.5, "fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0},
        1555.0,
        "nvlink3",
    ),
    # NVIDIA L40S datasheet (https://www.nvidia.com/en-us/data-center/l40s/): FP32 91.6,
    # TF32 366*, BF16/FP16 733*, FP8 1,466*; 864 GB/s GDDR6; PCIe Gen4 x16. FP64 is not on the
    # datasheet: Ada runs FP64 at 1/64 of FP32 (NVIDIA Ada GPU architecture whitepaper).
    DeviceSpec(
        "L40S",
        ("l40s",),
        {"fp64": 91.6 / 64, "fp32": 91.6, "tf32": 183.0, "fp16": 366.5, "bf16": 366.5, "fp8": 733.0},
        864.0,
        "pcie4",
    ),
    # NVIDIA L4 Tensor Core GPU datasheet (https://www.nvidia.com/en-us/data-center/l4/):
    # FP32 30.3, TF32 120*, BF16/FP16 242*, FP8 485*; 300 GB/s GDDR6; PCIe Gen4 x16.
    # FP64 at 1/64 of FP32 as for L40S.
    DeviceSpec(
        "L4",
        ("l4",),
        {"fp64": 30.3 / 64, "fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0, "fp8": 242.5},
        300.0,
        "pcie4",
    ),
)


@dataclass(frozen=True)
class Link:
    """α-β model of one interconnect: a message of n bytes takes alpha_us + n / (beta_gbps·1e9) s."""

    name: str
    alpha_us: float  # per-message latency
    beta_gbps: float  # bandwidth per direction, GB/s
    source: str


# β: the datasheets quote bidirectional totals per GPU; one direction carries half.
# α: not a datasheet figure. It is the order of magnitude of one small-message collective step
# (launch + handshake) as NCCL reports it: a few µs inside a node, more across a network.
# Calibrate on the target cluster when a plan hinges on it.
INTERCONNECTS: dict[str, Link] = {
    "nvlink3": Link("NVLink 3 (A100 SXM)", 5.0, 300.0, "A100 datasheet: NVLink 600 GB/s bidirectional"),
    "nvlink4": Link(
        "NVLink 4 (H100/H200 SXM)", 5.0, 450.0, "H100/H200 datasheets: NVLink 900 GB/s bidirectional"
    ),
    "pcie4": Link(
        "PCIe Gen4 x16", 10.0, 32.0, "A100 PCIe / L4 / L40S datasheets: PCIe Gen4 64 GB/s bidirectional"
    ),
    "pcie5": Link("PCIe Gen5 x16", 10.0, 64.0, "H100 datasheet: PCIe Gen5 128 GB/s bidirectional"),
    "ib_hdr": Link("InfiniBand HDR", 15.0, 25.0, "NVIDIA Quantum HDR: 200 Gb/s per port"),
    "ib_ndr": Link("InfiniBand NDR", 15.0, 50.0, "NVIDIA Quantum-2 NDR: 400 Gb/s per port"),
}


def find_spec(gpu_name: str) -> DeviceSpec | None:
    """The datasheet entry for a GPU name as torch or NVML reports it, or None when unknown."""
    lowered = gpu_name.lower()
    words = set(lowered.replace("-", " ").split())
    for spec in GPU_SPECS:
        # Short model names ("l4") must match a whole word, or "l40s" would match "l4".
        if all(k in words if len(k) <= 3 else k in lowered for k in spec.keywords):
            return spec
    return None


def device_key(device: torch.device) -> str:
    """The name a calibration is stored under: "cpu" or the GPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def math_mode(device: torch.device, dtype: str) -> str:
    """Which peak applies: fp32 matmuls on a GPU run on TF32 tensor cores when torch allows it."""
    if dtype == "fp32" and device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return dtype


def peak_for(device: torch.device, dtype: str, calibration: Calibration | None = None) -> DevicePeak:
    """Datasheet peak for a known GPU, else this machine's calibrated peak, else a reason."""
    key = device_key(device)
    mode = math_mode(device, dtype)
    if device.type == "cuda":
        spec = find_spec(key)
        if spec is not None:
            tflops = spec.tflops.get(mode)
            reason = None if tflops is not None else f"{spec.name} has no {mode} peak on its datasheet"
            return DevicePeak(key, mode, tflops, spec.memory_gbps, "datasheet", reason)
    measured = calibration.devices.get(key) if calibration is not None else None
    if measured is None:
        return DevicePeak(
            key, mode, None, None, None, f"no peak known for {key}: run `attnprof doctor --calibrate`"
        )
    tflops = measured.gemm_tflops.get(dtype)
    reason = None if tflops is not None else f"{dtype} was not calibrated on {key}"
    return DevicePeak(key, mode, tflops, measured.copy_gbps, "calibrated", reason)


def roofline_bound(flops: int, bytes_moved: int, peak: DevicePeak) -> Bound | None:
    """Compute- or memory-bound by the roofline; None when the peak or the traffic is unknown."""
    if peak.tflops is None or peak.memory_gbps is None or bytes_moved <= 0:
        return None
    ridge = peak.tflops * 1e12 / (peak.memory_gbps * 1e9)  # FLOPs per byte where the roofs meet
    return "compute" if flops / bytes_moved >= ridge else "memory"


def percent_of_peak(achieved_tflops: float | None, peak: DevicePeak) -> float | None:
    if achieved_tflops is None or not peak.tflops:
        return None
    return 100.0 * achieved_tflops / peak.tflops


# --- calibration ----------------------------------------------------------------------------


def cache_dir() -> Path:
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnprof"


def calibration_path(machine: MachineInfo) -> Path:
    return cache_dir() / f"calibration-{machine.fingerprint()}.json"


def load_calibration(machine: MachineInfo) -> Calibration | None:
    """This machine's calibration, or None when it was never calibrated."""
    path = calibration_path(machine)
    if not path.exists():
        return None
    try:
        return read_record(path, Calibration)
    except InputFileError as exc:
        raise InputFileError(f"{exc}; rerun `attnprof doctor --calibrate` to rewrite it") from None


def update_calibration(machine: MachineInfo, change: Callable[[Calibration], None]) -> Path:
    """Read this machine's calibration file (or start one), change it, write it back atomically."""
    path = calibration_path(machine)
    calibration = load_calibration(machine) or Calibration(machine_fingerprint=machine.fingerprint())
    change(calibration)
    write_record(path, calibration)
    return path


def save_calibration(measured: DeviceCalibration, machine: MachineInfo) -> Path:
    """Merge one device's figures into this machine's calibration file."""
    return update_calibration(machine, lambda calibration: calibration.devices.__setitem__(measured.device, measured))


_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


def calibrate(
    device: torch.device, dtypes: tuple[str, ...] = ("fp32", "bf16", "fp16", "fp64"), budget_s: float = 0.5
) -> DeviceCalibration:
    """Measure the best dense GEMM TFLOP/s per dtype and the copy bandwidth on `device`.

    Each figure is the best of several timed runs within `budget_s`: a peak is what the device
    can reach, so the fastest run is the estimate and slower ones are interference.
    """
    unknown = [d for d in dtypes if d not in _TORCH_DTYPES]
    if unknown:
        raise UsageError(f"cannot calibrate dtype {unknown[0]!r}; choose from {', '.join(_TORCH_DTYPES)}")
    gemm_tflops: dict[str, float] = {}
    gemm_size: dict[str, int] = {}
    for name in dtypes:
        size, seconds = _best_gemm(device, _TORCH_DTYPES[name], budget_s)
        gemm_tflops[name] = 2 * size**3 / seconds / 1e12
        gemm_size[name] = size
    return DeviceCalibration(
        device=device_key(device),
        gemm_tflops=gemm_tflops,
        copy_gbps=_copy_gbps(device, budget_s),
        gemm_size=gemm_size,
        threads=torch.get_num_threads(),
        created=timestamp(),
    )


def _timed(device: torch.device, fn: Callable[[], object], repeats: int) -> float:
    """Seconds per call of `fn`, device-synchronised around `repeats` calls."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_gemm(device: torch.device, dtype: torch.dtype, budget_s: float) -> tuple[int, float]:
    """Grow a square GEMM until one call takes ≥ 20 ms (so launch cost is negligible), then
    keep the fastest of the runs that fit in the budget."""
    max_size = 16384 if device.type == "cuda" else 4096
    size = 256
    while True:
        gemm = functools.partial(
            torch.mm,
            torch.randn(size, size, device=device).to(dtype),
            torch.randn(size, size, device=device).to(dtype),
        )
        _timed(device, gemm, 1)  # the first call pays for kernel selection and page faults
        seconds = _timed(device, gemm, 1)
        if seconds >= 0.02 or size >= max_size:
            break
        size *= 2
    repeats = max(1, int(0.05 / seconds))
    best = seconds
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline:
        best = min(best, _timed(device, gemm, repeats))
    return size, best


def _copy_gbps(device: torch.device, budget_s: float) -> float:
    # Several times the last-level cache on CPUs, large enough to hide launch cost on GPUs.
    nbytes = (1 << 30) if device.type == "cuda" else (128 << 20)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    copy = functools.partial(dst.copy_, src)
    best = _timed(device, copy, 1)
    deadline = time.perf_counter() + budget_s
    while time.perf_counter() < deadline:
        best = min(best, _timed(device, copy, 2))
    return 2 * nbytes / best / 1e9  # each byte is read once and written once
