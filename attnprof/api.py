"""The public Python API: what the CLI does, from a training script or a notebook.

    import attnprof
    profile = attnprof.profile(model, example_inputs)          # one Profile, as `attnprof profile` saves
    profile.to_dataframe(); profile.save("profile.json")        # and, in a notebook, its HTML report

    with attnprof.profile_steps(model) as steps:                # the steps of your own training loop
        for batch in loader:
            ...forward, backward, optimizer step...
            steps.step()
    steps.profile

    plan = attnprof.tune(model, example_inputs, budget=["memory=2GiB"])
    model = attnprof.apply(model, plan, example_inputs)
    result = attnprof.check(profile, "baseline.json")           # a CheckResult, as `attnprof compare` judges

Torch is imported when a function is called, so `import attnprof` stays light.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnprof.errors import NoFeasiblePlan, PlanRejected, UsageError
from attnprof.profiling import records

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from attnprof.gate.records import CheckResult
    from attnprof.plans.records import Plan
    from attnprof.profiling.run import CountingResult, CountingStep, TimingResult
    from attnprof.targets.workload import Workload
    from attnprof.tuning.loop import TuneOutcome

LossFn = Callable[[Any, Any], Any]  # (output, example_inputs) -> scalar loss tensor


class Profile(records.Profile):
    """The record `attnprof profile` saves (`attnprof.records.Profile`, the same fields and file),
    with what a script or a notebook wants of it: a DataFrame, an HTML view, save and load."""

    @classmethod
    def of(cls, profile: records.Profile) -> Profile:
        return cls(**{f.name: getattr(profile, f.name) for f in dataclasses.fields(profile)})

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile JSON (exit 2 on a missing, corrupt or newer file, as the CLI)."""
        return cls.of(records.load_profile(Path(path)))

    def save(self, path: str | Path) -> None:
        """Write the profile JSON, as `attnprof profile --out PATH` writes it."""
        save(self, path)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per module: the columns of `attnprof report --format csv` (time in ms, FLOPs,
        memory, and for attention layers their FLOPs, heads, kv heads, head dim and backend)."""
        from attnprof.report.profile import sections

        return sections(self)[0].frame

    def _repr_html_(self) -> str:
        """The HTML report (`attnprof profile --html`), in a frame so its style stays its own."""
        from attnprof.report.html import render_html

        document = escape(render_html(self), quote=True)
        return f'<iframe srcdoc="{document}" style="width: 100%; height: 640px; border: none;"></iframe>'


def save(record: Any, path: str | Path) -> None:
    """Write any attnprof record (a Profile, a Plan, a CheckResult) as the CLI writes it: atomically."""
    from attnprof.store import write_record

    write_record(Path(path), record)


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON written by `attnprof tune` (exit 2 on a missing, corrupt or newer file)."""
    from attnprof.plans.records import Plan
    from attnprof.store import read_record

    return read_record(Path(path), Plan)


def profile(
    model: nn.Module,
    example_inputs: Any,
    *,
    mode: str = "infer",
    loss_fn: LossFn | None = None,
    warmup: int = 2,
    repeats: int = 10,
    backend: str = "auto",
    clock: str = "wall",
    reference_probe: bool = False,
    trace_file: str | Path | None = None,
) -> Profile:
    """Profile `model` on `example_inputs` as `attnprof profile` profiles a target: one counting
    step (FLOPs, exact attention FLOPs, memory), `warmup` discarded steps, then `repeats` plain and
    per-layer timed steps. The model runs where its parameters are, in their dtype.

    `example_inputs`: a tensor, a tuple or list of positional arguments, a dict of keyword
    arguments, or (args, kwargs). `mode="train"` runs backward too, of `loss_fn(output,
    example_inputs)` or, without one, of the mean square of the floating outputs. The model's
    train/eval mode and its gradients are as they were afterwards. `trace_file` adds a
    torch.profiler window saved there (`*.pt.trace.json.gz` is what TensorBoard lists).
    """
    from attnprof.profiling.run import run_profile
    from attnprof.settings import Settings
    from attnprof.targets.workload import normalize_inputs

    inputs = normalize_inputs(example_inputs, "attnprof.profile(): example_inputs must be")
    workload = _object_workload(model, lambda: inputs, _loss(loss_fn, example_inputs))
    batch_size, seq_len = _input_sizes(inputs)
    device, dtype = _placement(model)
    settings = Settings(
        mode=mode, batch_size=batch_size, seq_len=seq_len, dtype=dtype, backend=backend, device=device,
        warmup=warmup, repeats=repeats, clock=clock, reference_probe=reference_probe,
    )
    with _model_state_kept(model):
        result = run_profile(workload, settings, trace=trace_file is not None,
                             trace_file=Path(trace_file) if trace_file is not None else None)
    return Profile.of(result)


