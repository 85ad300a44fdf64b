"""One profile run: Workload + Settings -> Profile.

Two kinds of pass, so that counting never slows what is timed:
  1. a counting pass: one step under the FLOP/byte accountant and the live-memory tracker,
     attributed per module by the module stack;
  2. timing passes: warm-up steps (discarded), then `repeats` rounds of one plain step (no
     hooks: the step time) and one hooked step (per-layer times), interleaved so drift in the
     machine's speed affects both alike.
"""

from __future__ import annotations

import contextlib
import datetime
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_flatten

import attnprof
from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.measure.accounting import ATTENTION_BACKWARD_FACTOR, AttentionCall, CostCounter, ModuleCost
from attnprof.measure.device import resolve_device
from attnprof.measure.dtypes import parse_dtype
from attnprof.measure.memory import LiveMemoryTracker, tensor_bytes
from attnprof.measure.scopes import ModuleScopes
from attnprof.measure.timing import WallClockLayerTimer, time_call
from attnprof.records import (
    AttentionInfo,
    LayerKind,
    LayerStats,
    Profile,
    Settings,
    TimeStats,
    Totals,
    WorkloadInfo,
)
from attnprof.store import git_commit, machine_info
from attnprof.workload import Inputs, Workload, architecture_fingerprint, call_user

_SDPA_BACKENDS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
# Only these SDPA backends run on a CPU; the others raise "No viable backend" (DESIGN.md).
CPU_BACKENDS = ("auto", "math", "flash")


