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
import functools
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from attnprof import backends
from attnprof.errors import EnvironmentUnsupported, InputFileError, UsageError
from attnprof.machine import MachineInfo, git_commit, machine_info
from attnprof.measure import hardware
from attnprof.measure.accounting import CostCounter, ModuleCost, merge_attention
from attnprof.measure.attention_ops import flex_attention_uncompiled
from attnprof.measure.compilation import CompileWatch
from attnprof.measure.device import resolve_device, synchronize
from attnprof.measure.dry_run import FlashOnMeta
from attnprof.measure.dtypes import parse_dtype
from attnprof.measure.flex import attention_scope
from attnprof.measure.flop_formulas import Coverage
from attnprof.measure.layout import declared_layout, reconcile
from attnprof.measure.memory import CudaAllocatorTracker, LiveMemoryTracker, tensor_bytes
from attnprof.measure.meta_values import MetaValues, ValueRecorder
from attnprof.measure.nvml import Telemetry
from attnprof.measure.records import Calibration, CompileStats, TraceSummary
from attnprof.measure.reference import REFERENCE_VERSION, reference_probe
from attnprof.measure.scopes import ModuleScopes
from attnprof.measure.sharded import global_numel, local_numel
from attnprof.measure.timing import LayerTimes, layer_timer, time_call
from attnprof.measure.trace import run_trace
from attnprof.profiling.progress import spinning, track
from attnprof.profiling.ranks import PipelineStage, collective_pass, distributed, rank_info, stage_compute_ms
from attnprof.profiling.records import LayerKind, LayerStats, Profile, TimeStats, Totals, UncountedOp
from attnprof.settings import Settings
from attnprof.store import timestamp
from attnprof.targets.hf import select_attn_implementation
from attnprof.targets.records import WorkloadInfo
from attnprof.targets.workload import Inputs, Workload, architecture_fingerprint, call_user
from attnprof.version import __version__

# Called before each timed repeat (False) and after the last (True); may block for a turn.
Pace = Callable[[bool], None]



