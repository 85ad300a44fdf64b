"""Sweep measurements and the fitted cost model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from attnprof.machine import MachineInfo
from attnprof.profiling.records import TimeStats
from attnprof.store import SCHEMA_VERSION

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


# A cross-validated error above this (in %) means the model predicts nothing useful: `fit` says
# so and exits 1 (the performance targets, far below it, are only reported as met or missed).
UNUSABLE_MAPE = 50.0


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

    def unusable_reason(self) -> str | None:
        """Why the model's own cross-validation rejects it; None when it is usable."""
        v = self.validation
        if v is None:
            return f"it could not be cross-validated ({self.measurements} measurements)"
        errors = [(name, mape) for name, mape in (("latency", v.latency_mape), ("memory", v.memory_mape))
                  if not mape <= UNUSABLE_MAPE]  # NaN too: nothing could be predicted
        if not errors:
            return None
        shown = " and ".join(f"{name} {mape:,.0f}%" for name, mape in errors)
        return (f"its cross-validated error ({shown} MAPE over {v.points} predictions from {self.measurements} "
                f"measurements) is above {UNUSABLE_MAPE:.0f}%")


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
