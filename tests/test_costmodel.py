"""The cost model on synthetic measurements drawn from a known cost law plus noise."""

from __future__ import annotations

import numpy as np
import pytest

from attnprof.costmodel.fit import PointFeatures, cross_validate, fit_cost_model, fit_linear, predict, top1_agreement
from attnprof.costmodel.knobs import choice_key
from attnprof.costmodel.records import CostModel, KindFeatures, Measurement, MemoryFeatures, ValidationPoint
from attnprof.errors import InputFileError, UsageError
from attnprof.profiling.records import TimeStats
from attnprof.store import from_json_dict, to_json_dict
from tests.samples import MACHINE

# A virtual 4-layer transformer, hidden 256, 8 heads of 64: its features at (B, S).
LAYERS, HIDDEN, HEADS, HEAD_DIM = 4, 256, 8, 64
# The known cost law, in ms per unit of each feature.
LAW = {
    ("attention", "fp32", "flash"): {
        "launches": 0.004,
        "flops": 2.0e-8,
        "bytes": 1.0e-7,
        "attention_pairs": 0.0,
    },
    ("attention", "fp32", "math"): {
        "launches": 0.004,
        "flops": 2.0e-8,
        "bytes": 1.0e-7,
        "attention_pairs": 3.0e-6,
    },
    ("attention", "bf16", "flash"): {
        "launches": 0.006,
        "flops": 5.0e-8,
        "bytes": 1.0e-7,
        "attention_pairs": 0.0,
    },
    ("attention", "bf16", "math"): {
        "launches": 0.006,
        "flops": 5.0e-8,
        "bytes": 1.0e-7,
        "attention_pairs": 5.0e-6,
    },
    ("mlp", "fp32"): {"launches": 0.003, "flops": 2.0e-8, "bytes": 5.0e-8},
    ("mlp", "bf16"): {"launches": 0.005, "flops": 6.0e-8, "bytes": 5.0e-8},
    ("other", "fp32"): {"launches": 0.01, "flops": 2.0e-8, "bytes": 1.0e-7},
    ("other", "bf16"): {"launches": 0.01, "flops": 6.0e-8, "bytes": 1.0e-7},
}
PARAMS = 3_000_000