@dataclass
class Prepared:
    """A built model, its inputs and a callable running one step of the chosen mode."""

    model: nn.Module
    inputs: Inputs
    step: Callable[[], Any]
    device: torch.device
    dtype: torch.dtype
    meta_values: MetaValues | None = None  # dry run: contents of meta tensors built from constants


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
    if device.type == "cpu" and not backends.runs_on(settings.backend, "cpu"):
        raise EnvironmentUnsupported(
            f"--backend {settings.backend} does not run on a CPU; "
            f"CPU backends: {', '.join((backends.AUTO, *backends.names_on('cpu')))}"
        )
    reason = backends.unsupported_reason(settings.backend, device.type, None, settings.dtype, settings.mode == "train")
    if device.type == "cpu" and reason is not None:
        raise EnvironmentUnsupported(f"--backend {settings.backend}: {reason}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    dtype = parse_dtype(settings.dtype)
    # A dry run records what meta tensors built from constants hold (causal-mask buffers,
    # padding masks), so that masks are counted exactly without any real data.
    meta_values = MetaValues() if device.type == "meta" else None
    recording = ValueRecorder(meta_values) if meta_values is not None else contextlib.nullcontext()
    select_attn_implementation(workload, settings.attn_implementation, settings.backend)
    with recording:
        model = workload.build_model(device, dtype)
    model.to(device=device)  # a factory that ignores `device` still runs where asked
    workload.architecture = architecture_fingerprint(model)
    model.train(settings.mode == "train")
    with recording:
        inputs = workload.make_inputs(settings.batch_size, settings.seq_len, device, dtype)
    if meta_values is not None:
        inputs = meta_values.adopt(inputs)  # masks given as CPU tensors: on meta, values known
    args, kwargs = inputs
    scope = attention_scope(settings.backend)
    if meta_values is not None and settings.backend in (backends.AUTO, backends.CPU_DEFAULT):
        # A dry run stands for a CPU run, whose SDPA runs the flash kernel.
        scope = functools.partial(FlashOnMeta, meta_values)
    loss_fn = workload.loss_fn

    if settings.mode == "infer":

        def step() -> Any:
            with torch.no_grad(), scope():
                return call_user(model, *args, what="the model's forward", **kwargs)

    else:

        def step() -> Any:
            model.zero_grad(set_to_none=True)
            # Backward too runs in the kernel scope: activation checkpointing recomputes forwards
            # there, and a recompute must run the attention kernel its forward ran.
            with scope():
                output = call_user(model, *args, what="the model's forward", **kwargs)
                loss = loss_fn(output, inputs) if loss_fn is not None else default_loss(output)
                call_user(loss.backward, what="backward")
            return loss.detach()

    return Prepared(model, inputs, step, device, dtype, meta_values)


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
    unknown_masks: int = 0  # dry run: masks whose values could not be known, counted as dense
    coverage: Coverage | None = None  # time in ops without a FLOP formula


class CountingStep(contextlib.AbstractContextManager["CountingStep"]):
    """The accountant and the memory tracker around one step: entered before it, left after it
    (by `counting_pass`, or by the Python API's step profiler around a step the user runs)."""

    def __init__(self, model: nn.Module, meta_values: MetaValues | None = None) -> None:
        self._model = model
        self._meta_values = meta_values
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> CountingStep:
        self.scopes = self._stack.enter_context(ModuleScopes(self._model))
        self.tracker = LiveMemoryTracker()
        self.scopes.add_listener(self.tracker)
        self._stack.enter_context(self.tracker)
        self.counter = self._stack.enter_context(CostCounter(self.scopes, self._meta_values))
        self._stack.enter_context(flex_attention_uncompiled())
        return self

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._stack.__exit__(*exc_info)

    def result(self, finite: bool) -> CountingResult:
        return CountingResult(self.scopes.order, dict(self.counter.per_module), dict(self.tracker.module_peak),
                              self.tracker.peak_bytes, finite, self.counter.unknown_masks, self.counter.coverage)


def counting_pass(prepared: Prepared) -> CountingResult:
    """One step under the accountant and the memory tracker."""
    with CountingStep(prepared.model, prepared.meta_values) as counting:
        output = prepared.step()
    return counting.result(outputs_finite(output))


@dataclass
class TimingResult:
    step_ms: list[float]
    forward_ms: dict[str, list[float]]
    forward_self_ms: dict[str, list[float]]
    backward_ms: dict[str, list[float]]
    calls: dict[str, int]
    reference_ms: list[float] = field(default_factory=list)  # the probe after each plain step


def timing_pass(
    prepared: Prepared,
    settings: Settings,
    telemetry: Telemetry | None = None,
    pace: Pace | None = None,
    compiles: CompileWatch | None = None,
) -> TimingResult:
    """Warm-up, then interleaved plain (step time) and hooked (per-layer time) steps.

    NVML telemetry, when given, covers the timed steps (plain and hooked alike). `pace`, when
    given, is called before each timed repeat and once after the last (done=True); it may block,
    so that another process can take its turn on the machine (attnprof.profiling.interleave).
    A timed step during which torch.compile compiled (a recompile, or a compile the warm-up did
    not reach) is timed again: compile time is reported by the watch, never as step time."""
    watch = compiles or CompileWatch()
    for _ in range(settings.warmup):
        prepared.step()
    timer = layer_timer(prepared.device, settings.clock)
    scopes = ModuleScopes(prepared.model, backward=settings.mode == "train")
    scopes.add_listener(timer)
    with scopes:  # the first hooked step pays one-off costs (events, hook set-up): discard it
        prepared.step()
    probe = reference_probe(prepared.device) if settings.reference_probe else None
    if probe is not None:
        probe()  # warm
    result = TimingResult([], defaultdict(list), defaultdict(list), defaultdict(list), {})
    if telemetry is not None:
        telemetry.window_start()
    for _ in track(range(settings.repeats), "timing repeats"):  # a bar with time left, on a terminal only
        if pace is not None:
            pace(False)
        seconds = watch.without_compiles(lambda: time_call(prepared.step, prepared.device, settings.clock))
        result.step_ms.append(1e3 * seconds)
        if probe is not None:
            result.reference_ms.append(1e3 * time_call(probe, prepared.device, settings.clock))

        def hooked_step() -> None:
            timer.reset()
            with scopes:
                time_call(prepared.step, prepared.device, settings.clock)

        watch.without_compiles(hooked_step)
        add_step_times(result, timer.times)
    if pace is not None:
        pace(True)
    if telemetry is not None:
        telemetry.window_end(2 * settings.repeats)
    return result


def add_step_times(result: TimingResult, times: LayerTimes) -> None:
    """One hooked step's per-layer times. A layer's backward time includes the recompute of its
    forward that activation checkpointing runs inside backward: both are what its backward costs."""
    backward: dict[str, float] = defaultdict(float)
    for (name, phase), seconds in times.inclusive.items():
        if phase == "forward":
            result.forward_ms[name].append(1e3 * seconds)
            result.forward_self_ms[name].append(1e3 * times.self_time[(name, phase)])
            result.calls[name] = times.calls[(name, phase)]
        else:
            backward[name] += seconds
    for name, seconds in backward.items():
        result.backward_ms[name].append(1e3 * seconds)


def allocator_pass(prepared: Prepared, train: bool) -> CudaAllocatorTracker:
    """One hooked step measuring per-module memory with the CUDA caching allocator (after
    warm-up, so one-off workspaces are not charged to the first layer)."""
    tracker = CudaAllocatorTracker(prepared.device)
    with ModuleScopes(prepared.model, backward=train) as scopes:
        scopes.add_listener(tracker)
        synchronize(prepared.device)
        tracker.start()
        prepared.step()
        tracker.finish()
    return tracker


def trace_pass(prepared: Prepared, layers: list[LayerStats], train: bool, trace_file: Path | None) -> TraceSummary:
    """A short torch.profiler window with module labels; detected backends go into the layers."""
    attention = [layer for layer in layers if layer.attention is not None]
    with ModuleScopes(prepared.model, record_labels=True, backward=train):
        summary = run_trace(
            prepared.step, prepared.device, attention_modules=[layer.name for layer in attention],
            trace_file=trace_file,
        )
    for layer in attention:
        detected = summary.backends.get(layer.name)
        if detected is not None and layer.attention is not None:
            layer.attention.backend = detected
    return summary


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


def declared_layouts(model: nn.Module, layers: list[LayerStats]) -> list[str]:
    """Attention layouts as their modules declare them (measure/layout.py); a note per layer
    whose kernel shapes disagree with its module."""
    modules = dict(model.named_modules())
    notes = []
    for layer in layers:
        if layer.attention is None:
            continue
        layer.attention, disagreement = reconcile(layer.attention, declared_layout(modules[layer.name]))
        if disagreement is not None:
            notes.append(f"{layer.name}: attention layout: {disagreement}; the kernel's shapes are reported")
    return notes


def _stats(samples: list[float] | None) -> TimeStats | None:
    return TimeStats.from_samples(samples) if samples else None


def build_layers(model: nn.Module, counting: CountingResult, timing: TimingResult | None,
                 train: bool) -> list[LayerStats]:
    modules = dict(model.named_modules())
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
                params=local_numel(module),
                achieved_tflops=achieved,
                bound=None,
                attention=merge_attention(cost.attention, cost.backward_attention_flops) if cost.attention else None,
                backward_flops=cost.backward_flops,
                calls=timing.calls.get(name, 1) if timing else 1,
                recompute_flops=cost.recompute_flops,
            )
        )
    return layers


