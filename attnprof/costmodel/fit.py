"""Fit, predict and cross-validate the latency and memory cost model.

Latency is modelled per cost kind (attention, mlp, other) as a non-negative combination of
physical features — operator launches, FLOPs, bytes moved and, for attention, the S² count of
(query, key) pairs — with one coefficient set per combination of choice knobs (dtype, threads,
and for attention the SDPA backend, which changes nothing else). Peak memory is parameters +
activations (tokens x element size) + the score matrices a materialising backend holds.

Coefficients minimise the *relative* error with a robust loss (scipy `least_squares`, soft-L1,
non-negative bounds, started from NNLS), because the tuner compares configurations whose
latencies differ by orders of magnitude and a few noisy timings on a shared machine must not
drag the fit. The coefficient covariance gives each prediction an uncertainty.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from attnprof import backends
from attnprof.costmodel.knobs import CHOICE_KNOBS, SHAPE_KNOBS, ConfigValue, choice_key, latency_group, memory_group
from attnprof.costmodel.records import (
    COST_KINDS,
    CostModel,
    FeatureLaw,
    GroupInfo,
    InfeasiblePoint,
    KindFeatures,
    LayerLaw,
    LayerPrediction,
    LinearFit,
    Measurement,
    MemoryFeatures,
    Prediction,
    Validation,
    ValidationPoint,
)
from attnprof.errors import UsageError
from attnprof.machine import MachineInfo
from attnprof.profiling.records import LayerStats, block_kind
from attnprof.settings import Settings
from attnprof.store import timestamp

LATENCY_FEATURES: dict[str, tuple[str, ...]] = {
    "attention": ("launches", "flops", "bytes", "attention_pairs"),
    "mlp": ("launches", "flops", "bytes"),
    "other": ("launches", "flops", "bytes"),
}
# Parameters are known exactly and added as they are; the fit covers the activations.
MEMORY_FEATURES: tuple[str, ...] = ("activation_bytes", "attention_matrix_bytes", "constant")
# A residual this large (relative) counts as an outlier for the robust loss.
ROBUST_SCALE = 0.05
# The smallest share of the step attributed to a kind, so relative errors stay defined.
MIN_KIND_SHARE = 1e-3


@dataclass
class PointFeatures:
    """Everything the model needs to predict one configuration: per-kind and per-layer features."""

    kinds: dict[str, KindFeatures]
    memory: MemoryFeatures
    layers: list[tuple[str, str, KindFeatures]] = field(default_factory=list)  # (name, kind, features)


def _latency_row(kind: str, features: KindFeatures) -> np.ndarray:
    return np.array([float(getattr(features, name)) for name in LATENCY_FEATURES[kind]])


def _memory_row(features: MemoryFeatures) -> np.ndarray:
    return np.array([features.activation_bytes, features.attention_matrix_bytes, 1.0], dtype=float)


def kind_targets(measurement: Measurement) -> dict[str, float]:
    """Measured milliseconds per cost kind, floored so relative errors stay defined."""
    assert measurement.time_ms is not None
    floor = MIN_KIND_SHARE * measurement.time_ms.median
    return {kind: max(measurement.kind_time_ms.get(kind, 0.0), floor) for kind in COST_KINDS}


def split_step_time(step_ms: float, layers: Sequence[LayerStats]) -> dict[str, float]:
    """The plain step's time split over cost kinds in proportion to the layers' self times.

    Per-layer times come from hooked steps, which run slower than plain ones, and in train mode
    they cover the forward pass only: the shares, not the absolute times, carry over."""
    by_name = {layer.name: layer for layer in layers}
    self_ms = dict.fromkeys(COST_KINDS, 0.0)
    for layer in layers:
        self_ms[cost_kind(layer.name, by_name)] += max(layer.self_time_ms or 0.0, 0.0)
    measured = sum(self_ms.values())
    if measured <= 0:
        return {"attention": 0.0, "mlp": 0.0, "other": step_ms}
    return {kind: step_ms * value / measured for kind, value in self_ms.items()}


def cost_kind(name: str, by_name: Mapping[str, LayerStats]) -> str:
    """The cost group of a layer: the block it is part of (profiling.records.block_kind), with
    norms and embeddings outside attention and MLP blocks priced as other."""
    kind = block_kind(name, by_name)
    return kind if kind in COST_KINDS else "other"


def _outermost_attention(name: str, by_name: Mapping[str, LayerStats]) -> bool:
    parent = name.rpartition(".")[0] if name else None
    return parent is None or cost_kind(parent, by_name) != "attention"


def step_features(
    layers: Sequence[LayerStats],
    launches: Mapping[str, int],
    settings: Settings,
    param_bytes: int,
    element_size: int,
) -> PointFeatures:
    """Cost drivers of one step from its per-layer accounting: per layer, per cost kind, memory.

    `launches` maps a module path to the operators its own code ran (each at least one kernel
    launch); `element_size` is the bytes of one element of the compute dtype."""
    by_name = {layer.name: layer for layer in layers}
    kinds = {kind: KindFeatures() for kind in COST_KINDS}
    rows: list[tuple[str, str, KindFeatures]] = []
    matrices: list[float] = []
    # Attention written as matmul-softmax-matmul (or SDPA's math path) runs no op that reports
    # its heads: its S² term is then B·S² per attention block, and its scores are materialised.
    recognised = any(layer.attention is not None for layer in layers)
    unit_pairs = float(settings.batch_size * settings.seq_len * settings.seq_len)
    for layer in layers:
        kind = cost_kind(layer.name, by_name)
        pairs = 0.0
        if layer.attention is not None and layer.attention.head_dim > 0:
            pairs = layer.attention.flops_dense / (4 * layer.attention.head_dim)
            if backends.materialises_scores(layer.attention.backend):
                matrices.append(pairs * element_size)
        elif not recognised and kind == "attention" and _outermost_attention(layer.name, by_name):
            pairs = unit_pairs
            matrices.append(pairs * element_size)
        features = KindFeatures(
            launches=float(launches.get(layer.name, 0)),
            flops=float(layer.flops + layer.backward_flops),
            bytes=float(layer.bytes),
            attention_pairs=pairs,
        )
        kinds[kind] = kinds[kind].plus(features)
        rows.append((layer.name, kind, features))
    # Inference frees each layer's scores before the next: one matrix is live at a time;
    # training keeps every layer's for backward.
    matrix_bytes = sum(matrices) if settings.mode == "train" else max(matrices, default=0.0)
    memory = MemoryFeatures(
        param_bytes=float(param_bytes),
        activation_bytes=float(settings.batch_size * settings.seq_len * element_size),
        attention_matrix_bytes=matrix_bytes,
    )
    return PointFeatures(kinds=kinds, memory=memory, layers=rows)


# Per-layer FLOPs, bytes and pairs of a transformer step are exact polynomials in these terms
# (rotary tables and masks grow with S or S² alone; weights are constant).
LAW_BASIS: tuple[str, ...] = ("1", "B", "S", "B*S", "S^2", "B*S^2")
# Batch 1 takes other kernel paths in some models (a few copies fewer), so measured features
# may deviate from the polynomial by a few percent; beyond this a prediction says so.
LAW_TOLERANCE = 0.05
_KIND_FEATURE_NAMES: tuple[str, ...] = ("launches", "flops", "bytes", "attention_pairs")
_MEMORY_FEATURE_NAMES: tuple[str, ...] = ("param_bytes", "activation_bytes", "attention_matrix_bytes")


def _law_basis(batch: int, seq: int) -> np.ndarray:
    b, s = float(batch), float(seq)
    return np.array([1.0, b, s, b * s, s * s, b * s * s])


def fit_feature_law(measurements: Sequence[Measurement]) -> FeatureLaw:
    """Per-layer and memory features of one choice combination as polynomials of (B, S)."""
    basis = np.array([_law_basis(int(m.config["batch_size"]), int(m.config["seq_len"])) for m in measurements])
    scale = np.abs(basis).max(axis=0)
    scaled = basis / scale
    worst = 0.0

    def solve(values: np.ndarray) -> list[float]:
        nonlocal worst
        coefficients, *_ = np.linalg.lstsq(scaled, values, rcond=None)
        fitted = scaled @ coefficients
        size = max(float(np.abs(values).max()), 1.0)
        worst = max(worst, float(np.abs(fitted - values).max()) / size)
        return (coefficients / scale).tolist()

    names: dict[str, str] = {}
    for m in measurements:
        for row in m.layers:
            names.setdefault(row.name, row.kind)
    layers = []
    for name, kind in names.items():
        per_point = [{row.name: row.features for row in m.layers}.get(name, KindFeatures()) for m in measurements]
        layers.append(
            LayerLaw(
                name=name,
                kind=kind,
                coefficients={
                    feature: solve(np.array([float(getattr(f, feature)) for f in per_point]))
                    for feature in _KIND_FEATURE_NAMES
                },
            )
        )
    memory = {
        feature: solve(np.array([float(getattr(m.memory_features, feature)) for m in measurements]))
        for feature in _MEMORY_FEATURE_NAMES
    }
    return FeatureLaw(basis=list(LAW_BASIS), layers=layers, memory=memory, max_relative_residual=worst)


def features_from_law(law: FeatureLaw, batch: int, seq: int) -> PointFeatures:
    """The features a shape would have, by the law: no run of the model needed."""
    terms = _law_basis(batch, seq)

    def value(coefficients: list[float]) -> float:
        return max(float(terms @ np.asarray(coefficients)), 0.0)

    kinds = {kind: KindFeatures() for kind in COST_KINDS}
    rows = []
    for layer in law.layers:
        features = KindFeatures(**{name: value(c) for name, c in layer.coefficients.items()})
        kinds[layer.kind] = kinds[layer.kind].plus(features)
        rows.append((layer.name, layer.kind, features))
    memory = MemoryFeatures(**{name: value(c) for name, c in law.memory.items()})
    return PointFeatures(kinds=kinds, memory=memory, layers=rows)


def fit_linear(rows: np.ndarray, targets: np.ndarray, names: Sequence[str], pooled: bool = False) -> LinearFit:
    """Non-negative robust fit of targets ≈ rows @ coefficients, minimising relative error."""
    rows = np.asarray(rows, dtype=float)
    targets = np.asarray(targets, dtype=float)
    count, width = rows.shape
    if count == 0:
        raise UsageError("cannot fit a cost model without measurements")
    if np.any(targets <= 0) or not np.all(np.isfinite(targets)) or not np.all(np.isfinite(rows)):
        raise UsageError("cost model targets must be positive and features finite")
    # Scale columns to comparable size (FLOPs ~1e9, launches ~1e2) so the solver is well conditioned.
    scale = np.abs(rows).max(axis=0)
    scale[scale == 0] = 1.0
    design = rows / scale / targets[:, None]
    ones = np.ones(count)
    start, _ = optimize.nnls(design, ones)
    result = optimize.least_squares(
        lambda c: design @ c - ones,
        start,
        jac=lambda c: design,
        bounds=(0.0, np.inf),
        loss="soft_l1",
        f_scale=ROBUST_SCALE,
    )
    scaled = np.where(result.x > 1e-12 * max(result.x.max(), 1e-300), result.x, 0.0)
    residuals = design @ scaled - ones
    active = scaled > 0
    dof = max(count - int(active.sum()), 1)
    variance = float(residuals @ residuals) / dof
    covariance = np.zeros((width, width))
    if active.any():
        block = design[:, active]
        covariance[np.ix_(active, active)] = variance * np.linalg.pinv(block.T @ block)
    return LinearFit(
        features=list(names),
        coefficients=(scaled / scale).tolist(),
        covariance=(covariance / np.outer(scale, scale)).tolist(),
        relative_std=math.sqrt(variance),
        points=count,
        pooled=pooled,
    )


def _evaluate(fit: LinearFit, row: np.ndarray) -> tuple[float, float]:
    """Prediction and its standard deviation (coefficient uncertainty plus residual noise)."""
    coefficients = np.asarray(fit.coefficients)
    value = float(row @ coefficients)
    coefficient_var = float(row @ np.asarray(fit.covariance) @ row)
    noise_var = (fit.relative_std * value) ** 2
    return value, math.sqrt(max(coefficient_var, 0.0) + noise_var)


def _min_points(width: int) -> int:
    # One more point than coefficients, so the residual spread is estimable.
    return width + 1


def _grouped_fits(samples: list[tuple[str, np.ndarray, float]], names: Sequence[str]) -> dict[str, LinearFit]:
    """One fit per group. A group with too few points for its own fit borrows the shape of a
    fit over every group's points, rescaled to its own points (bf16 may be 3x slower than fp32
    on a CPU: the shape carries over, the level does not)."""
    by_group: dict[str, list[tuple[np.ndarray, float]]] = defaultdict(list)
    for group, row, target in samples:
        by_group[group].append((row, target))
    pooled: LinearFit | None = None
    fits: dict[str, LinearFit] = {}
    for group, items in sorted(by_group.items()):
        rows, targets = np.array([r for r, _ in items]), np.array([t for _, t in items])
        if len(items) >= _min_points(len(names)):
            fits[group] = fit_linear(rows, targets, names)
            continue
        if pooled is None:
            pooled = fit_linear(
                np.array([r for _, r, _ in samples]), np.array([t for _, _, t in samples]), names, pooled=True
            )
        fits[group] = _rescaled(pooled, rows, targets)
    return fits


def _rescaled(pooled: LinearFit, rows: np.ndarray, targets: np.ndarray) -> LinearFit:
    predicted = rows @ np.asarray(pooled.coefficients)
    ratios = targets[predicted > 0] / predicted[predicted > 0]
    scale = float(np.median(ratios)) if ratios.size else 1.0
    residuals = scale * predicted / targets - 1.0
    spread = float(np.sqrt(np.mean(residuals**2))) if len(targets) > 1 else 0.0
    return LinearFit(
        features=pooled.features,
        coefficients=(scale * np.asarray(pooled.coefficients)).tolist(),
        covariance=(scale**2 * np.asarray(pooled.covariance)).tolist(),
        relative_std=max(pooled.relative_std, spread),
        points=len(targets),
        pooled=True,
    )


def fit_cost_model(
    measurements: Sequence[Measurement],
    *,
    target: str,
    workload_fingerprint: str,
    machine: MachineInfo,
) -> CostModel:
    """Fit latency and memory models on a sweep's measurements (without validation)."""
    feasible = [m for m in measurements if m.feasible and m.time_ms is not None]
    if len(feasible) < 2:
        raise UsageError(
            f"the sweep has {len(feasible)} feasible measurement(s); a cost model needs at least 2 "
            "(widen the knob ranges or raise --max-measurements)"
        )
    latency: dict[str, dict[str, LinearFit]] = {}
    for kind in COST_KINDS:
        samples = [
            (
                latency_group(kind, m.config),
                _latency_row(kind, m.kind_features.get(kind, KindFeatures())),
                kind_targets(m)[kind],
            )
            for m in feasible
        ]
        latency[kind] = _grouped_fits(samples, LATENCY_FEATURES[kind])
    memory_samples = [
        (
            memory_group(m.config),
            _memory_row(m.memory_features),
            max(float(m.peak_memory_bytes) - m.memory_features.param_bytes, 1.0),
        )
        for m in feasible
        if m.memory_features is not None and m.peak_memory_bytes
    ]
    memory = _grouped_fits(memory_samples, MEMORY_FEATURES) if memory_samples else {}
    by_group: dict[str, list[Measurement]] = defaultdict(list)
    for m in feasible:
        if m.layers and m.memory_features is not None:
            by_group[memory_group(m.config)].append(m)
    return CostModel(
        created=timestamp(),
        target=target,
        workload_fingerprint=workload_fingerprint,
        machine=machine,
        latency=latency,
        memory=memory,
        groups=_group_infos(feasible),
        measurements=len(measurements),
        infeasible=[InfeasiblePoint(m.config, m.status, m.reason) for m in measurements if not m.feasible],
        feature_laws={group: fit_feature_law(items) for group, items in sorted(by_group.items())},
    )


