"""Typed records passed between stages, and their JSON round trip.

Every record is a dataclass; `to_json_dict` / `from_json_dict` convert it to and from the
plain JSON structure whose field names are the contract of DESIGN.md ("Profile JSON").
Top-level files carry `schema_version`; store.py checks it before building a record.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import statistics
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from attnprof.errors import InputFileError, UsageError

SCHEMA_VERSION = 1

Mode = Literal["infer", "train"]
LayerKind = Literal["attention", "mlp", "norm", "embedding", "other"]
Bound = Literal["compute", "memory"]

MODES: tuple[str, ...] = ("infer", "train")
DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16", "fp64")
BACKENDS: tuple[str, ...] = ("auto", "math", "flash", "efficient", "cudnn")
# How CPU steps are timed: wall time, or the process's CPU time (immune to time slicing by
# other processes on a shared machine, which is what makes CI timings drift).
CLOCKS: tuple[str, ...] = ("wall", "cpu")

R = TypeVar("R")


def to_json_dict(record: Any) -> Any:
    """A dataclass (or list/dict of them) as plain JSON-ready values."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: to_json_dict(getattr(record, f.name)) for f in dataclasses.fields(record)}
    if isinstance(record, (list, tuple)):
        return [to_json_dict(v) for v in record]
    if isinstance(record, dict):
        return {str(k): to_json_dict(v) for k, v in record.items()}
    if isinstance(record, float) and not math.isfinite(record):
        return None  # JSON has no NaN/inf; a non-finite figure is "unknown"
    return record


def from_json_dict(cls: type[R], data: Any, where: str = "") -> R:
    """Build `cls` from JSON data, naming the offending field when the data does not fit."""
    return typing.cast(R, _build(cls, data, where or cls.__name__))