def profile_steps(model: nn.Module, *, warmup: int = 1, repeats: int = 10, clock: str = "wall") -> StepProfiler:
    """A profiler of the steps your own loop runs: `with attnprof.profile_steps(model) as steps:`,
    and `steps.step()` at the end of every step. See StepProfiler."""
    return StepProfiler(model, warmup=warmup, repeats=repeats, clock=clock)


class StepProfiler:
    """Profiles the steps of a loop the user runs, with the same counters and timers as
    `attnprof profile`; each call of `step()` ends one step.

    Steps 1..warmup run untouched (compilation, allocator and cache warm-up); the next step runs
    under the FLOP, attention and memory accountant (slower: never timed); one more runs with the
    timing hooks to warm them, and the `repeats` after it are timed, per layer and whole: a step's
    time is the device-synchronised time from one `step()` to the next, so it is everything the
    loop does (data loading included). After them
    every hook is removed and the loop runs as it would without attnprof. Train mode (backward
    scopes per layer) is the model's own `model.training` when the profiler is entered.

    `profile` is the Profile once the counting step has run (after the last timed step, or on
    leaving the `with` block: a loop that stops early has fewer timed repeats).
    """

    def __init__(self, model: nn.Module, *, warmup: int = 1, repeats: int = 10, clock: str = "wall") -> None:
        from attnprof.settings import Settings

        device, dtype = _placement(model)
        # The CLI's bounds on each setting (UsageError); the mode is the model's own.
        self._settings = Settings(mode="train" if model.training else "infer", dtype=dtype, device=device,
                                  warmup=warmup, repeats=repeats, clock=clock)
        self.model = model
        self._session = contextlib.ExitStack()  # telemetry, for the whole run
        self._hooks = contextlib.ExitStack()  # the counting step's accountant
        self._steps = 0
        self._sizes: tuple[int, int] | None = None
        self._counting: CountingStep | None = None
        self._counted: CountingResult | None = None
        self._timing: TimingResult | None = None
        self._timed_step_open = False
        self._result: Profile | None = None

    def __enter__(self) -> StepProfiler:
        import torch

        from attnprof.measure.nvml import Telemetry

        self._device = torch.device(self._settings.device)
        self._telemetry = self._session.enter_context(Telemetry(self._device))
        self._advance()
        return self

    def step(self) -> None:
        """End one step of the loop (call it once per step, after the optimizer's)."""
        self._steps += 1
        self._advance()

    def _advance(self) -> None:
        from attnprof.measure.device import synchronize
        from attnprof.profiling.run import CountingStep, TimingResult, add_step_times

        past_warmup = self._steps - self._settings.warmup
        if past_warmup < 0 or self._result is not None:
            return
        if past_warmup == 0:
            self._counting = self._hooks.enter_context(CountingStep(self.model))
            self._hooks.enter_context(self._recording_sizes())
            return
        synchronize(self._device)
        if past_warmup == 1:
            self._end_counting()
            self._timing = TimingResult([], defaultdict(list), defaultdict(list), defaultdict(list), {})
            self._telemetry.window_start()
        else:
            assert self._timing is not None
            elapsed = self._clock() - self._started
            self._end_timed_step()
            if past_warmup > 2:  # the first hooked step pays the hooks' one-off costs: not kept
                self._timing.step_ms.append(1e3 * elapsed)
                add_step_times(self._timing, self._timer.times)
        if past_warmup > self._settings.repeats + 1:
            self._finish()
            return
        self._timer.reset()
        self._scopes.__enter__()
        self._timed_step_open = True
        self._started = self._clock()

    def _end_counting(self) -> None:
        from attnprof.measure.scopes import ModuleScopes
        from attnprof.measure.timing import host_clock, layer_timer

        self._hooks.close()
        assert self._counting is not None
        self._counted = self._counting.result(finite=True)  # the loop's outputs are its own: not inspected
        self._timer = layer_timer(self._device, self._settings.clock)
        self._scopes = ModuleScopes(self.model, backward=self._settings.mode == "train")
        self._scopes.add_listener(self._timer)
        self._clock = host_clock(self._settings.clock)

    def _end_timed_step(self) -> None:
        if self._timed_step_open:
            self._timed_step_open = False
            self._scopes.__exit__(None, None, None)

    @contextlib.contextmanager
    def _recording_sizes(self) -> Iterator[None]:
        """The first tensor input the model's forward sees: the batch size and sequence length."""

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self._sizes is None:
                self._sizes = _input_sizes((args, kwargs))

        handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    def _finish(self) -> None:
        from attnprof.profiling.run import profile_record

        timed = len(self._timing.step_ms) if self._timing is not None else 0
        if self._timing is not None:
            self._telemetry.window_end(timed)
        self._session.close()
        if self._counted is None:
            return
        batch_size, seq_len = self._sizes or (1, 1)
        settings = dataclasses.replace(self._settings, batch_size=batch_size, seq_len=seq_len,
                                       repeats=max(timed, 1))
        workload = _object_workload(self.model, lambda: ((), {}), None)
        self._result = Profile.of(profile_record(
            workload, settings, self.model, self._device, self._counted, self._timing if timed else None,
            self._telemetry,
        ))

    def __exit__(self, *exc_info: Any) -> None:
        self._end_timed_step()  # a step left unfinished is not timed
        if self._result is not None:
            return
        if exc_info[0] is not None:
            self._hooks.close()
            self._session.close()
            return
        if self._counting is not None and self._counted is None:
            self._end_counting()
        self._finish()

    @property
    def profile(self) -> Profile:
        if self._result is None:
            raise UsageError(
                f"attnprof.profile_steps: {self._steps} step(s) ended; a profile needs the {self._settings.warmup} "
                f"warm-up step(s) and the counting step (step() called {self._settings.warmup + 1} times)"
            )
        return self._result