def _group_infos(feasible: Sequence[Measurement]) -> dict[str, GroupInfo]:
    infos: dict[str, GroupInfo] = {}
    for m in feasible:
        group = memory_group(m.config)
        choices = {k: v for k, v in m.config.items() if k not in SHAPE_KNOBS}
        info = infos.setdefault(group, GroupInfo(config=choices, points=0, ranges={}))
        info.points += 1
        for knob in SHAPE_KNOBS:
            value = int(m.config[knob])
            low, high = info.ranges.get(knob, [value, value])
            info.ranges[knob] = [min(low, value), max(high, value)]
    return infos


def predict(model: CostModel, config: Mapping[str, ConfigValue], features: PointFeatures) -> Prediction:
    """Latency and memory of `config`, per layer and in total, with uncertainty and warnings."""
    group = memory_group(config)
    info = model.groups.get(group)
    if info is None:
        measured = "; ".join(sorted(model.groups)) or "none"
        raise UsageError(
            f"the cost model has no measurements for {group or 'this configuration'} "
            f"(measured: {measured}); rerun `attnprof fit` with those knob values"
        )
    warnings: list[str] = []
    extrapolated = False
    for knob, (low, high) in sorted(info.ranges.items()):
        value = int(config[knob])
        if not low <= value <= high:
            extrapolated = True
            warnings.append(f"{knob}={value} is outside the measured range {low}..{high}: extrapolating")

    kind_time: dict[str, float] = {}
    total_var = 0.0
    fits: dict[str, LinearFit] = {}
    for kind in COST_KINDS:
        fit = model.latency[kind].get(latency_group(kind, config))
        if fit is None:
            raise UsageError(f"the cost model has no {kind} fit for {latency_group(kind, config)}")
        if fit.pooled:
            warnings.append(
                f"{kind} latency for {group} comes from a fit pooled over all groups (too few measurements of its own)"
            )
        fits[kind] = fit
        value, sigma = _evaluate(fit, _latency_row(kind, features.kinds.get(kind, KindFeatures())))
        kind_time[kind] = value
        total_var += sigma**2
    layers = []
    for name, kind, layer_features in features.layers:
        value, sigma = _evaluate(fits[kind], _latency_row(kind, layer_features))
        layers.append(LayerPrediction(name=name, kind=kind, time_ms=value, time_sigma_ms=sigma))

    memory_fit = model.memory.get(group)
    memory, memory_sigma = (math.nan, math.nan)
    if memory_fit is not None:
        activations, memory_sigma = _evaluate(memory_fit, _memory_row(features.memory))
        memory = features.memory.param_bytes + activations
    else:
        warnings.append("no memory measurements for this configuration")

    reason = _infeasible_reason(model.infeasible, config)
    return Prediction(
        config=dict(config),
        time_ms=sum(kind_time.values()),
        time_sigma_ms=math.sqrt(total_var),
        memory_bytes=memory,
        memory_sigma_bytes=memory_sigma,
        kind_time_ms=kind_time,
        layers=layers,
        extrapolated=extrapolated,
        warnings=warnings,
        feasible=not reason,
        infeasible_reason=reason,
    )