def _build(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if data is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _build(option, data, where)
            except InputFileError as exc:
                errors.append(str(exc))
        raise InputFileError(errors[0] if errors else f"{where}: unexpected null")
    if origin is Literal:
        if data not in typing.get_args(tp):
            raise InputFileError(f"{where}: {_short(data)} is not one of {list(typing.get_args(tp))}")
        return data
    if origin in (list, tuple):
        if not isinstance(data, list):
            raise InputFileError(f"{where}: expected a list, got {type(data).__name__}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise InputFileError(f"{where}: expected an object, got {type(data).__name__}")
        _, value_type = typing.get_args(tp) or (str, Any)
        return {k: _build(value_type, v, f"{where}.{k}") for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise InputFileError(f"{where}: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kwargs[f.name] = _build(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputFileError(f"{where}: missing field {f.name!r}")
        try:
            return tp(**kwargs)
        except (UsageError, ValueError, TypeError) as exc:
            # A record's own validation (__post_init__) rejecting what the file holds.
            raise InputFileError(f"{where}: {exc}") from None
    if tp is float:
        if data is None:
            return math.nan
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise InputFileError(f"{where}: expected a number, got {_short(data)}")
        try:
            return float(data)
        except OverflowError:
            raise InputFileError(f"{where}: number too large ({_short(data)})") from None
    if tp in (int, str, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise InputFileError(f"{where}: expected {tp.__name__}, got {_short(data)}")
        return data
    raise InputFileError(f"{where}: cannot read a value of type {tp}")


def _short(value: Any) -> str:
    """A value's repr cut short (length and nesting) for a one-line error message."""
    return reprlib.repr(value)


@dataclass
class TimeStats:
    """Spread of repeated timings in milliseconds; `samples` are the raw per-repeat values."""

    median: float
    p10: float
    p90: float
    samples: list[float] = field(default_factory=list)

    @classmethod
    def from_samples(cls, samples: list[float]) -> TimeStats:
        if not samples:
            raise ValueError("TimeStats needs at least one sample")
        ordered = sorted(samples)
        return cls(
            median=statistics.median(ordered),
            p10=_quantile(ordered, 0.10),
            p90=_quantile(ordered, 0.90),
            samples=list(samples),
        )


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolated quantile of sorted values (numpy's default method)."""
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Settings:
    """How a workload is run; validated on construction so bad values fail early (exit 2)."""

    mode: Mode = "infer"
    batch_size: int = 1
    seq_len: int = 128
    dtype: str = "fp32"
    backend: str = "auto"
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 10
    threads: int = 0  # 0: leave torch's thread count as it is
    clock: str = "wall"  # CPU devices only; GPU steps are always timed by CUDA events
    reference_probe: bool = False  # time a fixed reference workload after each plain step (drift)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("batch_size", "seq_len", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"--warmup must be a non-negative integer, got {self.warmup!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise UsageError(f"--threads must be a non-negative integer, got {self.threads!r}")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.backend not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not (self.device == "cpu" or self.device == "meta" or self.device.startswith("cuda")):
            raise UsageError(f"--device must be cpu, meta, cuda or cuda:N, got {self.device!r}")
        if not isinstance(self.reference_probe, bool):
            raise UsageError(f"reference_probe must be true or false, got {self.reference_probe!r}")
        if self.clock not in CLOCKS:
            raise UsageError(f"--clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        if self.clock == "cpu" and self.device.startswith("cuda"):
            raise UsageError("--clock cpu times CPU steps only: GPU steps are timed by CUDA events")


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
class LayerStats:
    """One module of the workload: where its time, FLOPs and memory went."""

    name: str
    type: str
    kind: LayerKind
    depth: int
    time_ms: TimeStats | None  # inclusive of children; None in a dry run
    self_time_ms: float | None  # median time not spent inside a child module
    backward_time_ms: TimeStats | None
    flops: int  # forward FLOPs of this module alone (children excluded)
    bytes: int  # bytes read + written by this module's own ops
    memory_bytes: int  # peak activation memory above the level at entry, inclusive
    params: int
    achieved_tflops: float | None
    bound: Bound | None
    attention: AttentionInfo | None = None
    backward_flops: int = 0
    calls: int = 1


@dataclass
class Totals:
    time_ms: TimeStats | None
    flops: int
    attention_flops: int
    peak_memory_bytes: int
    energy_j: float | None = None
    energy_reason: str | None = "energy is measured on NVIDIA GPUs only"
    backward_flops: int = 0
    attention_flops_dense: int = 0
    attention_share_flops: float = 0.0
    attention_share_time: float | None = None
    achieved_tflops: float | None = None
    param_bytes: int = 0
    power_w: float | None = None  # mean GPU power over the measured steps (NVML)
    # The reference probe timed after each plain step (measure/reference.py), paired with
    # time_ms.samples, and the probe's version: `check` divides out the machine's drift with it.
    reference_time_ms: TimeStats | None = None
    reference_version: int | None = None


@dataclass
class MachineInfo:
    cpu: str
    gpu_name: str | None
    gpu_uuid: str | None
    driver: str | None
    cuda: str | None
    torch: str
    python: str
    threads: int
    hostname: str = ""
    platform: str = ""

    def fingerprint(self) -> str:
        """Identifies a machine kind for comparisons: hardware and software, not the host name."""
        from attnprof.store import short_hash

        return short_hash([self.cpu, self.gpu_name, self.driver, self.cuda, self.torch, self.threads])


@dataclass
class WorkloadInfo:
    target: str
    fingerprint: str  # architecture + settings; identifies the workload in saved files
    parameter_count: int
    name: str = ""
    architecture_fingerprint: str = ""  # architecture alone, shared across settings


@dataclass
class Profile:
    """The result of one `attnprof profile` run."""

    attnprof_version: str
    created: str
    machine: MachineInfo
    commit: str | None
    workload: WorkloadInfo
    settings: Settings
    totals: Totals
    layers: list[LayerStats]
    timing_source: str = "wall"  # wall (CPU perf_counter), cpu_time (process CPU time), cuda_events, none (dry run)
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)
    telemetry: DeviceTelemetry | None = None  # NVML power, clocks, utilization (NVIDIA GPUs)
    trace: TraceSummary | None = None  # `profile --trace`
    peak: DevicePeak | None = None  # what % of peak and each layer's `bound` refer to

    def layer(self, name: str) -> LayerStats:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def attention_layers(self) -> list[LayerStats]:
        return [layer for layer in self.layers if layer.attention is not None]


# --- Budgets and plans (tune writes them; apply reads them) ---------------------------------

OBJECTIVES: tuple[str, ...] = ("latency", "throughput", "energy", "memory")
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
PRECISION_MODES: tuple[str, ...] = ("autocast", "cast")
DATA_PARALLEL_MODES: tuple[str, ...] = ("fsdp", "ddp")
ALL_LAYERS = "*"  # a key of PlanChoices.prune_heads / kv_heads that stands for every attention layer


@dataclass
class Budget:
    """Limits a plan must respect. None means "no limit"; fractions are 0.01 for 1%."""

    memory_bytes: int | None = None
    latency_ms: float | None = None
    energy_j: float | None = None
    gpus: int = 1
    max_error: float | None = None  # max relative output error vs the fp32 reference
    max_quality_loss: float | None = None  # relative output change allowed for head changes
    headroom: float = 0.0  # share of the memory budget held back for bursts and fragmentation

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "latency_ms", "energy_j", "max_error", "max_quality_loss"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise UsageError(f"budget {name} must be positive, got {value!r}")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise UsageError(f"--gpus must be a positive integer, got {self.gpus!r}")
        if not 0.0 <= self.headroom < 1.0:
            raise UsageError(f"--headroom must be in [0%, 100%), got {self.headroom!r}")

    def limits(self) -> dict[str, float]:
        """The optimizer's constraints: metric -> limit, the memory one net of the headroom."""
        limits: dict[str, float] = {}
        if self.memory_bytes is not None:
            limits["memory_bytes"] = self.memory_bytes * (1.0 - self.headroom)
        if self.latency_ms is not None:
            limits["latency_ms"] = float(self.latency_ms)
        if self.energy_j is not None:
            limits["energy_j"] = float(self.energy_j)
        return limits


@dataclass
class PlanChoices:
    """What a plan changes. Every default leaves the model as it is.

    Attention layers are named by module path, as in a Profile's `layers` (the module that runs
    the attention op); `"*"` stands for every attention layer.
    """

    dtype: str = "fp32"  # fp32 | tf32 | bf16 | fp16
    precision: str = "autocast"  # autocast (sensitive ops stay fp32) | cast (weights cast, norms kept fp32)
    backend: str = "auto"  # one of BACKENDS
    batch_size: int | None = None  # micro-batch size; None keeps the workload's
    threads: int = 0  # CPU threads; 0 keeps the process's
    prune_heads: dict[str, int | list[int]] = field(default_factory=dict)  # count (by importance) or indices
    kv_heads: dict[str, int] = field(default_factory=dict)  # K/V heads after GQA conversion
    checkpoint: list[str] = field(default_factory=list)  # module paths recomputed in backward
    tensor_parallel: int = 1
    data_parallel: int = 1
    data_parallel_mode: str = "fsdp"  # fsdp (FSDP2 fully_shard) | ddp
    pipeline_stages: int = 1

    def __post_init__(self) -> None:
        if self.dtype not in PRECISIONS:
            raise UsageError(f"plan dtype must be one of {', '.join(PRECISIONS)}, got {self.dtype!r}")
        if self.precision not in PRECISION_MODES:
            raise UsageError(
                f"plan precision must be one of {', '.join(PRECISION_MODES)}, got {self.precision!r}"
            )
        if self.backend not in BACKENDS:
            raise UsageError(f"plan backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.data_parallel_mode not in DATA_PARALLEL_MODES:
            raise UsageError(
                f"plan data_parallel_mode must be one of {', '.join(DATA_PARALLEL_MODES)}, "
                f"got {self.data_parallel_mode!r}"
            )
        for name in ("tensor_parallel", "data_parallel", "pipeline_stages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"plan {name} must be a positive integer, got {value!r}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise UsageError(f"plan threads must be a non-negative integer, got {self.threads!r}")
        for layer, kv in self.kv_heads.items():
            if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1:
                raise UsageError(f"plan kv_heads[{layer!r}] must be a positive integer, got {kv!r}")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.data_parallel * self.pipeline_stages

    def changes_heads(self) -> bool:
        return bool(self.prune_heads or self.kv_heads)


@dataclass
class PlanFigures:
    """Predicted or measured figures of one plan (or of the baseline), for one step."""

    latency_ms: float | None = None
    memory_bytes: float | None = None  # peak memory per device
    energy_j: float | None = None
    throughput: float | None = None  # samples per second
    latency_sigma_ms: float | None = None  # one standard deviation, predictions only
    memory_sigma_bytes: float | None = None
    max_error: float | None = None  # max relative output error vs the fp32 reference
    quality_loss: float | None = None  # relative output change caused by head changes
    finite: bool | None = None  # outputs free of inf/nan (measured only)


@dataclass
class Plan:
    """A tuned configuration for one workload: the choices, and the figures that justify them."""

    workload: WorkloadInfo  # the plan applies only to a workload with this fingerprint
    settings: Settings  # the settings the fingerprint and the figures were taken with
    device: str
    objective: str
    choices: PlanChoices
    budgets: Budget = field(default_factory=Budget)
    predicted: PlanFigures = field(default_factory=PlanFigures)
    measured: PlanFigures | None = None  # None: not verified on this machine
    baseline: PlanFigures = field(default_factory=PlanFigures)
    verified: bool = False
    knobs: list[str] = field(default_factory=list)  # the knobs the optimizer was allowed to change
    solver: str = ""  # milp, enumeration, or a heuristic (named as such)
    machine_fingerprint: str = ""
    verification_profile: str | None = None  # the applied plan's profile, written next to the plan
    created: str = ""
    attnprof_version: str = ""
    notes: list[str] = field(default_factory=list)
    frontier: list[ParetoPoint] = field(default_factory=list)  # predicted trade-offs tune considered
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UsageError(f"plan objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")


# --- Applying plans (apply writes them) ------------------------------------------------------


@dataclass
class SiteChange:
    """One attention layer as found, and as the plan left it."""

    name: str
    type: str
    family: str  # mha | llama | gpt2 | bert | generic
    num_heads: int
    num_kv_heads: int
    head_dim: int
    new_num_heads: int
    new_num_kv_heads: int
    pruned_heads: list[int] = field(default_factory=list)
    head_importance: list[float] = field(default_factory=list)


@dataclass
class NotApplied:
    """A part of a plan that could not be applied to a module, and why."""

    module: str
    type: str
    what: str  # the choice: prune_heads, kv_heads, backend, tensor_parallel, ...
    reason: str


@dataclass
class Verification:
    """The applied model compared with the unmodified one on the example inputs.

    Relative error is max|applied - reference| / max|reference| (elementwise ratios blow up
    near zero); KL is the mean over positions of KL(reference || applied) on softmaxed logits.
    """

    max_abs_error: float
    max_rel_error: float
    logit_kl: float | None
    finite: bool
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed, one line each
    measured_latency_ms: float | None = None
    predicted_latency_ms: float | None = None
    profile_path: str | None = None


@dataclass
class ApplyReport:
    """What applying a plan did to a model."""

    sites: list[SiteChange] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)  # one line per choice that took effect
    not_applied: list[NotApplied] = field(default_factory=list)
    verification: Verification | None = None
    rank: int = 0
    world_size: int = 1


# --- GPU instrumentation: NVML telemetry, kernel trace, calibration, monitoring -----------------


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
class Calibration:
    """The calibration file of one machine (see hardware.calibration_path)."""

    machine_fingerprint: str
    devices: dict[str, DeviceCalibration] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


@dataclass
class GpuInfo:
    nvml_index: int
    uuid: str
    name: str
    memory_total_bytes: int | None
    mig: bool = False


@dataclass
class MonitorRecording:
    """Samples recorded by `attnprof monitor --record FILE`."""

    created: str
    interval_s: float
    gpus: list[GpuInfo]
    samples: list[GpuSample]
    command: list[str] = field(default_factory=list)
    pid: int | None = None
    exit_code: int | None = None
    schema_version: int = SCHEMA_VERSION


CheckStatus = Literal["pass", "improved", "regression", "changed", "inconclusive", "info"]
MetricKind = Literal["time", "memory", "exact"]
Verdict = Literal["pass", "regression", "inconclusive"]

FAILING_STATUSES: tuple[str, ...] = ("regression", "changed")


@dataclass
class MetricCheck:
    """One metric of a check: baseline against current, and what that means.

    `statistic` is the time statistic compared (median, mean, p10, p90), "memory", or "exact".
    `change` is current / baseline - 1; `threshold` the relative increase allowed (None: reported,
    not gated); `noise` the pooled robust spread of one sample relative to its median.
    """

    metric: str
    kind: MetricKind
    statistic: str
    status: CheckStatus
    baseline: int | float | str | None
    current: int | float | str | None
    unit: str = ""
    layer: str | None = None  # module path when the metric belongs to one module
    change: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    noise: float | None = None
    baseline_samples: int = 0
    current_samples: int = 0
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILING_STATUSES


@dataclass
class CheckResult:
    """The verdict of `attnprof check` / `attnprof compare` and every metric behind it."""

    verdict: Verdict
    baseline: str  # where the baseline came from (a path)
    current: str  # where the current profile came from (a path, or "this run")
    workload: str
    baseline_commit: str | None
    current_commit: str | None
    alpha: float
    thresholds: list[str]
    metrics: list[MetricCheck]
    machine_differences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # How much slower (>1) the machine ran the reference probe than when the baseline was
    # recorded; timings were compared relative to it. None: no probe in one of the profiles.
    drift_factor: float | None = None
    schema_version: int = SCHEMA_VERSION

    def failures(self) -> list[MetricCheck]:
        return [m for m in self.metrics if m.failed]

    def inconclusive(self) -> list[MetricCheck]:
        return [m for m in self.metrics if m.status == "inconclusive"]

    def culprit_layers(self) -> list[str]:
        """Innermost modules with a failing metric: a slower module also slows its parents."""
        failing = list(dict.fromkeys(m.layer for m in self.failures() if m.layer is not None))
        return [layer for layer in failing if not any(_is_inside(other, layer) for other in failing)]


def _is_inside(inner: str, outer: str) -> bool:
    """Whether module path `inner` lies strictly inside `outer` ("" is the whole model)."""
    return inner != outer and (outer == "" or inner.startswith(outer + "."))


FindingStatus = Literal["ok", "info", "warn", "problem"]


@dataclass
class Finding:
    """One fact `attnprof doctor` established; a `warn` or `problem` says how to fix it."""

    section: str  # torch, gpu, nvml, cupti, sdpa, transformers, peaks, ...
    name: str
    status: FindingStatus
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    """What this environment can do, as gathered by `attnprof.doctor.gather`."""

    findings: list[Finding]
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status in ("warn", "problem")]


@dataclass
class ParetoPoint:
    """One plan on tune's Pareto frontier (or the chosen plan), with its predicted figures."""

    label: str  # the knob values, as tune describes them
    totals: dict[str, float]  # predicted latency_ms, memory_bytes, energy_j ... of one step
    feasible: bool  # within every budget
    chosen: bool = False  # the plan tune chose (by measurement among the best predicted)
    on_frontier: bool = True  # False for a chosen plan that measurement picked off the frontier


# ---------------------------------------------------------------------------------------------
# Sweep measurements and the fitted cost model

MeasurementStatus = Literal["ok", "oom", "non_finite", "error"]
CostKind = Literal["attention", "mlp", "other"]
COST_KINDS: tuple[str, ...] = ("attention", "mlp", "other")


@dataclass
class KindFeatures:
    """Physical cost drivers of one layer, or of all layers of one cost kind in a step."""

    launches: float = 0.0  # operator calls: each is at least one kernel launch
    flops: float = 0.0
    bytes: float = 0.0
    attention_pairs: float = 0.0  # (query, key) pairs scored: the S² attention term

    def plus(self, other: KindFeatures) -> KindFeatures:
        return KindFeatures(
            launches=self.launches + other.launches,
            flops=self.flops + other.flops,
            bytes=self.bytes + other.bytes,
            attention_pairs=self.attention_pairs + other.attention_pairs,
        )


@dataclass
class MemoryFeatures:
    """Drivers of a step's peak memory."""

    param_bytes: float
    activation_bytes: float  # tokens x element size: activations grow with it
    attention_matrix_bytes: float  # score matrices a materialising backend holds; 0 for fused kernels


@dataclass
class LayerFeatures:
    name: str
    kind: str  # cost kind: attention, mlp or other
    features: KindFeatures


@dataclass
class Measurement:
    """One measured configuration of a sweep, or the reason it could not run."""

    key: str
    config: dict[str, int | str]
    status: MeasurementStatus
    created: str
    workload_fingerprint: str
    machine_fingerprint: str
    reason: str = ""
    time_ms: TimeStats | None = None
    kind_time_ms: dict[str, float] = field(default_factory=dict)  # median self time per cost kind
    kind_features: dict[str, KindFeatures] = field(default_factory=dict)
    peak_memory_bytes: int | None = None
    memory_features: MemoryFeatures | None = None
    layers: list[LayerFeatures] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def feasible(self) -> bool:
        return self.status == "ok"


@dataclass
class LinearFit:
    """target ≈ Σ coefficient·feature, with the coefficients' covariance for uncertainty."""

    features: list[str]
    coefficients: list[float]
    covariance: list[list[float]]
    relative_std: float  # spread of the fit's relative residuals
    points: int
    pooled: bool = False  # fitted on every group's points: this group had too few of its own


@dataclass
class GroupInfo:
    """What was measured for one combination of choice knobs."""

    config: dict[str, int | str]
    points: int
    ranges: dict[str, list[int]]  # shape knob -> [lowest, highest] measured


@dataclass
class LayerLaw:
    """One layer's features as exact polynomials of batch size and sequence length."""

    name: str
    kind: str
    coefficients: dict[str, list[float]]  # feature -> coefficients over FeatureLaw.basis


@dataclass
class FeatureLaw:
    """Features of any shape of one choice combination, fitted on the measured shapes, so a
    prediction needs no run of the model. FLOPs, bytes and pairs of a transformer are
    polynomials in (B, S); `max_relative_residual` shows how exactly the law reproduced them."""

    basis: list[str]
    layers: list[LayerLaw]
    memory: dict[str, list[float]]  # MemoryFeatures field -> coefficients
    max_relative_residual: float


@dataclass
class InfeasiblePoint:
    config: dict[str, int | str]
    status: MeasurementStatus
    reason: str = ""


@dataclass
class ValidationPoint:
    key: str
    config: dict[str, int | str]
    measured_ms: float
    predicted_ms: float
    measured_memory_bytes: float
    predicted_memory_bytes: float


@dataclass
class Validation:
    """Cross-validated error of the cost model on the sweep's own measurements."""

    method: str
    folds: int
    points: int
    latency_mape: float
    memory_mape: float
    spearman: float | None
    top1_agreement: float | None  # share of shapes whose fastest choice the model picks
    top1_decisions: int
    details: list[ValidationPoint] = field(default_factory=list)


@dataclass
class CostModel:
    """Fitted latency (per cost kind) and memory models of one workload on one machine."""

    created: str
    target: str
    workload_fingerprint: str
    machine: MachineInfo
    latency: dict[str, dict[str, LinearFit]]  # cost kind -> group key -> fit
    memory: dict[str, LinearFit]  # group key -> fit
    groups: dict[str, GroupInfo]
    measurements: int
    infeasible: list[InfeasiblePoint] = field(default_factory=list)
    feature_laws: dict[str, FeatureLaw] = field(default_factory=dict)  # group key -> law
    validation: Validation | None = None
    schema_version: int = SCHEMA_VERSION


@dataclass
class LayerPrediction:
    name: str
    kind: str
    time_ms: float
    time_sigma_ms: float


@dataclass
class Prediction:
    """Predicted step latency and peak memory of one configuration."""

    config: dict[str, int | str]
    time_ms: float
    time_sigma_ms: float
    memory_bytes: float
    memory_sigma_bytes: float
    kind_time_ms: dict[str, float]
    layers: list[LayerPrediction] = field(default_factory=list)
    extrapolated: bool = False
    warnings: list[str] = field(default_factory=list)
    feasible: bool = True
    infeasible_reason: str = ""
