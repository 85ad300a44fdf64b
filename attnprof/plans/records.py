"""Budgets and plans (tune writes them, apply reads them) and what applying a plan did."""

from __future__ import annotations

from dataclasses import dataclass, field

from attnprof import backends
from attnprof.errors import UsageError
from attnprof.settings import Settings
from attnprof.store import SCHEMA_VERSION
from attnprof.targets.records import WorkloadInfo

OBJECTIVES: tuple[str, ...] = ("latency", "throughput", "energy", "memory")
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16", "fp16")
PRECISION_MODES: tuple[str, ...] = ("autocast", "cast")
DATA_PARALLEL_MODES: tuple[str, ...] = ("fsdp", "ddp")
# The bounds tune holds a plan to when its budget names none (and writes into the plan, for apply --verify).
DEFAULT_MAX_ERROR = 1e-2  # relative output error allowed for a precision change
DEFAULT_MAX_QUALITY_LOSS = 1e-2  # relative output change allowed for head changes
ALL_LAYERS = "*"  # a key of PlanChoices.prune_heads / kv_heads that stands for every attention layer


# A budget metric's value as people read it (the budget flags' own units), for the reasons a plan fails.
BUDGET_UNITS = {"memory_bytes": ("MiB", 2**20), "latency_ms": ("ms", 1.0), "energy_j": ("J", 1.0)}


def budget_value(metric: str, value: float) -> str:
    unit, scale = BUDGET_UNITS.get(metric, ("", 1.0))
    return f"{value / scale:,.2f} {unit}".rstrip()


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
    backend: str = "auto"  # one of backends.NAMES
    batch_size: int | None = None  # micro-batch size; None keeps the workload's
    threads: int = 0  # CPU threads; 0 keeps the process's
    prune_heads: dict[str, int | list[int]] = field(default_factory=dict)  # count (by importance) or indices
    kv_heads: dict[str, int] = field(default_factory=dict)  # K/V heads after GQA conversion
    checkpoint: list[str] = field(default_factory=list)  # module paths recomputed in backward
    tensor_parallel: int = 1
    data_parallel: int = 1
    data_parallel_mode: str = "fsdp"  # fsdp (FSDP2 fully_shard) | ddp
    pipeline_stages: int = 1
    pipeline_cuts: list[str] = field(default_factory=list)  # blocks beginning stages 1..; empty: balanced by count
    compile: bool = False  # transformer blocks compiled by torch.compile (inductor)

    def __post_init__(self) -> None:
        if self.dtype not in PRECISIONS:
            raise UsageError(f"plan dtype must be one of {', '.join(PRECISIONS)}, got {self.dtype!r}")
        if self.precision not in PRECISION_MODES:
            raise UsageError(
                f"plan precision must be one of {', '.join(PRECISION_MODES)}, got {self.precision!r}"
            )
        if self.backend not in backends.NAMES:
            raise UsageError(f"plan backend must be one of {', '.join(backends.NAMES)}, got {self.backend!r}")
        if self.data_parallel_mode not in DATA_PARALLEL_MODES:
            raise UsageError(
                f"plan data_parallel_mode must be one of {', '.join(DATA_PARALLEL_MODES)}, "
                f"got {self.data_parallel_mode!r}"
            )
        for name in ("tensor_parallel", "data_parallel", "pipeline_stages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"plan {name} must be a positive integer, got {value!r}")
        if self.pipeline_cuts and len(self.pipeline_cuts) != self.pipeline_stages - 1:
            raise UsageError(
                f"plan pipeline_cuts names {len(self.pipeline_cuts)} block(s); "
                f"{self.pipeline_stages} stages begin at {self.pipeline_stages - 1}"
            )
        if not isinstance(self.compile, bool):
            raise UsageError(f"plan compile must be true or false, got {self.compile!r}")
        if self.compile and self.world_size > 1:
            raise UsageError("plan compile: compiled plans run on one device (no sharding)")
        if self.compile and self.backend == "flex":
            raise UsageError("plan compile: the flex backend compiles flex_attention itself; "
                             "blocks are not compiled around it")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise UsageError(f"plan threads must be a non-negative integer, got {self.threads!r}")
        for layer, kv in self.kv_heads.items():
            if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1:
                raise UsageError(f"plan kv_heads[{layer!r}] must be a positive integer, got {kv!r}")

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.data_parallel * self.pipeline_stages

    def micro_steps(self, batch_size: int) -> int:
        """Steps of the plan in one step of `batch_size`, on each data-parallel replica: one per
        micro-batch, except in a pipeline, whose schedule runs every micro-batch in one step."""
        if self.pipeline_stages > 1:
            return 1
        return max(batch_size // self.data_parallel // (self.batch_size or batch_size), 1)

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
class TimeRatio:
    """time(baseline) / time(plan) from paired, interleaved rounds: the geometric mean of the
    per-round ratios, and its two-sided confidence interval. Above 1: the plan is faster."""

    value: float
    low: float
    high: float
    rounds: int
    confidence: float = 0.95

    @property
    def significant(self) -> bool:
        """The interval excludes 1: the two differ."""
        return self.high < 1.0 or self.low > 1.0


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
    speedup: TimeRatio | None = None  # measured against the baseline in interleaved rounds
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


@dataclass
class SiteChange:
    """One attention layer as found, and as the plan left it."""

    name: str
    type: str
    family: str  # Adapter.family of the layer's adapter (one per entry of plans.discover.ADAPTERS)
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
    measured_latency_ms: float | None = None  # a whole step: every micro-batch of the plan
    predicted_latency_ms: float | None = None
    measured_memory_bytes: float | None = None  # peak per device
    measured_energy_j: float | None = None
    micro_steps: int = 1  # micro-batches per step the measurement ran
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


@dataclass
class ParetoPoint:
    """One plan on tune's Pareto frontier (or the chosen plan), with its predicted figures."""

    label: str  # the knob values, as tune describes them
    totals: dict[str, float]  # predicted latency_ms, memory_bytes, energy_j ... of one step
    feasible: bool  # within every budget
    chosen: bool = False  # the plan tune chose (by measurement among the best predicted)
    on_frontier: bool = True  # False for a chosen plan that measurement picked off the frontier
    rejected: str | None = None  # why its measurement rejected it (None: not measured, or it passed)