def tune(
    model: nn.Module | str,
    example_inputs: Any = None,
    *,
    budget: list[str] | None = None,
    objective: str = "latency",
    knobs: str | None = None,
    top_k: int = 3,
    mode: str = "infer",
    loss_fn: LossFn | None = None,
    max_error: str | None = None,
    max_quality_loss: str | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
) -> Plan:
    """The best measured plan under `budget` (strings as `attnprof tune --budget`: "memory=2GiB",
    "latency=15ms"), as `attnprof tune` finds it: NoFeasiblePlan (exit 5) when none fits,
    PlanRejected (exit 1) when no candidate survives measurement.

    `model` is a target string ("hf:llama", "path/model.py"), or a module with its
    `example_inputs`: tune then builds each candidate from a copy of it (the module itself is
    left as it is), and its inputs being fixed, the micro-batch is no knob.
    """
    from attnprof.settings import resolve_settings
    from attnprof.targets.load import load_workload
    from attnprof.tuning.budget import parse_budget, parse_objective
    from attnprof.tuning.loop import TuneRequest, pareto_points
    from attnprof.tuning.loop import tune as tune_loop
    from attnprof.tuning.space import default_plan_knobs, parse_plan_knobs

    limits = parse_budget(budget, gpus=1, max_error=max_error, max_quality_loss=max_quality_loss, headroom=None)
    overrides: dict[str, Any] = {"mode": mode, "warmup": warmup, "repeats": repeats}
    if isinstance(model, str):
        workload = load_workload(model)
        chosen = parse_plan_knobs(knobs, mode, 1)
    else:
        if example_inputs is None:
            raise UsageError("attnprof.tune(model, example_inputs): a module needs its example inputs")
        from attnprof.targets.workload import normalize_inputs

        inputs = normalize_inputs(example_inputs, "attnprof.tune(): example_inputs must be")
        workload = _object_workload(model, lambda: inputs, _loss(loss_fn, example_inputs), copies=True)
        device, dtype = _placement(model)
        batch_size, seq_len = _input_sizes(inputs)
        overrides |= {"device": device, "dtype": dtype, "batch_size": batch_size, "seq_len": seq_len}
        chosen = parse_plan_knobs(knobs, mode, 1) if knobs else [
            k for k in default_plan_knobs(mode, 1) if k != "batch_size"
        ]
        if "batch_size" in chosen:
            raise UsageError("attnprof.tune(): the micro-batch is no knob for fixed example_inputs; "
                             "give a target string whose example_inputs take a batch size")
    settings = resolve_settings(workload, overrides)
    request = TuneRequest(budget=limits, objective=parse_objective(objective), knobs=chosen, top_k=top_k)
    outcome = tune_loop(workload, settings, request)
    plan = winning_plan(outcome)
    plan.frontier = pareto_points(outcome)
    return plan