def build_totals(model: nn.Module, counting: CountingResult, timing: TimingResult | None,
                 layers: list[LayerStats]) -> Totals:
    flops = sum(c.flops for c in counting.costs.values())
    attention = [layer.attention for layer in layers if layer.attention is not None]
    attention_flops = sum(a.flops for a in attention)
    step = TimeStats.from_samples(timing.step_ms) if timing else None
    attention_time = sum(layer.self_time_ms or 0.0 for layer in layers if layer.kind == "attention")
    param_bytes = tensor_bytes(model)
    return Totals(
        time_ms=step,
        flops=flops,
        attention_flops=attention_flops,
        peak_memory_bytes=param_bytes + counting.peak_activation_bytes,
        backward_flops=sum(c.backward_flops for c in counting.costs.values()),
        recompute_flops=sum(c.recompute_flops for c in counting.costs.values()),
        attention_flops_dense=sum(a.flops_dense for a in attention),
        attention_share_flops=attention_flops / flops if flops else 0.0,
        attention_share_time=attention_time / step.median if step and step.median > 0 else None,
        achieved_tflops=flops / (step.median * 1e-3) / 1e12 if step and step.median > 0 else None,
        param_bytes=param_bytes,
        reference_time_ms=TimeStats.from_samples(timing.reference_ms) if timing and timing.reference_ms else None,
        reference_version=REFERENCE_VERSION if timing and timing.reference_ms else None,
        **_coverage_fields(counting.coverage),
    )


