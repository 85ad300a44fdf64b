"""Measuring configurations of real models through the profiler, and the feature laws."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnprof.costmodel.design import design_points
from attnprof.costmodel.fit import features_from_law, fit_cost_model, fit_feature_law, predict_config
from attnprof.costmodel.knobs import Knob, config_of
from attnprof.costmodel.measure import count_features, failure_status, measure_settings, profiler_measure_point
from attnprof.costmodel.measurements import MeasurementStore, architecture_key
from attnprof.costmodel.records import KindFeatures, LayerFeatures, Measurement
from attnprof.costmodel.sweep import run_sweep
from attnprof.errors import EnvironmentUnsupported
from attnprof.machine import machine_info
from attnprof.settings import Settings
from attnprof.targets.load import load_workload

FAST = Settings(batch_size=1, seq_len=16, repeats=2, warmup=1, threads=1)


def measure(target: str, **changes: object) -> Measurement:
    workload = load_workload(target)
    settings = Settings(**{**FAST.__dict__, **changes})
    return measure_settings(workload, settings, workload_fingerprint="w", machine_fingerprint="m")


def test_a_measurement_carries_times_features_and_memory() -> None:
    m = measure("zoo:decoder", backend="flash")
    assert m.status == "ok" and m.time_ms is not None
    assert m.config == {
        "batch_size": 1,
        "seq_len": 16,
        "dtype": "fp32",
        "backend": "flash",
        "threads": 1,
        "mode": "infer",
        "device": "cpu",
    }
    # The kinds split the plain step's median between them.
    assert sum(m.kind_time_ms.values()) == pytest.approx(m.time_ms.median)
    assert all(m.kind_time_ms[kind] > 0 for kind in ("attention", "mlp", "other"))
    attention = m.kind_features["attention"]
    # zoo:decoder: 4 layers x 8 heads, causal S=16 -> dense pairs 4 * 8 * 16 * 16 = 8192
    assert attention.attention_pairs == 4 * 8 * 16 * 16
    assert attention.launches > 0 and attention.flops > 0 and m.kind_features["mlp"].flops > 0
    assert m.memory_features is not None and m.peak_memory_bytes is not None
    assert m.peak_memory_bytes > m.memory_features.param_bytes > 0
    assert m.memory_features.attention_matrix_bytes == 0  # flash never holds the scores
    assert {row.name for row in m.layers} >= {"layers.0.attn", "layers.0.attn.q_proj", "layers.0.mlp"}


def test_math_backend_materialises_the_scores() -> None:
    m = measure("zoo:decoder", backend="math")
    assert m.status == "ok" and m.memory_features is not None
    # One layer's scores at a time: B x H x S x S x 4 bytes = 1 * 8 * 16 * 16 * 4
    assert m.memory_features.attention_matrix_bytes == 8 * 16 * 16 * 4


def test_out_of_memory_non_finite_and_user_errors_are_infeasible_points(models_dir: Path) -> None:
    target = str(models_dir / "memory_hungry.py")
    assert measure(target, batch_size=1, seq_len=16).status == "ok"
    oom = measure(target, batch_size=8, seq_len=16)
    assert oom.status == "oom" and "allocate" in oom.reason and oom.time_ms is None
    assert measure(target, batch_size=1, seq_len=24).status == "non_finite"
    broken = measure(str(models_dir / "broken_forward.py"))
    assert broken.status == "error" and "user bug in forward" in broken.reason


def test_attnprof_errors_are_not_recorded_as_infeasible() -> None:
    with pytest.raises(EnvironmentUnsupported, match="does not run on a CPU"):
        measure("zoo:decoder", backend="efficient")
    assert failure_status(ValueError("x")) is None
    assert failure_status(MemoryError()) == "oom"


def test_sweep_over_a_model_that_runs_out_of_memory(tmp_path: Path, models_dir: Path) -> None:
    workload = load_workload(str(models_dir / "memory_hungry.py"))
    knobs = {
        "batch_size": Knob("batch_size", low=1, high=8),
        "seq_len": Knob("seq_len", low=8, high=16),
        "backend": Knob("backend", choices=("flash",)),
    }
    points = [config_of(Settings(**{**FAST.__dict__, **p})) for p in design_points(knobs, 6)]
    measure_point = profiler_measure_point(workload, FAST, workload_fingerprint="w", machine_fingerprint="m")
    outcome = run_sweep(points, measure_point, MeasurementStore(tmp_path / "m.jsonl"))
    statuses = {(m.config["batch_size"], m.config["seq_len"]): m.status for m in outcome.measurements}
    assert statuses[(8, 16)] == "oom" and statuses[(1, 8)] == "ok"
    model = fit_cost_model(outcome.measurements, target="t", workload_fingerprint="w", machine=machine_info())
    bigger = predict_config(model, {**points[0], "batch_size": 16, "seq_len": 32})
    assert not bigger.feasible and "oom" in bigger.infeasible_reason and bigger.extrapolated


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "backend"), [("zoo:decoder", "flash"), ("zoo:gpt", "flash"), ("hf:llama", "math"), ("hf:bert", "flash")]
)
def test_feature_law_reproduces_counted_features_at_a_new_shape(target: str, backend: str) -> None:
    workload = load_workload(target)
    # Batch 1 takes other kernel paths in some models (a few copies fewer): exact polynomials
    # hold from batch 2 up, which is what this checks.
    shapes = [(2, 8), (4, 8), (2, 24), (4, 24), (3, 16), (2, 16), (4, 12)]
    measurements = []
    for batch, seq in shapes:
        settings = Settings(**{**FAST.__dict__, "batch_size": batch, "seq_len": seq, "backend": backend})
        features = count_features(workload, settings)
        measurements.append(
            Measurement(
                key="k",
                config=config_of(settings),
                status="ok",
                created="now",
                workload_fingerprint="w",
                machine_fingerprint="m",
                memory_features=features.memory,
                layers=[LayerFeatures(name, kind, f) for name, kind, f in features.layers],
            )
        )
    law = fit_feature_law(measurements)
    assert law.max_relative_residual < 1e-6
    settings = Settings(**{**FAST.__dict__, "batch_size": 5, "seq_len": 40, "backend": backend})
    exact = count_features(workload, settings)
    predicted = features_from_law(law, 5, 40)
    for kind in ("attention", "mlp", "other"):
        for name in ("launches", "flops", "bytes", "attention_pairs"):
            want = getattr(exact.kinds[kind], name)
            assert getattr(predicted.kinds[kind], name) == pytest.approx(want, rel=1e-6, abs=1e-3), (kind, name)
    assert predicted.memory.attention_matrix_bytes == pytest.approx(exact.memory.attention_matrix_bytes, rel=1e-6)
    assert predicted.memory.activation_bytes == pytest.approx(exact.memory.activation_bytes)
    assert isinstance(predicted.kinds["mlp"], KindFeatures)


def test_architecture_key_ignores_the_dtype_of_earlier_runs() -> None:
    workload = load_workload("zoo:decoder")
    before = architecture_key(workload)
    measure_settings(
        workload, Settings(**{**FAST.__dict__, "dtype": "bf16"}), workload_fingerprint="w", machine_fingerprint="m"
    )
    assert architecture_key(workload) == before
