"""Trace window: real torch.profiler runs on CPU; the GPU path on real FunctionEvents with kernels."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from torch import nn
from torch.autograd.profiler_util import EventList, FunctionEvent
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnprof import backends
from attnprof.errors import UsageError
from attnprof.measure import trace
from attnprof.measure.scopes import ModuleScopes

CPU = torch.device("cpu")
CUDA = torch.device("cuda:0")


class Attention(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


def labels(model: nn.Module) -> ModuleScopes:
    return ModuleScopes(model, record_labels=True, backward=False)


def test_cpu_trace_attributes_ops_to_modules_and_detects_flash(tmp_path):
    torch.manual_seed(0)
    model = Block()
    x = torch.randn(2, 16, 32)
    out = tmp_path / "t.json.gz"
    with torch.no_grad(), labels(model):
        summary = trace.run_trace(lambda: model(x), CPU, active=2, attention_modules=["attn"], trace_file=out)
    assert summary.timing_source == "cpu_ops"
    assert summary.kernels == 0 and summary.active_steps == 2
    rows = {m.name: m for m in summary.modules}
    assert {"", "attn", "attn.qkv", "attn.out", "mlp", "mlp.0", "mlp.2"} <= set(rows)
    # Inclusive time contains the children's; the root holds every module.
    assert rows["attn"].time_ms >= rows["attn.qkv"].time_ms + rows["attn.out"].time_ms
    assert rows[""].time_ms == pytest.approx(
        sum(m.self_time_ms for n, m in rows.items() if n != trace.OUTSIDE)
    )
    assert all(m.time_ms > 0 for m in summary.modules)
    assert any("scaled_dot_product" in name for name in rows["attn"].top)
    assert "aten::addmm" in rows["attn.qkv"].top
    assert summary.backends == {"attn": "flash"}  # CPU's default SDPA kernel
    chrome = json.loads(gzip.decompress(out.read_bytes()))
    names = {e.get("name") for e in chrome["traceEvents"]}
    assert "attnprof::attn" in names and "attnprof::mlp.0" in names
    assert not list(tmp_path.glob(".attnprof-trace-*"))  # no scratch left behind


def test_cpu_trace_sees_the_forced_math_backend():
    model = Block()
    x = torch.randn(1, 8, 32)
    with torch.no_grad(), labels(model), sdpa_kernel(SDPBackend.MATH):
        summary = trace.run_trace(lambda: model(x), CPU, active=1, attention_modules=["attn"])
    assert summary.backends == {"attn": "math"}
    assert summary.trace_file is None


@pytest.mark.parametrize(
    ("kernel", "backend"),
    [
        (
            "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>>(Flash_fwd_params)",
            "flash",
        ),
        (
            "fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<half>::Params)",
            "efficient",
        ),
        (
            "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x64x128_4x1x1_kernel0_0",
            "cudnn",
        ),
        (
            "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>(float*, float const*)",
            None,
        ),
    ],
)
def test_backend_of_kernel_names(kernel, backend):
    assert backends.backend_of_kernel(kernel) == backend


def _event(eid: int, name: str, start: float, end: float, kernels=()) -> FunctionEvent:
    event = FunctionEvent(id=eid, name=name, thread=1, start_us=start, end_us=end, use_device="cuda")
    for kernel_name, duration in kernels:
        event.append_kernel(kernel_name, 0, duration)
    return event


def _gpu_window(sdpa_op: str, sdpa_kernel_name: str) -> EventList:
    """Two steps of one attention module as the CUDA profiler reports them: CPU ops holding the
    kernels they launched, nested by time under the module labels."""
    events = []
    for step in range(2):
        t = step * 1000.0
        events += [
            _event(10 * step + 1, "attnprof::", t, t + 900),
            _event(10 * step + 2, "attnprof::attn", t + 10, t + 800),
            _event(
                10 * step + 3, "aten::addmm", t + 20, t + 100, [("sm90_xmma_gemm_bf16bf16_bf16f32", 40.0)]
            ),
            _event(10 * step + 4, "aten::scaled_dot_product_attention", t + 110, t + 600),
            _event(10 * step + 5, sdpa_op, t + 120, t + 590, [(sdpa_kernel_name, 250.0)]),
            _event(10 * step + 6, "aten::add", t + 850, t + 880, [("vectorized_elementwise_kernel", 5.0)]),
        ]
    window = EventList(events, use_device="cuda")
    window._build_tree()
    return window


@pytest.mark.parametrize(
    ("op", "kernel", "backend"),
    [
        ("aten::_scaled_dot_product_flash_attention", "void pytorch_flash::flash_fwd_kernel<>", "flash"),
        (
            "aten::_scaled_dot_product_efficient_attention",
            "fmha_cutlassF_bf16_aligned_64x64_rf_sm80",
            "efficient",
        ),
        (
            "aten::_scaled_dot_product_cudnn_attention",
            "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_bf16_knob_7",
            "cudnn",
        ),
    ],
)
def test_gpu_kernels_give_device_time_and_backend(op, kernel, backend):
    summary = trace.summarize(_gpu_window(op, kernel), 2, CUDA, attention_modules=["attn"])
    assert summary.timing_source == "cupti"
    assert summary.kernels == 6
    rows = {m.name: m for m in summary.modules}
    # Per step: attention launched a 40 µs GEMM and a 250 µs SDPA kernel; the root adds 5 µs.
    assert rows["attn"].time_ms == pytest.approx(0.290)
    assert rows["attn"].kernels == 2
    assert rows[""].self_time_ms == pytest.approx(0.005)
    assert rows[""].time_ms == pytest.approx(0.295)
    assert rows["attn"].top[0] == kernel
    assert summary.backends == {"attn": backend}


def test_gpu_window_without_kernels_falls_back_to_cuda_events():
    window = _gpu_window("aten::_scaled_dot_product_flash_attention", "unused")
    for event in window:
        event.kernels.clear()
    summary = trace.summarize(window, 2, CUDA, attention_modules=["attn"])
    assert summary.timing_source == "cuda_events"
    assert summary.modules == []  # no made-up zeros
    assert summary.notes == [trace.NO_KERNELS_NOTE]
    assert summary.backends == {"attn": "flash"}  # the op names still say which kernel ran


def test_bad_trace_requests_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match=r"\.json\.gz"):
        trace.run_trace(lambda: None, CPU, trace_file=tmp_path / "t.json")
    with pytest.raises(UsageError, match="warm-up"):
        trace.run_trace(lambda: None, CPU, warmup=0)