def resolve_settings(workload: Workload, overrides: dict[str, Any]) -> Settings:
    """Built-in defaults < the workload's ATTNPROF defaults < explicit overrides (None = unset)."""
    values: dict[str, Any] = dict(workload.defaults)
    values.update({key: value for key, value in overrides.items() if value is not None})
    unknown = sorted(set(values) - set(Settings.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown settings {unknown}")
    return Settings(**values)


@dataclass
class Prepared:
    """A built model, its inputs and a callable running one step of the chosen mode."""

    model: nn.Module
    inputs: Inputs
    step: Callable[[], Any]
    device: torch.device
    dtype: torch.dtype


def backend_scope(backend: str) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if backend == "auto":
        return contextlib.nullcontext
    chosen = _SDPA_BACKENDS[backend]
    return lambda: sdpa_kernel(chosen)


def default_loss(output: Any) -> torch.Tensor:
    """Without a loss_fn, train mode backpropagates the mean square of the floating outputs."""
    tensors = [t for t in tree_flatten(_as_tree(output))[0]
               if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
    if not tensors:
        raise UsageError("--mode train: the model's output has no tensor that requires grad; define loss_fn")
    return sum((t.float().square().mean() for t in tensors), torch.zeros((), device=tensors[0].device))


def _as_tree(output: Any) -> Any:
    # transformers ModelOutput is a dict subclass that pytree does not flatten by itself.
    return dict(output) if isinstance(output, dict) else output


def prepare(workload: Workload, settings: Settings) -> Prepared:
    device = resolve_device(settings.device)
    if device.type == "cpu" and settings.backend not in CPU_BACKENDS:
        raise EnvironmentUnsupported(
            f"--backend {settings.backend} does not run on a CPU; CPU backends: {', '.join(CPU_BACKENDS)}"
        )
    if device.type == "meta" and settings.mode == "train":
        raise UsageError("--device meta is a dry run of the forward pass: use --mode infer")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    dtype = parse_dtype(settings.dtype)
    model = workload.build_model(device, dtype)
    model.to(device=device)  # a factory that ignores `device` still runs where asked
    workload.architecture = architecture_fingerprint(model)
    model.train(settings.mode == "train")
    inputs = workload.make_inputs(settings.batch_size, settings.seq_len, device, dtype)
    args, kwargs = inputs
    scope = backend_scope(settings.backend)
    loss_fn = workload.loss_fn

    if settings.mode == "infer":

        def step() -> Any:
            with torch.no_grad(), scope():
                return call_user(model, *args, what="the model's forward", **kwargs)

    else:

        def step() -> Any:
            model.zero_grad(set_to_none=True)
            with scope():
                output = call_user(model, *args, what="the model's forward", **kwargs)
                loss = loss_fn(output, inputs) if loss_fn is not None else default_loss(output)
            call_user(loss.backward, what="backward")
            return loss.detach()

    return Prepared(model, inputs, step, device, dtype)


def outputs_finite(output: Any) -> bool:
    return all(
        bool(torch.isfinite(t).all())
        for t in tree_flatten(_as_tree(output))[0]
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type != "meta"
    )


@dataclass
class CountingResult:
    order: list[str]
    costs: dict[str, ModuleCost]
    memory: dict[str, int]
    peak_activation_bytes: int
    finite: bool


def counting_pass(prepared: Prepared) -> CountingResult:
    """One step under the accountant and the memory tracker."""
    with ModuleScopes(prepared.model) as scopes:
        tracker = LiveMemoryTracker()
        scopes.add_listener(tracker)
        with tracker, CostCounter(scopes) as counter:
            output = prepared.step()
    return CountingResult(scopes.order, dict(counter.per_module), dict(tracker.module_peak),
                          tracker.peak_bytes, outputs_finite(output))


@dataclass
class TimingResult:
    step_ms: list[float]
    forward_ms: dict[str, list[float]]
    forward_self_ms: dict[str, list[float]]
    backward_ms: dict[str, list[float]]
    calls: dict[str, int]


def timing_pass(prepared: Prepared, settings: Settings) -> TimingResult:
    """Warm-up, then interleaved plain (step time) and hooked (per-layer time) steps."""
    for _ in range(settings.warmup):
        prepared.step()
    timer = WallClockLayerTimer()
    scopes = ModuleScopes(prepared.model, backward=settings.mode == "train")
    scopes.add_listener(timer)
    with scopes:  # the first hooked step pays one-off costs (backward hook set-up): discard it
        prepared.step()
    result = TimingResult([], defaultdict(list), defaultdict(list), defaultdict(list), {})
    for _ in range(settings.repeats):
        result.step_ms.append(1e3 * time_call(prepared.step, prepared.device))
        timer.reset()
        with scopes:
            time_call(prepared.step, prepared.device)
        for (name, phase), seconds in timer.times.inclusive.items():
            if phase == "forward":
                result.forward_ms[name].append(1e3 * seconds)
                result.forward_self_ms[name].append(1e3 * timer.times.self_time[(name, phase)])
                result.calls[name] = timer.times.calls[(name, phase)]
            else:
                result.backward_ms[name].append(1e3 * seconds)
    return result


def classify(name: str, module: nn.Module, cost: ModuleCost) -> LayerKind:
    """Attention is whatever ran an attention computation; the rest is named by class."""
    if cost.attention:
        return "attention"
    words = f"{type(module).__name__} {name.rsplit('.', 1)[-1]}".lower()
    if "embed" in words:
        return "embedding"
    if "norm" in words:
        return "norm"
    if any(word in words for word in ("mlp", "feedforward", "feed_forward", "ffn")):
        return "mlp"
    return "other"


def attention_info(calls: list[AttentionCall], cost: ModuleCost, train: bool) -> AttentionInfo:
    first = calls[0]
    flops = sum(c.flops for c in calls)
    return AttentionInfo(
        num_heads=first.num_heads,
        num_kv_heads=first.num_kv_heads,
        head_dim=first.head_dim,
        q_len=first.q_len,
        kv_len=first.kv_len,
        causal=first.causal,
        window=first.window,
        backend=first.backend,
        flops=flops,
        flops_dense=sum(c.flops_dense for c in calls),
        backward_flops=int(ATTENTION_BACKWARD_FACTOR * flops) if train else 0,
        batch_size=first.batch_size,
        calls=len(calls),
    )


def _stats(samples: list[float] | None) -> TimeStats | None:
    return TimeStats.from_samples(samples) if samples else None


def build_layers(prepared: Prepared, counting: CountingResult, timing: TimingResult | None,
                 train: bool) -> list[LayerStats]:
    modules = dict(prepared.model.named_modules())
    layers = []
    for name in counting.order:
        module = modules[name]
        cost = counting.costs.get(name, ModuleCost())
        self_ms = None
        achieved = None
        if timing is not None and timing.forward_self_ms.get(name):
            self_ms = TimeStats.from_samples(timing.forward_self_ms[name]).median
            if self_ms > 0 and cost.flops:
                achieved = cost.flops / (self_ms * 1e-3) / 1e12
        layers.append(
            LayerStats(
                name=name,
                type=type(module).__name__,
                kind=classify(name, module, cost),
                depth=0 if not name else name.count(".") + 1,
                time_ms=_stats(timing.forward_ms.get(name)) if timing else None,
                self_time_ms=self_ms,
                backward_time_ms=_stats(timing.backward_ms.get(name)) if timing and train else None,
                flops=cost.flops,
                bytes=cost.bytes,
                memory_bytes=counting.memory.get(name, 0),
                params=sum(p.numel() for p in module.parameters()),
                achieved_tflops=achieved,
                bound=None,
                attention=attention_info(cost.attention, cost, train) if cost.attention else None,
                backward_flops=cost.backward_flops,
                calls=timing.calls.get(name, 1) if timing else 1,
            )
        )
    return layers


def build_totals(prepared: Prepared, counting: CountingResult, timing: TimingResult | None,
                 layers: list[LayerStats]) -> Totals:
    flops = sum(c.flops for c in counting.costs.values())
    attention = [layer.attention for layer in layers if layer.attention is not None]
    attention_flops = sum(a.flops for a in attention)
    step = TimeStats.from_samples(timing.step_ms) if timing else None
    attention_time = sum(layer.self_time_ms or 0.0 for layer in layers if layer.kind == "attention")
    param_bytes = tensor_bytes(prepared.model)
    return Totals(
        time_ms=step,
        flops=flops,
        attention_flops=attention_flops,
        peak_memory_bytes=param_bytes + counting.peak_activation_bytes,
        backward_flops=sum(c.backward_flops for c in counting.costs.values()),
        attention_flops_dense=sum(a.flops_dense for a in attention),
        attention_share_flops=attention_flops / flops if flops else 0.0,
        attention_share_time=attention_time / step.median if step and step.median > 0 else None,
        achieved_tflops=flops / (step.median * 1e-3) / 1e12 if step and step.median > 0 else None,
        param_bytes=param_bytes,
    )


@contextlib.contextmanager
def _threads(settings: Settings) -> Iterator[None]:
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_profile(workload: Workload, settings: Settings) -> Profile:
    with _threads(settings):
        prepared = prepare(workload, settings)
        train = settings.mode == "train"
        counting = counting_pass(prepared)
        timing = None if prepared.device.type == "meta" else timing_pass(prepared, settings)
        layers = build_layers(prepared, counting, timing, train)
        totals = build_totals(prepared, counting, timing, layers)
        machine = machine_info()
    notes = [] if counting.finite else ["the model's output contains NaN or inf"]
    return Profile(
        attnprof_version=attnprof.__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=machine,
        commit=git_commit(),
        workload=WorkloadInfo(
            target=workload.target,
            fingerprint=workload.fingerprint(settings),
            parameter_count=sum(p.numel() for p in prepared.model.parameters()),
            name=workload.name,
            architecture_fingerprint=workload.architecture,
        ),
        settings=settings,
        totals=totals,
        layers=layers,
        timing_source="none" if timing is None else "wall",
        notes=notes,
    )

