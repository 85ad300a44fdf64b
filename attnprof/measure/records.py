"""Records of what measure/ observes: attention layers, NVML telemetry, traces, peaks, calibration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from attnprof.store import SCHEMA_VERSION

# The roofline class of a layer: which ceiling (compute or memory bandwidth) bounds it.
Bound = Literal["compute", "memory"]


@dataclass
class AttentionInfo:
    """What one attention layer computed, read from the op arguments that ran."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    q_len: int
    kv_len: int
    causal: bool
    window: int | None
    backend: str
    flops: int  # useful: 4 * head_dim per unmasked (query, key) pair, over batch and query heads
    flops_dense: int  # 4 * B * H * Sq * Skv * D whatever the mask
    backward_flops: int = 0  # 2.5x forward in train mode, else 0
    batch_size: int = 0
    calls: int = 1


@dataclass
class GpuSample:
    """One NVML reading of one GPU; a field is None when the device does not report it."""

    t: float  # seconds since sampling started
    nvml_index: int
    power_w: float | None = None
    utilization_pct: float | None = None
    memory_utilization_pct: float | None = None
    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    temperature_c: float | None = None
    memory_used_bytes: int | None = None
    energy_mj: int | None = None  # the device's cumulative energy counter
    process_memory_bytes: int | None = None  # GPU memory of the watched process (monitor)


@dataclass
class Clocks:
    sm_mhz: float | None  # median over the measured steps
    memory_mhz: float | None
    sm_max_mhz: float | None = None


@dataclass
class DeviceTelemetry:
    """NVML readings over the measured steps of a profile; `reasons` says why a field is null."""

    gpu_name: str | None
    gpu_uuid: str | None
    nvml_index: int | None
    sample_rate_hz: float
    samples: int
    power_w: float | None = None  # mean
    power_max_w: float | None = None
    utilization_pct: float | None = None  # mean
    clocks: Clocks | None = None
    temperature_max_c: float | None = None
    memory_used_max_bytes: int | None = None
    energy_source: str | None = None  # "counter" (total-energy counter) or "integrated_power"
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class ModuleTrace:
    """One module's share of a traced window, per step."""

    name: str
    time_ms: float  # inclusive of child modules
    self_time_ms: float
    kernels: int  # device kernels (or CPU ops when no kernels were recorded) per step
    top: list[str] = field(default_factory=list)  # the most expensive kernel / op names


@dataclass
class TraceSummary:
    """What a torch.profiler window saw: time per module from kernels (or CPU ops) and backends."""

    timing_source: str  # "cupti" (device kernels) or "cpu_ops"
    active_steps: int
    events: int
    kernels: int  # device kernels recorded in the window; 0 on CPU
    trace_file: str | None
    backends: dict[str, str] = field(default_factory=dict)  # attention module path -> SDPA backend
    modules: list[ModuleTrace] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class DevicePeak:
    """The peak layers are compared with (% of peak, roofline class); None figures have a reason."""

    device: str
    math_mode: str  # the peak used: fp32, tf32, fp16, bf16, fp64
    tflops: float | None
    memory_gbps: float | None
    source: str | None  # "datasheet" or "calibrated"
    reason: str | None = None


@dataclass
class DeviceCalibration:
    """Achievable peaks measured by `attnprof doctor --calibrate` on one device kind."""

    device: str  # "cpu" or the GPU's name
    gemm_tflops: dict[str, float]  # dtype name -> best achieved dense GEMM TFLOP/s
    copy_gbps: float  # device-memory copy bandwidth, bytes read + written
    gemm_size: dict[str, int]
    threads: int
    created: str


@dataclass
class LinkFit:
    """α-β of one collective, fitted to its measured times over message sizes (measure/links.py)."""

    alpha_us: float  # per message of the ring algorithm
    beta_gbps: float  # bandwidth per direction, GB/s
    sizes: list[int]  # bytes of the whole tensor (all-reduce's input, all-gather's output)
    seconds: list[float]  # measured time per size: the median step, the slowest rank's


@dataclass
class LinkCalibration:
    """The collectives between ranks of one backend, measured by `doctor --calibrate --link`."""

    backend: str  # gloo, nccl
    device: str  # "cpu" or the GPU's name
    world_size: int
    collectives: dict[str, LinkFit]  # all_reduce, all_gather, reduce_scatter
    threads: int
    created: str
    # Each rank's compute when every rank computes at once over one rank computing alone (the
    # slowest rank's ratio of medians): above 1 when the ranks share cores (measure/links.py).
    compute_slowdown: float = 1.0


@dataclass
class Calibration:
    """The calibration file of one machine (see hardware.calibration_path)."""

    machine_fingerprint: str
    devices: dict[str, DeviceCalibration] = field(default_factory=dict)
    links: dict[str, LinkCalibration] = field(default_factory=dict)  # by measure.links.link_key
    schema_version: int = SCHEMA_VERSION


@dataclass
class GpuInfo:
    nvml_index: int
    uuid: str
    name: str
    memory_total_bytes: int | None
    mig: bool = False


@dataclass
class CompileStats:
    """What torch.compile did during one profile run, kept apart from the step times.

    Counted from dynamo's compile callbacks, each compile timed from its start to its end: a
    frame's first compile, and its recompiles (a guard failed: new shapes, dtypes, a changed
    hook). The step-time samples never include a compile: a timed step during which one ran is
    timed again (`retimed_steps`)."""

    frames: int  # distinct code frames compiled
    compiles: int  # every compile, first compiles and recompiles
    recompiles: int
    compile_time_s: float  # wall time inside the compiles, warm-up and counting included
    timed_compiles: int = 0  # compiles that landed in a timed step (the step was timed again)
    retimed_steps: int = 0
