"""The Profile record written by `attnprof profile`, and its layers and totals."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from attnprof.machine import MachineInfo
from attnprof.measure.records import AttentionInfo, Bound, CompileStats, DevicePeak, DeviceTelemetry, TraceSummary
from attnprof.settings import Settings
from attnprof.store import DEFAULT_PROFILE_DIR, SCHEMA_VERSION, read_record, slug
from attnprof.targets.records import WorkloadInfo

LayerKind = Literal["attention", "mlp", "norm", "embedding", "other"]
BLOCK_KINDS: tuple[LayerKind, ...] = ("attention", "mlp")  # the blocks a module's children belong to
_ATTENTION_WORDS = ("attention", "attn")

IMBALANCED_ABOVE = 1.10  # a slowest rank more than 10% above the mean step is called imbalanced


@dataclass
class TimeStats:
    """Spread of repeated timings in milliseconds; `samples` are the raw per-repeat values.

    mean, stddev (of the samples, n - 1), min and max are named as pytest-benchmark names them;
    files written before they were stored get them from their samples when read."""

    median: float
    p10: float
    p90: float
    samples: list[float] = field(default_factory=list)
    mean: float | None = None
    stddev: float | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        finite = [s for s in self.samples if math.isfinite(s)]
        if self.mean is None and finite:
            self.mean = math.fsum(finite) / len(finite)
            self.stddev = statistics.stdev(finite) if len(finite) > 1 else 0.0
            self.min, self.max = min(finite), max(finite)

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
    recompute_flops: int = 0  # forward run again in backward (activation checkpointing)
    # Under torch.distributed: this module's own collectives (not its children's), forward and
    # backward, median ms per step; `params`, `flops` and `bytes` are this rank's share.
    collective_ms: float | None = None


@dataclass
class UncountedOp:
    """An op that took time in the counting step but has no FLOP formula (measure/flop_formulas.py):
    its FLOPs, if it has any, are missing from the profile's totals."""

    op: str  # qualified name, e.g. "aten::_fft_r2c"
    calls: int  # in one step
    time_ms: float | None  # its summed duration in the counting step; None in a dry run
    share: float | None  # of the counting step's total op time; None in a dry run


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
    recompute_flops: int = 0  # activation checkpointing's forwards run again in backward
    # Coverage: ops without a FLOP formula, most time first, and their summed share of op time.
    uncounted_ops: list[UncountedOp] = field(default_factory=list)
    uncounted_share: float | None = 0.0
    collective_ms: float | None = None  # under torch.distributed: all of this rank's collectives per step


@dataclass
class RankInfo:
    """Where a profile was taken among the ranks of one torch.distributed run.

    A rank's `Totals` and `LayerStats` are its own: parameters and bytes it holds (a sharded
    parameter by its local shard), FLOPs it computes. `global_params` is the whole model."""

    rank: int
    world_size: int
    backend: str  # gloo, nccl
    mesh: list[int]  # device-mesh shape of the sharded parameters; [world_size] when nothing is sharded
    mesh_dims: list[str]  # its dimension names, where the plan gave them
    plan: str | None  # the sharding this rank ran, e.g. "tensor_parallel=2"; None: the whole model on each rank
    global_params: int
    collective_calls: dict[str, int] = field(default_factory=dict)  # per collective, in one step
    pipeline_stage: int | None = None  # the pipeline stage this rank runs; None outside a pipeline
    # Its stage's own forward over a step's micro-batches (median of the hooked steps): the
    # rank's compute, without the waits for the other stages a whole pipeline step holds.
    stage_compute_ms: float | None = None


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
    compilation: CompileStats | None = None  # torch.compile's compiles in this run (None: nothing compiled)
    rank: RankInfo | None = None  # under torch.distributed (torchrun)

    def layer(self, name: str) -> LayerStats:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def attention_layers(self) -> list[LayerStats]:
        return [layer for layer in self.layers if layer.attention is not None]


def block_kind(name: str, by_name: Mapping[str, LayerStats]) -> LayerKind:
    """The kind of the block a module is part of, the one classification every command shows: an
    attention or MLP module, or the nearest one around it (a q_proj is attention, an MLP's Linear
    mlp); otherwise the module's own kind (`LayerStats.kind`: what the module itself is). A module
    the profile calls `other` whose class or name says attention (attention code whose ops the
    accountant does not recognise as attention) is attention too."""
    path = name
    while True:
        layer = by_name.get(path)
        if layer is not None:
            if layer.kind in BLOCK_KINDS:
                return layer.kind
            words = f"{layer.type} {path.rsplit('.', 1)[-1]}".lower()
            if layer.kind == "other" and any(word in words for word in _ATTENTION_WORDS):
                return "attention"
        if not path:
            own = by_name.get(name)
            return own.kind if own is not None else "other"
        path = path.rpartition(".")[0]