def measured_choice(model: CostModel, knob: str) -> ConfigValue | None:
    """The one value of a choice knob the model measured; None when it measured several."""
    values = {info.config[knob] for info in model.groups.values() if knob in info.config}
    if len(values) > 1:
        return None
    return values.pop() if values else None


def predict_config(model: CostModel, config: Mapping[str, ConfigValue]) -> Prediction:
    """`predict` with the features the model's feature law gives for the configuration's shape."""
    group = memory_group(config)
    law = model.feature_laws.get(group)
    if law is None:
        measured = "; ".join(sorted(model.feature_laws)) or "none"
        raise UsageError(
            f"the cost model has no measurements for {group or 'this configuration'} "
            f"(measured: {measured}); rerun `attnprof fit` with those knob values"
        )
    features = features_from_law(law, int(config["batch_size"]), int(config["seq_len"]))
    prediction = predict(model, config, features)
    if law.max_relative_residual > LAW_TOLERANCE:
        prediction.warnings.append(
            f"the features of {group} follow a polynomial in batch and sequence length only to "
            f"{100 * law.max_relative_residual:.1f}% (another code path at some shapes?)"
        )
    return prediction


def _infeasible_reason(infeasible: Sequence[InfeasiblePoint], config: Mapping[str, ConfigValue]) -> str:
    """Out of memory at a shape means out of memory at every larger shape with the same choices;
    other failures (non-finite output, errors) rule out their exact configuration only."""
    for point in infeasible:
        if choice_key(point.config) != choice_key(config):
            continue
        same = all(point.config.get(k) == config.get(k) for k in SHAPE_KNOBS)
        larger = all(int(config[k]) >= int(point.config[k]) for k in SHAPE_KNOBS)
        if same or (point.status == "oom" and larger):
            shape = ", ".join(f"{k}={point.config[k]}" for k in SHAPE_KNOBS)
            return f"{point.status} measured at {shape}" + (f" ({point.reason})" if point.reason else "")
    return ""


