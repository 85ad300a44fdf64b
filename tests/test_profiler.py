"""Profiles of real models: timing, backward times, memory, and the JSON contract."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from attnprof.errors import UsageError
from attnprof.profiling.records import Profile
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings, resolve_settings
from attnprof.store import from_json_dict, to_json_dict
from attnprof.targets.load import load_workload


def _profile(target: str, **overrides: object) -> Profile:
    workload = load_workload(target)
    return run_profile(workload, resolve_settings(workload, {"warmup": 1, "repeats": 2, **overrides}))


def test_sleep_dominated_layers_sum_to_the_step_time(models_dir: Path) -> None:
    profile = _profile(str(models_dir / "sleepy_model.py"), repeats=3)
    step = profile.totals.time_ms.median
    # The layers sleep 40 + 80 + 40 ms, far more than their CPU work, so the self times of all
    # modules add up to the step time even on a busy machine.
    total_self = sum(layer.self_time_ms for layer in profile.layers)
    assert total_self == pytest.approx(step, rel=0.10)  # stated tolerance: 10%
    times = {layer.name: layer.time_ms.median for layer in profile.layers}
    assert times["1"] > times["0"] and times["1"] > times["2"]


def test_cpu_clock_counts_work_not_waiting(models_dir: Path) -> None:
    # The same sleep-dominated model: sleeping holds no CPU, so by the process's CPU time the
    # 160 ms of sleep vanish from the step and from each layer, while wall time keeps them.
    wall = _profile(str(models_dir / "sleepy_model.py"), repeats=2)
    cpu = _profile(str(models_dir / "sleepy_model.py"), repeats=2, clock="cpu")
    assert (wall.timing_source, cpu.timing_source) == ("wall", "cpu_time")
    assert wall.totals.time_ms.median >= 160
    assert cpu.totals.time_ms.median < 80
    assert cpu.layer("1").time_ms.median < 40 <= wall.layer("1").time_ms.median


def test_cpu_clock_is_refused_for_gpu_steps_and_unknown_clocks() -> None:
    with pytest.raises(UsageError, match="CUDA events"):
        Settings(device="cuda", clock="cpu")
    with pytest.raises(UsageError, match="--clock must be one of wall, cpu"):
        Settings(clock="thread")


def test_self_times_add_up_to_the_root_inclusive_time() -> None:
    profile = _profile("zoo:decoder", batch_size=1, seq_len=16)
    root = profile.layer("")
    # Self time is inclusive time minus child time, so over the tree it sums to the root exactly.
    per_repeat_sum = sum(layer.self_time_ms for layer in profile.layers)
    assert per_repeat_sum == pytest.approx(root.time_ms.median, rel=0.25)
    assert all(layer.self_time_ms >= 0 for layer in profile.layers)


def test_train_mode_reports_backward_times_and_flops() -> None:
    profile = _profile("zoo:decoder", batch_size=1, seq_len=16, mode="train")
    q_proj = profile.layer("layers.0.attn.q_proj")
    assert q_proj.backward_time_ms is not None and q_proj.backward_time_ms.median > 0
    # Linear backward = grad input + grad weight = 2x forward FLOPs.
    assert q_proj.backward_flops == 2 * q_proj.flops
    assert profile.totals.backward_flops > profile.totals.flops


def test_infer_mode_has_no_backward() -> None:
    profile = _profile("zoo:decoder", batch_size=1, seq_len=16)
    assert all(layer.backward_time_ms is None for layer in profile.layers)


def test_linear_flops_bytes_and_memory() -> None:
    profile = _profile("zoo:decoder", batch_size=2, seq_len=16)
    q_proj = profile.layer("layers.0.attn.q_proj")
    # q_proj: (2*16 x 256) @ (256 x 256) -> 2*32*256*256 = 4,194,304 FLOPs.
    assert q_proj.flops == 4_194_304
    # Output activation: 2*16*256 fp32 values = 32 KiB.
    assert q_proj.memory_bytes == 32 * 1024
    assert q_proj.bytes >= (32 * 256 + 256 * 256 + 256 + 32 * 256) * 4
    assert profile.totals.peak_memory_bytes > profile.totals.param_bytes > 0


def test_profile_json_has_the_design_fields_and_round_trips() -> None:
    profile = _profile("zoo:decoder", batch_size=1, seq_len=16)
    data = json.loads(json.dumps(to_json_dict(profile)))
    for key in ("schema_version", "attnprof_version", "created", "machine", "commit", "workload", "settings",
                "totals", "layers"):
        assert key in data
    for key in ("cpu", "gpu_name", "gpu_uuid", "driver", "cuda", "torch", "python", "threads"):
        assert key in data["machine"]
    assert set(data["workload"]) >= {"target", "fingerprint", "parameter_count"}
    assert set(data["settings"]) >= {"mode", "batch_size", "seq_len", "dtype", "backend", "device", "warmup",
                                     "repeats"}
    assert set(data["totals"]) >= {"time_ms", "flops", "attention_flops", "peak_memory_bytes", "energy_j"}
    step = data["totals"]["time_ms"]
    assert set(step) == {"median", "p10", "p90", "samples", "mean", "stddev", "min", "max"}
    samples = step["samples"]
    assert (step["min"], step["max"]) == (min(samples), max(samples))
    assert step["mean"] == pytest.approx(sum(samples) / len(samples))
    assert step["stddev"] == pytest.approx(statistics.stdev(samples))
    layer = next(item for item in data["layers"] if item["kind"] == "attention")
    assert set(layer) >= {"name", "type", "kind", "time_ms", "backward_time_ms", "flops", "bytes", "memory_bytes",
                          "achieved_tflops", "bound", "attention"}
    assert set(layer["attention"]) >= {"num_heads", "num_kv_heads", "head_dim", "q_len", "kv_len", "causal",
                                       "window", "backend", "flops", "flops_dense"}
    assert from_json_dict(Profile, data) == profile


def test_transformers_llama_and_transformer_encoder_profile(models_dir: Path) -> None:
    llama = _profile("hf:llama", batch_size=1, seq_len=16, mode="train")
    attention = llama.attention_layers()
    assert len(attention) == 2
    assert {(a.attention.num_heads, a.attention.num_kv_heads) for a in attention} == {(4, 2)}
    encoder = _profile(str(models_dir / "encoder_model.py"), mode="train")
    assert encoder.settings.seq_len == 16  # from the file's ATTNPROF defaults
    assert any(layer.backward_time_ms for layer in encoder.layers)