@dataclass
class LayerAcrossRanks:
    """One module's time on every rank (None where a rank does not run it, e.g. another stage)."""

    name: str
    time_ms: list[float | None]  # forward (+ backward in train) median
    collective_ms: list[float | None]  # inside the module and its children, like time_ms


@dataclass
class DistributedProfile:
    """One torchrun run of `attnprof profile`: every rank's profile, in rank order, in one file."""

    attnprof_version: str
    created: str
    ranks: list[Profile]
    schema_version: int = SCHEMA_VERSION

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def step_ms(self) -> list[float | None]:
        return [p.totals.time_ms.median if p.totals.time_ms else None for p in self.ranks]

    def pipelined(self) -> bool:
        """Every rank ran one stage of a pipeline."""
        return bool(self.ranks) and all(p.rank is not None and p.rank.pipeline_stage is not None for p in self.ranks)

    def load_ms(self) -> list[float | None]:
        """What the balance compares per rank: each stage's own compute for a pipeline (its step
        is the whole pipeline's on every rank), otherwise each rank's step."""
        if self.pipelined():
            return [p.rank.stage_compute_ms if p.rank is not None else None for p in self.ranks]
        return self.step_ms()

    def slowest_rank(self) -> int | None:
        times = [(t, rank) for rank, t in enumerate(self.load_ms()) if t is not None]
        return max(times)[1] if times else None

    def imbalance(self) -> float | None:
        """Slowest rank's load over the mean load (`load_ms`): 1.0 is perfectly balanced."""
        times = [t for t in self.load_ms() if t is not None]
        mean = sum(times) / len(times) if times else 0.0
        return max(times) / mean if mean > 0 else None

    def imbalanced(self) -> bool:
        imbalance = self.imbalance()
        return imbalance is not None and imbalance > IMBALANCED_ABOVE

    def layers(self) -> list[LayerAcrossRanks]:
        """Every module any rank ran, in first-seen order over the ranks."""
        rows: dict[str, LayerAcrossRanks] = {}
        for index, profile in enumerate(self.ranks):
            inclusive = _inclusive_collectives(profile.layers)
            for layer in profile.layers:
                row = rows.setdefault(
                    layer.name, LayerAcrossRanks(layer.name, [None] * self.world_size, [None] * self.world_size)
                )
                row.time_ms[index] = _layer_ms(layer)
                row.collective_ms[index] = inclusive.get(layer.name)
        return list(rows.values())


def _inclusive_collectives(layers: list[LayerStats]) -> dict[str, float]:
    """Each module's collectives with its children's: every module path prefix gets its share."""
    totals: dict[str, float] = {}
    for layer in layers:
        if layer.collective_ms is None:
            continue
        parts = layer.name.split(".") if layer.name else []
        for cut in range(len(parts) + 1):
            prefix = ".".join(parts[:cut])
            totals[prefix] = totals.get(prefix, 0.0) + layer.collective_ms
    return totals


def _layer_ms(layer: LayerStats) -> float | None:
    if layer.time_ms is None:
        return None
    return layer.time_ms.median + (layer.backward_time_ms.median if layer.backward_time_ms else 0.0)


def load_profile(path: Path) -> Profile:
    return read_record(path, Profile)


def profile_path(profile: Profile, folder: Path = DEFAULT_PROFILE_DIR) -> Path:
    """profiles/<workload name>-<fingerprint>/<machine>-<timestamp>.json"""
    stamp = profile.created.replace(":", "").replace("-", "")
    workload = f"{slug(profile.workload.name or profile.workload.target)}-{profile.workload.fingerprint}"
    return Path(folder) / workload / f"profile-{profile.machine.fingerprint()}-{stamp}.json"


def distributed_profile_path(merged: DistributedProfile, folder: Path = DEFAULT_PROFILE_DIR) -> Path:
    """Beside single-process profiles of the workload, named by its world size."""
    single = profile_path(merged.ranks[0], folder)
    return single.with_name(f"{single.stem}-ranks{merged.world_size}.json")