def measurement_features(measurement: Measurement) -> PointFeatures:
    assert measurement.memory_features is not None
    return PointFeatures(kinds=measurement.kind_features, memory=measurement.memory_features)


def decision_key(config: Mapping[str, ConfigValue]) -> str:
    """What stays fixed while a plan chooses among choice-knob values: the shape, mode, device."""
    return ",".join(f"{k}={config[k]}" for k in sorted(config) if k not in CHOICE_KNOBS)


def cross_validate(
    measurements: Sequence[Measurement],
    fit: Callable[[Sequence[Measurement]], CostModel],
    folds: int = 5,
) -> Validation:
    """k-fold cross-validation over shapes: all choices of one shape are held out together, so
    top-1 agreement asks whether the model picks the fastest choice for a shape it never saw."""
    feasible = [m for m in measurements if m.feasible and m.time_ms is not None and m.memory_features]
    decisions = sorted({decision_key(m.config) for m in feasible})
    if len(decisions) < 2:
        raise UsageError("cross-validation needs measurements of at least 2 different shapes")
    leave_one_out = len(decisions) <= 2 * folds
    fold_count = len(decisions) if leave_one_out else folds
    fold_of = {decision: index % fold_count for index, decision in enumerate(decisions)}
    details: list[ValidationPoint] = []
    for fold in range(fold_count):
        held_out = [m for m in feasible if fold_of[decision_key(m.config)] == fold]
        held_out_ids = {id(m) for m in held_out}
        training = [m for m in measurements if id(m) not in held_out_ids]
        try:
            model = fit(training)
        except UsageError:
            continue  # too few training points in this fold: its points stay unpredicted
        for m in held_out:
            if memory_group(m.config) not in model.groups:
                continue
            details.append(validation_point(m, predict(model, m.config, measurement_features(m))))
    return summarise_validation(
        details,
        method="leave-one-shape-out" if leave_one_out else f"{fold_count}-fold over shapes",
        folds=fold_count,
    )