def element_size(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def features(batch: int, seq: int, dtype: str, backend: str) -> PointFeatures:
    tokens = batch * seq
    size = element_size(dtype)
    pairs = batch * HEADS * seq * (seq + 1) / 2  # causal
    attention = KindFeatures(
        launches=LAYERS * 12,
        flops=LAYERS * (8 * tokens * HIDDEN * HIDDEN + 4 * HEAD_DIM * pairs),
        bytes=LAYERS * size * (4 * HIDDEN * HIDDEN + 8 * tokens * HIDDEN),
        attention_pairs=LAYERS * pairs,
    )
    mlp = KindFeatures(
        launches=LAYERS * 5,
        flops=LAYERS * 16 * tokens * HIDDEN * HIDDEN,
        bytes=LAYERS * size * (8 * HIDDEN * HIDDEN + 10 * tokens * HIDDEN),
    )
    other = KindFeatures(
        launches=30, flops=2 * tokens * HIDDEN * 2048, bytes=size * (2048 * HIDDEN + 6 * tokens * HIDDEN)
    )
    matrix = batch * HEADS * seq * seq * size if backend == "math" else 0.0
    memory = MemoryFeatures(param_bytes=PARAMS * size, activation_bytes=tokens * size, attention_matrix_bytes=matrix)
    return PointFeatures(kinds={"attention": attention, "mlp": mlp, "other": other}, memory=memory)


def law_time(kind: str, dtype: str, backend: str, kind_features: KindFeatures) -> float:
    law = LAW[(kind, dtype, backend)] if kind == "attention" else LAW[(kind, dtype)]
    return sum(coefficient * getattr(kind_features, name) for name, coefficient in law.items())


def law_memory(memory: MemoryFeatures) -> float:
    return memory.param_bytes + 6 * HIDDEN * memory.activation_bytes + 2.0 * memory.attention_matrix_bytes + 1e5


def synthetic_measurement(
    batch: int, seq: int, dtype: str, backend: str, rng: np.random.Generator, noise: float = 0.02
) -> Measurement:
    config = {
        "batch_size": batch,
        "seq_len": seq,
        "dtype": dtype,
        "backend": backend,
        "threads": 1,
        "mode": "infer",
        "device": "cpu",
    }
    point = features(batch, seq, dtype, backend)
    kind_time = {
        kind: law_time(kind, dtype, backend, f) * float(rng.lognormal(0.0, noise)) for kind, f in point.kinds.items()
    }
    total = sum(kind_time.values())
    return Measurement(
        key=f"{batch}-{seq}-{dtype}-{backend}",
        config=config,
        status="ok",
        created="2026-01-01T00:00:00+00:00",
        workload_fingerprint="w",
        machine_fingerprint="m",
        time_ms=TimeStats.from_samples([total]),
        kind_time_ms=kind_time,
        kind_features=point.kinds,
        peak_memory_bytes=int(law_memory(point.memory)),
        memory_features=point.memory,
    )


def sweep(rng: np.random.Generator, noise: float = 0.02) -> list[Measurement]:
    shapes = [(1, 64), (8, 64), (1, 512), (8, 512), (3, 181), (2, 362), (5, 90), (6, 256), (2, 128), (4, 420)]
    return [
        synthetic_measurement(b, s, dtype, backend, rng, noise)
        for b, s in shapes
        for dtype in ("fp32", "bf16")
        for backend in ("flash", "math")
    ]


def fit(measurements: list[Measurement]) -> CostModel:
    return fit_cost_model(measurements, target="zoo:test", workload_fingerprint="w", machine=MACHINE)


def test_fit_recovers_known_coefficients_from_noisy_measurements() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([0.1, 3.0e-8, 2.0e-7, 4.0e-6])
    # Independent features spanning the ranges a sweep sees: launches, FLOPs, bytes, S² pairs.
    rows = np.column_stack(
        [
            rng.uniform(20, 200, 60),
            rng.uniform(1e6, 1e9, 60),
            rng.uniform(1e5, 1e8, 60),
            rng.uniform(1e3, 1e7, 60),
        ]
    )
    targets = rows @ truth * rng.lognormal(0.0, 0.03, 60)
    result = fit_linear(rows, targets, ["launches", "flops", "bytes", "attention_pairs"])
    np.testing.assert_allclose(result.coefficients, truth, rtol=0.1)
    # The residual spread estimates the 3% noise that was put in.
    assert 0.015 < result.relative_std < 0.06
    sigmas = np.sqrt(np.diag(result.covariance))
    assert np.all(sigmas > 0) and np.all(sigmas < 0.1 * truth)


def test_robust_loss_ignores_a_wild_outlier() -> None:
    rng = np.random.default_rng(1)
    truth = np.array([0.5, 2e-6])
    rows = np.column_stack([np.ones(30), rng.uniform(1e5, 1e7, 30)])
    targets = rows @ truth
    targets[7] *= 5  # one timing hit by another process on the shared machine
    result = fit_linear(rows, targets, ["launches", "flops"])
    np.testing.assert_allclose(result.coefficients, truth, rtol=0.02)


def test_coefficients_are_never_negative() -> None:
    rows = np.array([[1.0, 10.0], [1.0, 20.0], [1.0, 30.0], [1.0, 40.0]])
    targets = np.array([10.0, 9.0, 8.0, 7.0])  # falls with the second feature: no physical cost does
    result = fit_linear(rows, targets, ["launches", "flops"])
    assert min(result.coefficients) >= 0


def test_model_predicts_held_out_configurations_of_the_law() -> None:
    rng = np.random.default_rng(2)
    model = fit(sweep(rng, noise=0.02))
    for batch, seq in [(4, 300), (7, 100)]:
        for dtype in ("fp32", "bf16"):
            for backend in ("flash", "math"):
                point = features(batch, seq, dtype, backend)
                truth = sum(law_time(kind, dtype, backend, f) for kind, f in point.kinds.items())
                config = {
                    "batch_size": batch,
                    "seq_len": seq,
                    "dtype": dtype,
                    "backend": backend,
                    "threads": 1,
                    "mode": "infer",
                    "device": "cpu",
                }
                predicted = predict(model, config, point)
                assert predicted.time_ms == pytest.approx(truth, rel=0.05)
                assert predicted.memory_bytes == pytest.approx(law_memory(point.memory), rel=0.01)
                assert 0 < predicted.time_sigma_ms < 0.2 * truth
                assert not predicted.extrapolated and predicted.feasible


def test_cross_validation_reports_small_errors_for_a_linear_law() -> None:
    rng = np.random.default_rng(3)
    measurements = sweep(rng, noise=0.02)
    validation = cross_validate(measurements, fit, folds=5)
    assert validation.method == "leave-one-shape-out"  # 10 shapes
    assert validation.points == len(measurements)
    assert validation.latency_mape < 5.0
    assert validation.memory_mape < 1.0
    assert validation.spearman is not None and validation.spearman > 0.95
    assert validation.top1_decisions == 10
    assert validation.top1_agreement is not None and validation.top1_agreement >= 0.9


def test_cross_validation_sees_a_law_the_features_cannot_express() -> None:
    rng = np.random.default_rng(4)
    measurements = sweep(rng, noise=0.0)
    for m in measurements:  # a cost that grows with S³: no feature of the model does
        assert m.time_ms is not None
        extra = 1e-6 * int(m.config["seq_len"]) ** 3
        m.time_ms = TimeStats.from_samples([m.time_ms.median + extra])
    validation = cross_validate(measurements, fit, folds=5)
    assert validation.latency_mape > 5.0


def test_prediction_outside_the_measured_range_is_flagged() -> None:
    model = fit(sweep(np.random.default_rng(5)))
    config = {
        "batch_size": 16,
        "seq_len": 8192,
        "dtype": "bf16",
        "backend": "flash",
        "threads": 1,
        "mode": "infer",
        "device": "cpu",
    }
    predicted = predict(model, config, features(16, 8192, "bf16", "flash"))
    assert predicted.extrapolated
    assert any("seq_len=8192" in w and "64..512" in w for w in predicted.warnings)
    assert any("batch_size=16" in w for w in predicted.warnings)


def test_out_of_memory_points_are_kept_and_rule_out_larger_shapes() -> None:
    measurements = sweep(np.random.default_rng(6))
    oom = Measurement(
        key="oom",
        config={**measurements[0].config, "batch_size": 8, "seq_len": 1024, "backend": "math"},
        status="oom",
        created="2026-01-01T00:00:00+00:00",
        workload_fingerprint="w",
        machine_fingerprint="m",
        reason="CPU allocator: cannot allocate 4 GiB",
    )
    model = fit([*measurements, oom])
    assert model.measurements == len(measurements) + 1
    assert [p.status for p in model.infeasible] == ["oom"]
    base = {"threads": 1, "mode": "infer", "device": "cpu", "dtype": "fp32"}
    bigger = predict(
        model,
        {**base, "batch_size": 8, "seq_len": 2048, "backend": "math"},
        features(8, 2048, "fp32", "math"),
    )
    assert not bigger.feasible and "oom" in bigger.infeasible_reason
    smaller = predict(
        model,
        {**base, "batch_size": 4, "seq_len": 2048, "backend": "math"},
        features(4, 2048, "fp32", "math"),
    )
    assert smaller.feasible
    other_backend = predict(
        model,
        {**base, "batch_size": 8, "seq_len": 2048, "backend": "flash"},
        features(8, 2048, "fp32", "flash"),
    )
    assert other_backend.feasible


def test_groups_with_too_few_points_fall_back_to_a_pooled_fit() -> None:
    rng = np.random.default_rng(7)
    measurements = [m for m in sweep(rng) if m.config["backend"] == "flash" or m.config["seq_len"] == 64]
    model = fit(measurements)
    math_group = choice_key({"dtype": "fp32", "backend": "math", "threads": 1, "mode": "infer", "device": "cpu"})
    assert model.latency["attention"][math_group].pooled
    # MLP costs do not depend on the attention backend: they keep a fit of their own.
    assert not model.latency["mlp"][
        choice_key({"dtype": "fp32", "threads": 1, "mode": "infer", "device": "cpu"})
    ].pooled
    config = {**measurements[0].config, "backend": "math"}
    point = features(8, 64, "fp32", "math")
    predicted = predict(model, {**config, "batch_size": 8}, point)
    assert any("pooled" in w for w in predicted.warnings)
    # The pooled fit is rescaled to the group's own points, so it is right where they were measured.
    truth = sum(law_time(kind, "fp32", "math", f) for kind, f in point.kinds.items())
    assert predicted.time_ms == pytest.approx(truth, rel=0.1)


def test_unmeasured_choice_is_refused_with_a_clear_message() -> None:
    model = fit(sweep(np.random.default_rng(8)))
    config = {
        "batch_size": 2,
        "seq_len": 128,
        "dtype": "fp16",
        "backend": "flash",
        "threads": 1,
        "mode": "infer",
        "device": "cpu",
    }
    with pytest.raises(UsageError, match=r"no measurements for .*dtype=fp16"):
        predict(model, config, features(2, 128, "fp16", "flash"))


def test_too_few_feasible_measurements_is_a_usage_error() -> None:
    one = sweep(np.random.default_rng(9))[:1]
    with pytest.raises(UsageError, match="at least 2"):
        fit(one)


def test_cost_model_json_round_trip() -> None:
    measurements = sweep(np.random.default_rng(10))
    model = fit(measurements)
    model.validation = cross_validate(measurements, fit)
    again = from_json_dict(CostModel, to_json_dict(model))
    assert again == model
    with pytest.raises(InputFileError, match="latency"):
        from_json_dict(CostModel, {**to_json_dict(model), "latency": [1, 2]})


def test_top1_counts_only_shapes_with_a_choice() -> None:
    def point(seq: int, backend: str, measured: float, predicted: float) -> ValidationPoint:
        return ValidationPoint(
            key="k",
            config={"batch_size": 1, "seq_len": seq, "backend": backend},
            measured_ms=measured,
            predicted_ms=predicted,
            measured_memory_bytes=1.0,
            predicted_memory_bytes=1.0,
        )

    details = [
        point(64, "math", 1.0, 1.1),
        point(64, "flash", 2.0, 1.9),  # right: math fastest both ways
        point(128, "math", 3.0, 2.0),
        point(128, "flash", 2.5, 2.6),  # wrong: flash is faster
        point(256, "math", 9.0, 9.0),  # no choice measured: not a decision
    ]
    assert top1_agreement(details) == (0.5, 2)