def winning_plan(outcome: TuneOutcome) -> Plan:
    """The plan tune chose; NoFeasiblePlan (exit 5) when none fits the budget, PlanRejected
    (exit 1) when no candidate survived measurement."""
    from attnprof.report.plan import format_metric

    if outcome.plan is not None:
        return outcome.plan
    if outcome.search.infeasibility is not None:
        raise NoFeasiblePlan(
            "no plan satisfies the budget: " + outcome.search.infeasibility.describe(outcome.limits, format_metric)
        )
    raise PlanRejected(f"none of the {len(outcome.verifications)} candidate(s) survived verification by measurement")


def apply(
    model: nn.Module,
    plan: Plan | str | Path,
    example_inputs: Any = None,
    *,
    loss_fn: Any = None,
    strict: bool = False,
    set_threads: bool = False,
) -> nn.Module:
    """Apply `plan` to `model` and return the model to use (sharding may wrap it).

    `example_inputs` (a tensor, a tuple or list of args, a dict of kwargs, or (args, kwargs); any
    other value is a UsageError) are needed to score heads for pruning and to verify hand-written
    attention before replacing it. What could not be applied is a warning naming each module, or
    with strict=True an error. A plan's CPU thread count is process-wide: it is set only with
    set_threads=True; otherwise a differing count is a warning naming the call that sets it.
    """
    import torch

    from attnprof.plans.engine import Example, apply_plan

    if isinstance(plan, (str, Path)):
        plan = load_plan(plan)
    choices = plan.choices
    if choices.threads and not set_threads:
        if choices.threads != torch.get_num_threads():
            warnings.warn(
                f"attnprof: the plan runs with {choices.threads} CPU threads (this process has "
                f"{torch.get_num_threads()}); call torch.set_num_threads({choices.threads}) or pass set_threads=True",
                stacklevel=2,
            )
        choices = dataclasses.replace(choices, threads=0)
    example = Example.of(example_inputs) if example_inputs is not None else None
    model, report = apply_plan(model, choices, example, loss_fn)
    if report.not_applied:
        lines = "; ".join(f"{n.module} ({n.type}): {n.what}: {n.reason}" for n in report.not_applied)
        if strict:
            raise PlanRejected(f"parts of the plan could not be applied: {lines}")
        warnings.warn(f"attnprof: parts of the plan could not be applied: {lines}", stacklevel=2)
    return model