def validation_point(measurement: Measurement, predicted: Prediction) -> ValidationPoint:
    """A measured configuration next to what the model predicted for it."""
    assert measurement.time_ms is not None and measurement.peak_memory_bytes is not None
    return ValidationPoint(
        key=measurement.key,
        config=measurement.config,
        measured_ms=measurement.time_ms.median,
        predicted_ms=predicted.time_ms,
        measured_memory_bytes=float(measurement.peak_memory_bytes),
        predicted_memory_bytes=predicted.memory_bytes,
    )


def summarise_validation(details: list[ValidationPoint], method: str, folds: int) -> Validation:
    """Error metrics of predictions against measurements (cross-validated or held out)."""
    if not details:
        raise UsageError("no configuration could be predicted for validation; measure more points")
    latency_mape = 100.0 * float(np.mean([abs(d.predicted_ms - d.measured_ms) / d.measured_ms for d in details]))
    memory_errors = [
        abs(d.predicted_memory_bytes - d.measured_memory_bytes) / d.measured_memory_bytes
        for d in details
        if math.isfinite(d.predicted_memory_bytes) and d.measured_memory_bytes > 0
    ]
    memory_mape = 100.0 * float(np.mean(memory_errors)) if memory_errors else math.nan
    spearman = None
    measured = [d.measured_ms for d in details]
    if len(details) >= 3 and len(set(measured)) > 1:
        spearman = float(stats.spearmanr(measured, [d.predicted_ms for d in details]).statistic)
    agreement, decisions = top1_agreement(details)
    return Validation(
        method=method,
        folds=folds,
        points=len(details),
        latency_mape=latency_mape,
        memory_mape=memory_mape,
        spearman=spearman if spearman is None or math.isfinite(spearman) else None,
        top1_agreement=agreement,
        top1_decisions=decisions,
        details=details,
    )


def top1_agreement(details: Sequence[ValidationPoint]) -> tuple[float | None, int]:
    """Share of shapes (with at least two choices measured) whose measured-fastest choice is
    also the predicted-fastest one, and how many such shapes there were."""
    by_decision: dict[str, list[ValidationPoint]] = defaultdict(list)
    for d in details:
        by_decision[decision_key(d.config)].append(d)
    choices = [points for points in by_decision.values() if len(points) >= 2]
    if not choices:
        return None, 0
    right = sum(
        min(points, key=lambda d: d.measured_ms) is min(points, key=lambda d: d.predicted_ms) for points in choices
    )
    return right / len(choices), len(choices)
