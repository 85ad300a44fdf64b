"""Train mode end to end: backward time per layer on the host clock and on CUDA events (the CUDA
API faked as in tests/test_gpu_paths.py), consistent with the FLOPs; the same counts on the
meta device; and whole profiles of real models."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from attnprof.measure import timing
from attnprof.measure.attention_math import backward_flops
from attnprof.measure.scopes import ModuleScopes
from attnprof.measure.timing import CudaEventLayerTimer, HostClockLayerTimer
from attnprof.profiling.records import Profile
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings
from attnprof.targets.load import load_workload
from attnprof.targets.workload import Inputs, Workload
from tests.fake_cuda import Pair, fake_cuda_events
from tests.test_train_attribution import TinyLM

HIDDEN = 32
SLOW_S = 1000.0  # what the fake clock jumps by inside the slow op: far above anything real


class FakeClock:
    """perf_counter, plus SLOW_S each time the slow op runs."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.perf_counter() + self.offset


CLOCK = FakeClock()


class SlowInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        CLOCK.offset += SLOW_S
        return grad * 2


class SlowInForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        CLOCK.offset += SLOW_S
        return x * 2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2


class Scale(nn.Module):
    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.function = function
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.function.apply(x))


class Net(nn.Module):
    def __init__(self, slow: type[torch.autograd.Function], checkpointed: bool = False) -> None:
        super().__init__()
        self.first = nn.Linear(HIDDEN, HIDDEN)
        self.slow = Scale(slow)
        self.last = nn.Linear(HIDDEN, HIDDEN)
        self.checkpointed = checkpointed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        # A keyword call, checkpointed or not.
        y = checkpoint(lambda h: self.slow(x=h), x, use_reentrant=False) if self.checkpointed else self.slow(x=x)
        y += x  # in place on a module's output
        return self.last(y)


def _host_times(model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, str], float]:
    monkeypatch.setattr(timing, "host_clock", lambda clock: CLOCK)
    timer = HostClockLayerTimer()
    x = torch.randn(4, HIDDEN)
    with ModuleScopes(model) as scopes:
        scopes.add_listener(timer)
        model(x).square().mean().backward()
    return dict(timer.times.inclusive)


def test_backward_time_is_the_module_whose_backward_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    times = _host_times(Net(SlowInBackward), monkeypatch)
    slow = {key for key, seconds in times.items() if seconds >= SLOW_S}
    assert slow == {("", "backward"), ("slow", "backward")}  # the module and its parent, nothing else
    assert {name for name, phase in times if phase == "backward"} == {"", "first", "slow", "slow.linear", "last"}


def test_recompute_time_is_the_recomputed_module_not_the_child_that_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    times = _host_times(Net(SlowInForward, checkpointed=True), monkeypatch)
    # Forward: the slow op once; backward: its recompute, inside the root's backward. The
    # recompute was asked for by slow.linear's backward node, whose own time excludes it.
    assert times[("slow", "forward")] >= SLOW_S and times[("slow", "recompute")] >= SLOW_S
    assert times[("", "backward")] >= SLOW_S
    assert times[("slow.linear", "backward")] < SLOW_S
    assert times[("slow", "backward")] < SLOW_S  # its gradient work alone; the profile adds the recompute


def test_cuda_event_timer_times_backward_scopes_on_the_current_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda_events(monkeypatch)
    model = Pair()
    timer = CudaEventLayerTimer(torch.device("cuda:0"))
    with ModuleScopes(model) as scopes:
        scopes.add_listener(timer)
        model(torch.randn(2, 4)).sum().backward()
    # Forward events 0-5 (root, a, b). Backward runs b then a: root opens at 6, b 7-8, a 9-10,
    # and the root closes at 11, when the engine's end-of-backward callback runs.
    times = timer.times
    assert times.inclusive[("", "backward")] == pytest.approx(0.005)
    assert times.inclusive[("b", "backward")] == pytest.approx(0.001)
    assert times.inclusive[("a", "backward")] == pytest.approx(0.001)
    assert times.self_time[("", "backward")] == pytest.approx(0.003)
    # Every event is recorded on the stream current where its scope changed: in backward, the
    # stream the node's work runs on (the autograd engine makes it current before the node's prehooks).
    assert torch.cuda.current_stream.call_count == 12
    assert all(call.args == (torch.device("cuda:0"),) for call in torch.cuda.current_stream.call_args_list)


def _workload(name: str, **options: Any) -> Workload:
    def build(device: torch.device, dtype: torch.dtype) -> nn.Module:
        torch.manual_seed(0)
        with torch.device(device):
            return TinyLM(**options).to(dtype)

    def inputs(batch: int, seq: int, device: torch.device, dtype: torch.dtype) -> Inputs:
        return (torch.randint(0, 64, (batch, seq), device=device),), {}

    return Workload(target=f"test:{name}", name=name, build_model=build, make_inputs=inputs)


def _counts(profile: Profile) -> list[tuple[str, int, int, int, Any]]:
    return [(layer.name, layer.flops, layer.backward_flops, layer.recompute_flops, layer.attention)
            for layer in profile.layers]


SETTINGS = {"batch_size": 2, "seq_len": 8, "warmup": 0, "repeats": 1, "mode": "train"}


# Not a non-reentrant checkpoint on meta: its recompute runs outside torch-function modes, so SDPA
# is not routed to the flash kernel's meta implementation there (docs/architecture.md, "Facts").
@pytest.mark.parametrize("options", [{}, {"frozen_embedding": True}, {"residual_in_place": True},
                                     {"twice": True}, {"checkpointed": "reentrant"}],
                         ids=["plain", "frozen", "in-place", "twice", "reentrant"])
def test_meta_train_dry_run_counts_what_a_cpu_run_counts(options: dict[str, Any]) -> None:
    on_cpu = run_profile(_workload("tiny", **options), Settings(**SETTINGS))
    on_meta = run_profile(_workload("tiny", **options), Settings(device="meta", **SETTINGS))
    assert _counts(on_meta) == _counts(on_cpu)
    assert (on_meta.totals.flops, on_meta.totals.backward_flops, on_meta.totals.recompute_flops) == (
        on_cpu.totals.flops, on_cpu.totals.backward_flops, on_cpu.totals.recompute_flops)
    assert on_meta.timing_source == "none"


@pytest.mark.slow
@pytest.mark.parametrize("target", ["hf:llama", "hf:gpt2", "hf:bert", "zoo:decoder", "zoo:encoder"])
def test_train_profiles_of_real_models(target: str) -> None:
    profile = run_profile(load_workload(target), Settings(**SETTINGS))
    on_meta = run_profile(load_workload(target), Settings(device="meta", **SETTINGS))
    assert _counts(on_meta) == _counts(profile)
    for layer in profile.attention_layers():
        assert layer.attention.backward_flops == backward_flops(layer.attention.flops) > 0
        assert layer.backward_flops == layer.attention.backward_flops  # its projections are children
    assert profile.totals.flops == sum(layer.flops for layer in profile.layers)
    assert profile.totals.backward_flops == sum(layer.backward_flops for layer in profile.layers)
    # Every module that did gradient work has a backward time, inside its parent's.
    for layer in profile.layers:
        if layer.backward_flops:
            assert layer.backward_time_ms is not None and layer.backward_time_ms.median > 0, layer.name
    root = profile.layer("")
    assert root.backward_time_ms.median >= max(layer.backward_time_ms.median for layer in profile.layers
                                               if layer.backward_time_ms is not None)