def check(
    current: records.Profile | str | Path,
    baseline: records.Profile | str | Path,
    *,
    thresholds: list[str] | None = None,
    metrics: list[str] | None = None,
    alpha: float | None = None,
    module_limit: str | None = None,
    allow_machine_mismatch: bool = False,
) -> CheckResult:
    """Judge `current` against `baseline` (Profiles or their files) as `attnprof compare` does,
    with the same statistics and options (None: the environment, [tool.attnprof], the defaults).
    The result's `verdict` is pass, regression, inconclusive or error; `attnprof.save` writes it."""
    from attnprof.gate.compare import CheckOptions, compare_profiles
    from attnprof.settings import ProjectConfig

    options = CheckOptions.from_config(
        ProjectConfig.load(), thresholds, metrics, alpha, allow_machine_mismatch, module_limit
    )
    labels = [str(side) if isinstance(side, (str, Path)) else label
              for side, label in ((baseline, "baseline"), (current, "current"))]
    result = compare_profiles(_as_profile(baseline), _as_profile(current), options, *labels)
    result.command = "compare"
    return result


def _as_profile(profile: records.Profile | str | Path) -> records.Profile:
    return records.load_profile(Path(profile)) if isinstance(profile, (str, Path)) else profile


def _object_workload(
    model: nn.Module, inputs: Callable[[], Any], loss_fn: Callable[[Any, Any], Any] | None, copies: bool = False
) -> Workload:
    """A Workload of a module object: built as it is (profile) or as a copy per build (tune)."""
    from attnprof.targets.workload import Workload, architecture_fingerprint

    def build_model(device: torch.device, dtype: torch.dtype) -> nn.Module:
        return copy.deepcopy(model).to(device=device, dtype=dtype) if copies else model

    cls = type(model)
    return Workload(
        target=f"python:{cls.__module__}.{cls.__qualname__}",
        name=cls.__name__,
        build_model=build_model,
        make_inputs=lambda batch_size, seq_len, device, dtype: inputs(),
        loss_fn=loss_fn,
        architecture=architecture_fingerprint(model),
    )


def _loss(loss_fn: LossFn | None, example_inputs: Any) -> Callable[[Any, Any], Any] | None:
    if loss_fn is None:
        return None
    from attnprof.targets.workload import call_user

    return lambda output, _inputs: call_user(loss_fn, output, example_inputs, what="loss_fn()")


def _placement(model: nn.Module) -> tuple[str, str]:
    """The device and dtype names of the model's first parameter (cpu, fp32 without any)."""
    from attnprof.measure.dtypes import TORCH_DTYPES

    for parameter in model.parameters():
        device = parameter.device
        name = f"cuda:{device.index or 0}" if device.type == "cuda" else device.type
        by_dtype = {dtype: key for key, dtype in TORCH_DTYPES.items()}
        return name, by_dtype.get(parameter.dtype, "fp32")
    return "cpu", "fp32"


def _input_sizes(inputs: tuple[tuple[Any, ...], dict[str, Any]]) -> tuple[int, int]:
    """Batch size and sequence length of the first tensor input (its dims 0 and 1), else 1."""
    import torch
    from torch.utils._pytree import tree_flatten

    for leaf in tree_flatten(inputs)[0]:
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return max(1, int(leaf.shape[0])), max(1, int(leaf.shape[1])) if leaf.dim() > 1 else 1
    return 1, 1


@contextlib.contextmanager
def _model_state_kept(model: nn.Module) -> Iterator[None]:
    """The model's train/eval flags and its gradients as they were: profiling is no training."""
    modes = {module: module.training for module in model.modules()}
    grads = {parameter: parameter.grad for parameter in model.parameters()}
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
        for parameter, grad in grads.items():
            parameter.grad = grad


def from_pretrained_pruned(model_class: Any, folder: str | Path) -> nn.Module:
    """Load a transformers model that a plan pruned per layer and `save_pretrained` wrote:
    `from_pretrained` alone fails on it (size mismatch), since transformers builds every layer
    from one head count. The heads recorded in `config.pruned_heads` are removed first."""
    from attnprof.plans.reload import from_pretrained_pruned as load

    return load(model_class, folder)
