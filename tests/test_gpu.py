"""On a real CUDA GPU (skipped without one): SDPA backend detection, event timing, allocator
memory, energy. Run with `python -m pytest -m gpu`."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnprof.measure import trace
from attnprof.profiling.run import run_profile
from attnprof.settings import resolve_settings
from attnprof.targets.load import load_workload

pytestmark = pytest.mark.gpu


def _profile(trace: bool = False, **overrides: object):
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(
        workload, {"device": "cuda", "dtype": "fp16", "batch_size": 4, "seq_len": 512, "warmup": 3,
                   "repeats": 20, **overrides}
    )
    return run_profile(workload, settings, trace=trace)


@pytest.mark.parametrize(
    ("backend", "forced"),
    [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
     ("math", SDPBackend.MATH), ("cudnn", SDPBackend.CUDNN_ATTENTION)],
)
def test_detected_backend_matches_the_forced_one(backend, forced):
    q = torch.randn(2, 8, 256, 64, device="cuda", dtype=torch.float16)
    try:
        with sdpa_kernel(forced):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError:
        pytest.skip(f"{backend} does not run on this GPU")

    class Attention(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)

    from attnprof.measure.scopes import ModuleScopes

    model = Attention()
    with sdpa_kernel(forced), torch.no_grad(), ModuleScopes(model, record_labels=True, backward=False):
        summary = trace.run_trace(lambda: model(q), torch.device("cuda"), attention_modules=[""])
    assert summary.timing_source == "cupti" and summary.kernels > 0
    assert summary.backends[""] == backend


def test_layer_times_sum_to_the_step_time():
    profile = _profile()
    assert profile.timing_source == "cuda_events"
    # Self times partition the step: every module's own time, children excluded.
    layer_sum = sum(layer.self_time_ms for layer in profile.layers)
    assert layer_sum == pytest.approx(profile.totals.time_ms.median, rel=0.05)


def test_energy_per_step_is_positive_and_repeatable():
    first, second = _profile(repeats=50), _profile(repeats=50)
    if first.totals.energy_j is None:
        pytest.skip(f"no energy on this GPU: {first.totals.energy_reason}")
    assert first.totals.energy_j > 0 and second.totals.energy_j > 0
    assert second.totals.energy_j == pytest.approx(first.totals.energy_j, rel=0.25)


def test_allocator_memory_and_trace_on_gpu():
    profile = _profile(trace=True)
    attn = profile.layer("layers.0.attn")
    assert attn.memory_bytes > 0 and profile.totals.peak_memory_bytes > 0
    assert profile.trace.kernels > 0 and profile.trace.timing_source == "cupti"
    assert attn.attention.backend in ("flash", "efficient", "cudnn", "math")
    assert profile.peak is not None