def _coverage_fields(coverage: Coverage | None) -> dict[str, Any]:
    """Totals.uncounted_ops and uncounted_share from the counting step's op times."""
    if coverage is None:
        return {}
    total = coverage.total_seconds if coverage.timed else 0.0
    ops = [
        UncountedOp(
            op=name,
            calls=entry.calls,
            time_ms=1e3 * entry.seconds if coverage.timed else None,
            share=entry.seconds / total if total > 0 else None,
        )
        for name, entry in coverage.uncounted.items()
    ]
    ops.sort(key=lambda op: (-(op.share or 0.0), -op.calls, op.op))
    share = sum(op.share or 0.0 for op in ops) if total > 0 else None
    return {"uncounted_ops": ops, "uncounted_share": share}


@contextlib.contextmanager
def restored_threads() -> Iterator[None]:
    """Puts torch's CPU thread count back as it was: a run may set its own (Settings.threads)."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_profile(
    workload: Workload,
    settings: Settings,
    trace: bool = False,
    trace_file: Path | None = None,
    pace: Pace | None = None,
    plan: str | None = None,
) -> Profile:
    """Profile one workload. `trace` adds a torch.profiler window (kernels per module, the SDPA
    backend that ran), saved as a Chrome trace when `trace_file` is given; `pace` paces the timed
    repeats (see timing_pass). On a rank of a torch.distributed run the profile also records the
    rank (`plan`: the sharding the workload's model was built with) and its collectives."""
    with restored_threads(), CompileWatch() as compiles:
        with spinning("building the model, counting operations and memory"):
            prepared = prepare(workload, settings)
            counting = counting_pass(prepared)
        train = settings.mode == "train"
        with Telemetry(prepared.device) as telemetry:
            timing = (
                None if prepared.device.type == "meta" else timing_pass(prepared, settings, telemetry, pace, compiles)
            )
        allocator = allocator_pass(prepared, train) if prepared.device.type == "cuda" else None
        if allocator is not None:
            counting.memory = dict(allocator.module_peak)

        def traced(layers: list[LayerStats]) -> TraceSummary | None:
            return trace_pass(prepared, layers, train, trace_file) if trace and timing is not None else None

        profile = profile_record(workload, settings, prepared.model, prepared.device, counting, timing, telemetry,
                                 traced, allocator.step_peak if allocator is not None else None, compiles.stats())
        model = prepared.model
        if timing is not None and distributed() and isinstance(model, PipelineStage):
            # Each transfer waited for where it is issued stalls the schedule (the stages end up
            # waiting on each other's sends): a pipeline's point-to-point time is not measured.
            profile.rank = rank_info(model, plan, {}, stage_compute_ms(model, model.stage, profile.layers))
            profile.workload.parameter_count = profile.rank.global_params  # the whole model, not this stage
            profile.notes.append("pipeline stage: the step is the whole pipeline's; transfers between stages are "
                                 "not timed (the step minus the stage's compute is its waiting and transfers)")
        elif timing is not None and distributed():
            collectives = collective_pass(model, prepared.step, max(min(settings.repeats, 5), 1), train)
            for layer in profile.layers:
                layer.collective_ms = collectives.per_module_ms.get(layer.name, 0.0)
            profile.totals.collective_ms = collectives.step_ms
            profile.rank = rank_info(model, plan, collectives.calls)
    if trace and timing is None:
        profile.notes.append("--trace: a meta-device dry run executes no kernels, so nothing was traced")
    return profile


def profile_record(
    workload: Workload,
    settings: Settings,
    model: nn.Module,
    device: torch.device,
    counting: CountingResult,
    timing: TimingResult | None,
    telemetry: Telemetry,
    trace: Callable[[list[LayerStats]], TraceSummary | None] | None = None,
    allocator_peak: int | None = None,
    compilation: CompileStats | None = None,
) -> Profile:
    """The Profile of a counting step and timed steps (`timing` None: a dry run). `trace`, given
    the layers, runs a trace window over them; `allocator_peak` is the CUDA allocator's step peak;
    `compilation`, what torch.compile spent while the steps ran."""
    train = settings.mode == "train"
    layers = build_layers(model, counting, timing, train)
    layout_notes = declared_layouts(model, layers)
    totals = build_totals(model, counting, timing, layers)
    if allocator_peak is not None:
        totals.peak_memory_bytes = allocator_peak
    record = telemetry.record()
    energy = telemetry.energy()
    totals.energy_j, totals.energy_reason = energy.energy_j, energy.reason
    totals.power_w = record.power_w if record is not None else None
    machine = machine_info()
    # A dry run times nothing, so no % of peak or roofline bound refers to anything.
    peak = None if device.type == "meta" else hardware.peak_for(device, settings.dtype, _calibration(machine))
    if peak is not None:
        for layer in layers:
            layer.bound = hardware.roofline_bound(layer.flops, layer.bytes, peak)
    summary = trace(layers) if trace is not None else None
    notes = [] if counting.finite else ["the model's output contains NaN or inf"]
    if counting.unknown_masks:
        notes.append(f"{counting.unknown_masks} attention mask(s) on the meta device depend on weights or on "
                     "random inputs (a learned position bias, a mask drawn at random), so their values are "
                     "unknown; their pairs were counted as unmasked")
    notes += layout_notes
    if summary is not None:
        notes += summary.notes
    if allocator_peak is not None:
        notes.append("memory per layer and peak from the CUDA caching allocator")
    return Profile(
        attnprof_version=__version__,
        created=timestamp(),
        machine=machine,
        commit=git_commit(),
        workload=WorkloadInfo(
            target=workload.target,
            fingerprint=workload.fingerprint(settings),
            parameter_count=global_numel(model),
            name=workload.name,
            architecture_fingerprint=workload.architecture,
        ),
        settings=settings,
        totals=totals,
        layers=layers,
        timing_source=_timing_source(device, settings.clock, timing),
        notes=notes,
        telemetry=record,
        trace=summary,
        peak=peak,
        compilation=compilation,
    )


def _timing_source(device: torch.device, clock: str, timing: TimingResult | None) -> str:
    if timing is None:
        return "none"
    if device.type == "cuda":
        return "cuda_events"
    return "cpu_time" if clock == "cpu" else "wall"


def _calibration(machine: MachineInfo) -> Calibration | None:
    """This machine's calibrated peaks; a damaged calibration file only costs the % of peak."""
    try:
        return hardware.load_calibration(machine)
    except InputFileError:
        return None
