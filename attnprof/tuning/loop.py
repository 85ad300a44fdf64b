"""Tune: baseline -> plan space -> predicted costs -> optimizer -> verified by measurement -> Plan.

1. The workload is profiled as it runs (the baseline).
2. `space.build_space` lists the valid plans for the allowed knobs. Precisions are screened by a
   real forward pass against the fp32 reference: non-finite outputs, or outputs beyond
   `--max-error`, remove the precision with that reason.
3. An `Estimator` predicts one micro-step of each global choice (backend, precision,
   micro-batch, threads). Per-layer knobs change a layer's cost in proportion to the FLOPs and
   parameters they remove (heads) or the forward they repeat (checkpointing); sharding goes
   through the α-β model of `sharding`.
4. `optimize.search` ranks the plans under the budget (exit 5 with the binding limit when none fits).
5. The top candidates that can run here are measured for real, after the reference choice is
   measured again to correct the predictions for the machine's drift; the winner is the best
   *measured* plan that keeps its promises: finite outputs, error and quality within bounds,
   limits met, and a measurement no worse than predicted beyond the stated uncertainty. The
   measurements refine the estimates of the rest.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy.optimize import nnls
from torch.utils._pytree import tree_flatten

from attnprof import backends
from attnprof.costmodel.fit import memory_group, predict_config
from attnprof.costmodel.knobs import config_of
from attnprof.costmodel.measure import measure_settings
from attnprof.costmodel.measurements import MeasurementStore, architecture_key, model_path, store_path
from attnprof.costmodel.records import CostModel
from attnprof.errors import EnvironmentUnsupported, NoFeasiblePlan, PlanRejected
from attnprof.machine import machine_info
from attnprof.measure.device import resolve_device
from attnprof.measure.dtypes import parse_dtype
from attnprof.plans.records import Budget, ParetoPoint, Plan, PlanChoices, PlanFigures
from attnprof.profiling.records import LayerStats, Profile
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings
from attnprof.store import DEFAULT_PROFILE_DIR, read_record, timestamp
from attnprof.targets.workload import Inputs, Workload
from attnprof.tuning.optimize import OBJECTIVE_METRIC, Candidate, Group, Option, Problem, SearchResult, search
from attnprof.tuning.sharding import LinkLike, ShardedCost, StepShape, sharded_step
from attnprof.tuning.space import (
    AttentionLayout,
    DeviceFacts,
    Exclusion,
    GlobalChoice,
    LayerOption,
    PlanSpace,
    build_space,
)
from attnprof.version import __version__

DEFAULT_MAX_ERROR = 1e-2  # relative output error allowed for a precision change when none is given
DEFAULT_MAX_QUALITY_LOSS = 1e-2  # relative output change allowed for head changes when none is given
CONTRADICTION_SIGMAS = 3.0  # a measurement this many standard deviations worse than predicted refutes it
# Search-and-verify rounds: when every candidate of a round is refuted, the search runs again with
# the refuting measurements in the estimates and verifies the next best untried candidates.
VERIFY_ROUNDS = 3
NOISE_FLOOR = 0.10  # relative: timings on a shared machine vary this much between runs at least
_NORMAL_P10_P90 = 2.563  # (p90 - p10) of a normal distribution, in standard deviations
_ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp64": 8, "fp8": 1}


# --- predicting one micro-step -----------------------------------------------------------------


@dataclass(frozen=True)
class StepEstimate:
    """One micro-step (forward, and backward in train mode) of `choice.batch_size` samples."""

    latency_ms: float
    latency_sigma_ms: float
    memory_bytes: float
    memory_sigma_bytes: float
    source: str  # what produced it: "measured", "predicted" (probes) or "cost model"
    infeasible: str = ""  # why the choice cannot run (e.g. it ran out of memory when measured)


class Estimator(Protocol):
    measurements: int  # configurations measured to build the estimates so far
    source: str  # how estimates are made, for the report

    def estimate(self, choice: GlobalChoice) -> StepEstimate: ...

    def add(self, choice: GlobalChoice, profile: Profile) -> None: ...


def measured_settings(settings: Settings, choice: GlobalChoice) -> Settings:
    """The profiler settings that run one micro-step of `choice` on one device."""
    return dataclasses.replace(
        settings,
        backend=choice.backend,
        dtype="fp32" if choice.dtype == "tf32" else choice.dtype,
        batch_size=choice.batch_size,
        threads=choice.threads,
    )


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled or before
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


ModelTransform = Callable[[torch.nn.Module], torch.nn.Module]


def profile_choice(
    workload: Workload, settings: Settings, choice: GlobalChoice, transform: ModelTransform | None = None
) -> Profile:
    """Profile one micro-step of `choice`; `transform` changes each freshly built fp32 model first."""
    if transform is not None:
        build = workload.build_model

        def build_transformed(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
            return transform(build(device, torch.float32)).to(dtype)

        workload = dataclasses.replace(workload, build_model=build_transformed)
    with tf32_matmuls(choice.dtype == "tf32"):
        return run_profile(workload, measured_settings(settings, choice))


def layer_transform(workload: Workload, settings: Settings, choices: PlanChoices) -> ModelTransform | None:
    """The per-layer part of a plan (heads, K/V heads, checkpointing) as a model transform, via
    plan application; heads to prune are scored on the example inputs. None when there is none."""
    if not (choices.changes_heads() or choices.checkpoint):
        return None
    from attnprof.plans.engine import Example, apply_plan

    layer_only = PlanChoices(prune_heads=choices.prune_heads, kv_heads=choices.kv_heads, checkpoint=choices.checkpoint)

    def transform(model: torch.nn.Module) -> torch.nn.Module:
        device = next(model.parameters()).device
        args, kwargs = workload.make_inputs(settings.batch_size, settings.seq_len, device, torch.float32)
        model, report = apply_plan(model, layer_only, Example(args, kwargs), workload.loss_fn)
        if report.not_applied:
            missed = "; ".join(f"{n.module}: {n.what}: {n.reason}" for n in report.not_applied)
            raise PlanRejected(f"the plan could not be applied: {missed}")
        return model

    return transform


def sigma_of(profile: Profile) -> float:
    stats = profile.totals.time_ms
    return 0.0 if stats is None else max(stats.p90 - stats.p10, 0.0) / _NORMAL_P10_P90


MODEL_FORM_SIGMA = 0.05  # relative: what a separable model misses of the knobs' interactions


def _line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Non-negative a, b of y = a + b·x through the points (least squares)."""
    if len({x for x, _ in points}) < 2:
        x, y = points[0]
        return 0.0, y / x
    design = np.array([[1.0, x] for x, _ in points])
    coefficients, _ = nnls(design, np.array([y for _, y in points]))
    return float(coefficients[0]), float(coefficients[1])


class ProbeEstimator:
    """Measures a few probes around a reference choice and predicts the rest by a separable model.

    The probes are the reference itself, the reference with each other backend, precision and
    thread count, and the reference at the smallest micro-batch. A choice's latency
    is the micro-batch line a + b·m times one measured ratio per categorical knob; its memory is
    the parameters (scaled by element size) plus activations linear in m times the measured
    activation ratios. Measured choices are returned as measured. The uncertainty combines the
    probes' timing spread with MODEL_FORM_SIGMA for the interactions the model leaves out.
    """

    source = "separable model fitted on probe measurements"

    def __init__(self, workload: Workload, settings: Settings, choices: Sequence[GlobalChoice]) -> None:
        self.workload = workload
        self.settings = settings
        singles = sorted({_single(c) for c in choices}, key=str)
        self.values = {
            knob: sorted({getattr(c, knob) for c in singles}, key=str) for knob in ("backend", "dtype", "threads")
        }
        self.batches = sorted({c.batch_size for c in singles})
        self.reference = reference_choice(settings, singles)
        self.profiles: dict[GlobalChoice, Profile] = {}
        self.measurements = 0
        self._fitted = False

    def probes(self) -> list[GlobalChoice]:
        probes = [self.reference]
        for knob, values in self.values.items():
            probes += [
                dataclasses.replace(self.reference, **{knob: v}) for v in values if v != getattr(self.reference, knob)
            ]
        if self.batches[0] != self.reference.batch_size:  # the line's other end
            probes.append(dataclasses.replace(self.reference, batch_size=self.batches[0]))
        return probes

    def add(self, choice: GlobalChoice, profile: Profile) -> None:
        """A measurement of `choice` taken elsewhere (e.g. by verification) feeds the estimates."""
        self.profiles[_single(choice)] = profile

    def measure(self, choice: GlobalChoice) -> Profile:
        single = _single(choice)
        if single not in self.profiles:
            self.profiles[single] = profile_choice(self.workload, self.settings, single)
            self.measurements += 1
        return self.profiles[single]

    def _fit(self) -> None:
        for probe in self.probes():
            self.measure(probe)
        ref = self._figures(self.reference)
        self._ratios: dict[tuple[str, object], tuple[float, float, float]] = {}
        for knob, values in self.values.items():
            for value in values:
                probe = self._figures(dataclasses.replace(self.reference, **{knob: value}))
                self._ratios[(knob, value)] = (
                    probe[0] / ref[0],
                    probe[2] / ref[2] if ref[2] > 0 else 1.0,
                    probe[1] / probe[0],
                )
        batch_points = [
            (*self._figures(dataclasses.replace(self.reference, batch_size=b)), b)
            for b in self.batches
            if dataclasses.replace(self.reference, batch_size=b) in self.profiles
        ]
        self._latency_line = _line([(b, t) for t, _, _, b in batch_points])
        self._activation_line = _line([(b, a) for _, _, a, b in batch_points])
        self._batch_sigma = max(s / t for t, s, _, _ in batch_points)
        self._fitted = True

    def _figures(self, choice: GlobalChoice) -> tuple[float, float, float]:
        """(latency, latency sigma, activation bytes) of a measured choice."""
        profile = self.profiles[choice]
        assert profile.totals.time_ms is not None
        activations = profile.totals.peak_memory_bytes - profile.totals.param_bytes
        return profile.totals.time_ms.median, sigma_of(profile), float(activations)

    def estimate(self, choice: GlobalChoice) -> StepEstimate:
        single = _single(choice)
        if single in self.profiles:
            latency, sigma, _ = self._figures(single)
            memory = float(self.profiles[single].totals.peak_memory_bytes)
            return StepEstimate(latency, sigma, memory, 0.0, "measured")
        if not self._fitted:
            self._fit()
            if single in self.profiles:
                return self.estimate(choice)
        a, b = self._latency_line
        latency = a + b * choice.batch_size
        activations = self._activation_line[0] + self._activation_line[1] * choice.batch_size
        relative_var = self._batch_sigma**2 + MODEL_FORM_SIGMA**2
        for knob in self.values:
            time_ratio, activation_ratio, relative_sigma = self._ratios[(knob, getattr(choice, knob))]
            latency *= time_ratio
            activations *= activation_ratio
            relative_var += relative_sigma**2
        params = self.profiles[self.reference].totals.param_bytes
        params *= _ELEMENT_BYTES[choice.dtype] / _ELEMENT_BYTES[self.reference.dtype]
        memory = params + activations
        return StepEstimate(latency, latency * math.sqrt(relative_var), memory, MODEL_FORM_SIGMA * memory, "predicted")


class CostModelEstimator:
    """The cost model `attnprof fit` saved for this workload on this machine, for the choice
    combinations it measured; measured choices, and the combinations it lacks, go to the probes."""

    def __init__(self, model: CostModel, settings: Settings, probes: ProbeEstimator) -> None:
        self.model = model
        self.settings = settings
        self.probes = probes
        self.source = (
            f"cost model fitted on {model.measurements} measurement(s) (attnprof fit); "
            "probes for choices it has not measured"
        )

    @property
    def measurements(self) -> int:
        return self.probes.measurements

    def covers(self, choice: GlobalChoice) -> bool:
        config = config_of(measured_settings(self.settings, _single(choice)))
        return memory_group(config) in self.model.feature_laws

    def estimate(self, choice: GlobalChoice) -> StepEstimate:
        single = _single(choice)
        if single in self.probes.profiles or not self.covers(single):
            return self.probes.estimate(choice)
        prediction = predict_config(self.model, config_of(measured_settings(self.settings, single)))
        if not prediction.feasible:
            return StepEstimate(math.inf, 0.0, math.inf, 0.0, "cost model", prediction.infeasible_reason)
        return StepEstimate(
            prediction.time_ms,
            prediction.time_sigma_ms,
            prediction.memory_bytes,
            0.0 if math.isnan(prediction.memory_sigma_bytes) else prediction.memory_sigma_bytes,
            "cost model",
        )

    def add(self, choice: GlobalChoice, profile: Profile) -> None:
        self.probes.add(choice, profile)


def saved_cost_model(workload: Workload, folder: Path = DEFAULT_PROFILE_DIR) -> CostModel | None:
    """The cost model `attnprof fit` saved for this workload's architecture on this machine, if any."""
    architecture = architecture_key(workload)
    path = model_path(folder, workload.name or workload.target, architecture, machine_info().fingerprint())
    if not path.exists():
        return None
    model = read_record(path, CostModel)
    return model if model.workload_fingerprint == architecture else None


def reference_choice(settings: Settings, choices: Sequence[GlobalChoice]) -> GlobalChoice:
    """The candidate closest to how the workload runs now: what other choices are compared with."""

    def pick(knob: str, wanted: Sequence[object]) -> object:
        values = sorted({getattr(c, knob) for c in choices}, key=str)
        return next((w for w in wanted if w in values), values[-1])

    return GlobalChoice(
        backend=pick("backend", [settings.backend, "flash"]),
        dtype=pick("dtype", [settings.dtype]),
        batch_size=pick("batch_size", [settings.batch_size]),
        threads=pick("threads", [settings.threads, settings.threads or torch.get_num_threads()]),
    )


def _single(choice: GlobalChoice) -> GlobalChoice:
    """The one-device part of a choice: what one replica runs per micro-step."""
    return dataclasses.replace(choice, tensor_parallel=1, pipeline_stages=1, data_parallel=1, data_parallel_mode="fsdp")


# --- per-layer costs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerBasis:
    """What the baseline measured of one attention layer, to price per-layer options."""

    layout: AttentionLayout
    forward_ms: float
    backward_ms: float
    activation_bytes: float
    hidden: int  # model width feeding the projections
    tokens: int  # batch x query length in the baseline
    core_flops: float  # the attention product itself, forward

    @classmethod
    def from_layer(cls, layer: LayerStats, layout: AttentionLayout) -> LayerBasis:
        info = layer.attention
        assert info is not None
        # Parameters of q, k, v, o: hidden x head_dim x (2 query-side + 2 key/value-side heads).
        width = layout.head_dim * (2 * layout.num_heads + 2 * layout.num_kv_heads)
        hidden = max(round(layer.params / width), 1) if layer.params else layout.num_heads * layout.head_dim
        return cls(
            layout=layout,
            forward_ms=layer.time_ms.median if layer.time_ms else 0.0,
            backward_ms=layer.backward_time_ms.median if layer.backward_time_ms else 0.0,
            activation_bytes=float(layer.memory_bytes),
            hidden=hidden,
            tokens=max(info.batch_size, 1) * info.q_len,
            core_flops=float(info.flops),
        )

    def _flops(self, heads: int, kv_heads: int) -> float:
        projections = 2.0 * self.tokens * self.hidden * self.layout.head_dim * (2 * heads + 2 * kv_heads)
        return projections + self.core_flops * heads / self.layout.num_heads

    def kept(self, option: LayerOption) -> tuple[int, int]:
        heads = self.layout.num_heads - option.prune
        grouped = self.layout.num_kv_heads < self.layout.num_heads
        kv = self.layout.num_kv_heads if grouped else heads
        return heads, option.kv_heads if option.kv_heads is not None else kv

    def removed_share(self, option: LayerOption) -> float:
        """Share of the layer's FLOPs the option removes (0 for no change)."""
        heads, kv = self.kept(option)
        full = self._flops(self.layout.num_heads, self.layout.num_kv_heads)
        return 1.0 - self._flops(heads, kv) / full if full > 0 else 0.0

    def removed_params(self, option: LayerOption) -> int:
        heads, kv = self.kept(option)
        before = 2 * self.layout.num_heads + 2 * self.layout.num_kv_heads
        return self.hidden * self.layout.head_dim * (before - 2 * heads - 2 * kv)


def layer_option_costs(
    basis: LayerBasis,
    option: LayerOption,
    time_scale: float,
    activation_scale: float,
    element_bytes: int,
    train: bool,
    quality_loss: float = 0.0,
) -> dict[str, float]:
    """What an option adds to a step's latency and memory (negative: saves), and its quality loss."""
    share = basis.removed_share(option)
    layer_ms = basis.forward_ms + basis.backward_ms
    latency = -share * layer_ms * time_scale
    params = basis.removed_params(option) * element_bytes * (2 if train else 1)  # + gradients in train
    memory = -params
    if train:
        # Activations saved for backward add up over layers; in inference they are freed layer by
        # layer, so the step's peak is one layer's transient and pruning one layer barely moves it.
        memory -= share * basis.activation_bytes * activation_scale
    if option.checkpoint:
        # The layer's saved activations are dropped and its forward runs again in backward.
        latency += basis.forward_ms * (1 - share) * time_scale
        memory -= basis.activation_bytes * (1 - share) * activation_scale
    return {"latency_ms": latency, "memory_bytes": memory, "quality_loss": quality_loss}


# --- building the optimizer's problems ----------------------------------------------------------


@dataclass
class Pricing:
    """Everything needed to turn global choices into the optimizer's problems."""

    settings: Settings
    baseline: Profile
    space: PlanSpace
    estimator: Estimator
    layer_bases: dict[str, LayerBasis]
    power_w: float | None  # average power of the baseline, for energy; None where unmeasured
    link: LinkLike | None = None
    quality: dict[tuple[str, LayerOption], float] = field(default_factory=dict)
    excluded: list[Exclusion] = field(default_factory=list)

    def problems(self) -> list[Problem]:
        problems = []
        for choice in self.space.globals:
            problem = self.problem(choice)
            if problem is not None:
                problems.append(problem)
        return problems

    def problem(self, choice: GlobalChoice) -> Problem | None:
        batch = self.settings.batch_size
        per_replica, remainder = divmod(batch, choice.data_parallel * choice.batch_size)
        if remainder or per_replica < 1:
            self.excluded.append(
                Exclusion(
                    "batch_size",
                    ", ".join(f"{k}={v}" for k, v in choice.as_config().items()),
                    f"batch {batch} does not split into {choice.data_parallel} replica(s) of "
                    f"micro-batches of {choice.batch_size}",
                )
            )
            return None
        estimate = self.estimator.estimate(choice)
        if estimate.infeasible:
            config = ", ".join(f"{k}={v}" for k, v in choice.as_config().items())
            self.excluded.append(Exclusion("batch_size", config, estimate.infeasible))
            return None
        step_ms = per_replica * estimate.latency_ms
        memory = estimate.memory_bytes
        shape = None
        if choice.world_size > 1:
            shape = self._step_shape(estimate, choice, per_replica)
            sharded = self._sharded(shape, choice)
            step_ms, memory = sharded.latency_ms, sharded.memory_bytes
        groups = self._groups(choice, estimate, per_replica)
        problem = Problem(
            config=choice.as_config(),
            fixed=self._with_energy({"latency_ms": step_ms, "memory_bytes": memory}, choice),
            groups=groups,
            samples=batch,
            value=(choice, estimate),
        )
        if shape is not None and choice.pipeline_stages > 1 and groups:
            problem.evaluate = self._pipeline_totals(problem, shape, choice)
        return problem

    def _sharded(self, shape: StepShape, choice: GlobalChoice) -> ShardedCost:
        return sharded_step(
            shape,
            choice.tensor_parallel,
            choice.pipeline_stages,
            choice.data_parallel,
            choice.data_parallel_mode,
            self._link(),
        )

    def _with_energy(self, totals: dict[str, float], choice: GlobalChoice) -> dict[str, float]:
        if self.power_w is not None:
            totals["energy_j"] = self.power_w * totals["latency_ms"] * 1e-3 * choice.world_size
        return totals

    def _pipeline_totals(
        self, problem: Problem, shape: StepShape, choice: GlobalChoice
    ) -> Callable[[tuple[int, ...]], dict[str, float]]:
        """A pipeline is as fast as its slowest stage: layer options change the stage balance, so
        the totals do not add up over layers (the optimizer enumerates or searches heuristically)."""
        index = {layout.name: i for i, layout in enumerate(self.space.layouts)}

        def totals(chosen: tuple[int, ...]) -> dict[str, float]:
            blocks = list(shape.block_ms)
            memory = quality = 0.0
            for group, option_index in zip(problem.groups, chosen, strict=True):
                costs = group.options[option_index].costs
                # Option costs are per step and per rank; blocks are per micro-batch, unsharded.
                blocks[index[group.name]] += costs["latency_ms"] * choice.tensor_parallel / shape.micro_batches
                memory += costs["memory_bytes"] / choice.pipeline_stages
                quality += costs.get("quality_loss", 0.0)
            sharded = self._sharded(dataclasses.replace(shape, block_ms=tuple(blocks)), choice)
            result = {"latency_ms": sharded.latency_ms, "memory_bytes": sharded.memory_bytes + memory}
            return {**self._with_energy(result, choice), "quality_loss": quality}

        return totals

    def _baseline_step_ms(self) -> float:
        stats = self.baseline.totals.time_ms
        return stats.median if stats else 0.0

    def _groups(self, choice: GlobalChoice, estimate: StepEstimate, micro_steps: int) -> list[Group]:
        base = self._baseline_step_ms()
        time_scale = micro_steps * estimate.latency_ms / base if base > 0 else 0.0
        element = _ELEMENT_BYTES[choice.dtype]
        activation_scale = choice.batch_size / self.settings.batch_size * element / _ELEMENT_BYTES[self.settings.dtype]
        train = self.settings.mode == "train"
        groups = []
        for layout in self.space.layouts:
            options = self.space.options_for(layout, choice.tensor_parallel)
            if len(options) <= 1:
                continue
            basis = self.layer_bases[layout.name]
            groups.append(
                Group(
                    layout.name,
                    [
                        Option(
                            option.label(layout),
                            layer_option_costs(
                                basis,
                                option,
                                time_scale / choice.tensor_parallel,
                                activation_scale / choice.tensor_parallel,
                                element,
                                train,
                                self.quality.get((layout.name, option), 0.0),
                            ),
                            value=option,
                        )
                        for option in options
                    ],
                )
            )
        return groups

    def _step_shape(self, estimate: StepEstimate, choice: GlobalChoice, micro_steps: int) -> StepShape:
        base = self._baseline_step_ms()
        scale = estimate.latency_ms / base if base > 0 else 1.0
        blocks = [
            (b.forward_ms + b.backward_ms) * scale for b in (self.layer_bases[lay.name] for lay in self.space.layouts)
        ]
        # Attention layers stand for their blocks; what the blocks do besides attention is spread evenly.
        rest = max(estimate.latency_ms - sum(blocks), 0.0)
        per_block_rest = rest * 0.8 / max(len(blocks), 1)
        param_bytes = (
            self.baseline.totals.param_bytes
            * _ELEMENT_BYTES[choice.dtype]
            / _ELEMENT_BYTES[self.settings.dtype]
            * (2 if self.settings.mode == "train" else 1)
        )
        hidden = next(iter(self.layer_bases.values())).hidden if self.layer_bases else 0
        tokens = next(iter(self.layer_bases.values())).tokens if self.layer_bases else 0
        boundary = tokens * choice.batch_size / self.settings.batch_size * hidden * _ELEMENT_BYTES[choice.dtype]
        return StepShape(
            block_ms=tuple(b + per_block_rest for b in blocks),
            other_ms=rest * 0.2,
            param_bytes=param_bytes,
            activation_bytes=max(estimate.memory_bytes - param_bytes, 0.0),
            boundary_bytes=boundary,
            micro_batches=micro_steps,
            train=self.settings.mode == "train",
        )

    def _link(self) -> LinkLike:
        if self.link is None:
            raise EnvironmentUnsupported("sharding plans need an interconnect: pass --interconnect")
        return self.link


# --- measuring a plan --------------------------------------------------------------------------


def _floats(output: Any) -> list[torch.Tensor]:
    tree = dict(output) if isinstance(output, dict) else output
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]


def relative_error(reference: Any, output: Any) -> tuple[bool, float]:
    """(outputs finite, max |out - ref| / max |ref|) over the floating outputs."""
    ref_tensors, out_tensors = _floats(reference), _floats(output)
    finite = all(bool(torch.isfinite(t).all()) for t in out_tensors)
    if not finite:
        return False, math.inf
    worst = 0.0
    for ref, out in zip(ref_tensors, out_tensors, strict=True):
        ref64, out64 = ref.double(), out.double().reshape(ref.shape)
        scale = float(ref64.abs().max()) if ref64.numel() else 0.0
        worst = max(worst, float((out64 - ref64).abs().max()) / max(scale, 1e-30) if ref64.numel() else 0.0)
    return True, worst


def _cast_inputs(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    args, kwargs = inputs

    def cast(value: Any) -> Any:
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


class OutputChecker:
    """Compares a changed model's outputs with the fp32 reference on the example inputs."""

    def __init__(self, workload: Workload, settings: Settings):
        self.workload = workload
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.reference_model = workload.build_model(self.device, torch.float32).eval()
        self.inputs = workload.make_inputs(settings.batch_size, settings.seq_len, self.device, torch.float32)
        with torch.no_grad():
            self.reference = self._run(self.reference_model, backends.REFERENCE, torch.float32)

    def _run(self, model: torch.nn.Module, backend: str, dtype: torch.dtype) -> Any:
        args, kwargs = _cast_inputs(self.inputs, dtype)
        with torch.no_grad(), backends.kernel_scope(backend)():
            return model(*args, **kwargs)

    def check(self, dtype: str, backend: str, transform: Callable[[torch.nn.Module], torch.nn.Module] | None = None):
        """(finite, relative error) of the model cast to `dtype`, run with `backend`, after `transform`."""
        torch_dtype = torch.float32 if dtype == "tf32" else parse_dtype(dtype)
        model = copy.deepcopy(self.reference_model)
        if transform is not None:
            model = transform(model)
        model = model.to(torch_dtype)
        with tf32_matmuls(dtype == "tf32"):
            output = self._run(model, backend, torch_dtype)
        return relative_error(self.reference, output)


# --- the whole loop ----------------------------------------------------------------------------


@dataclass
class TuneRequest:
    budget: Budget
    objective: str
    knobs: list[str]
    top_k: int = 3
    pareto: bool = False
    verify: bool = True
    link: LinkLike | None = None
    use_cost_model: bool = True  # use the model `attnprof fit` saved, where it covers a choice
    contradiction_sigmas: float = CONTRADICTION_SIGMAS  # how far a measurement may fall behind its prediction
    profiles_dir: Path = DEFAULT_PROFILE_DIR


@dataclass
class Verification:
    candidate: Candidate
    choices: PlanChoices
    predicted: PlanFigures
    measured: PlanFigures | None
    accepted: bool
    reason: str  # why rejected, or what was noticed when accepted
    profile: Profile | None = None
    can_run: bool = True  # False: the plan needs devices this machine does not have
    contradicted: bool = False  # measured worse than predicted beyond the stated uncertainty


@dataclass
class Contribution:
    """What one knob of the plan changes on its own, predicted against the reference choice."""

    knob: str
    change: str
    latency_ms: float
    memory_bytes: float


@dataclass
class TuneOutcome:
    baseline: Profile
    baseline_figures: PlanFigures
    space: PlanSpace
    excluded: list[Exclusion]
    search: SearchResult
    verifications: list[Verification]
    plan: Plan | None  # None when nothing fits or nothing survived verification
    limits: dict[str, float]
    measurements: int  # configurations profiled, the baseline included
    estimator_source: str
    winner: Verification | None = None
    contributions: list[Contribution] = field(default_factory=list)


def figures_of(profile: Profile, micro_steps: int, samples: int, power_w: float | None) -> PlanFigures:
    stats = profile.totals.time_ms
    latency = micro_steps * stats.median if stats else None
    return PlanFigures(
        latency_ms=latency,
        memory_bytes=float(profile.totals.peak_memory_bytes),
        energy_j=None if latency is None or power_w is None else power_w * latency * 1e-3,
        throughput=samples * 1e3 / latency if latency else None,
        latency_sigma_ms=micro_steps * sigma_of(profile),
    )


def predicted_figures(candidate: Candidate) -> PlanFigures:
    _, estimate = candidate.problem.value
    micro_steps = max(round(candidate.totals["latency_ms"] / estimate.latency_ms), 1) if estimate.latency_ms else 1
    quality = candidate.totals.get("quality_loss")
    return PlanFigures(
        latency_ms=candidate.totals["latency_ms"],
        memory_bytes=candidate.totals["memory_bytes"],
        energy_j=candidate.totals.get("energy_j"),
        throughput=candidate.throughput,
        latency_sigma_ms=micro_steps * estimate.latency_sigma_ms,
        memory_sigma_bytes=estimate.memory_sigma_bytes,
        quality_loss=quality if quality else None,
    )


def plan_choices(candidate: Candidate, settings: Settings) -> PlanChoices:
    choice, _ = candidate.problem.value
    prune: dict[str, int | list[int]] = {}
    kv: dict[str, int] = {}
    checkpoint: list[str] = []
    for group, option in zip(candidate.problem.groups, candidate.options(), strict=True):
        layer: LayerOption = option.value
        if layer.prune:
            prune[group.name] = layer.prune
        if layer.kv_heads is not None:
            kv[group.name] = layer.kv_heads
        if layer.checkpoint:
            checkpoint.append(group.name)
    return PlanChoices(
        dtype=choice.dtype,
        precision="cast",  # what was measured: the model's weights and inputs in that dtype
        backend=choice.backend,
        batch_size=choice.batch_size if choice.batch_size != settings.batch_size else None,
        threads=choice.threads,
        prune_heads=prune,
        kv_heads=kv,
        checkpoint=checkpoint,
        tensor_parallel=choice.tensor_parallel,
        data_parallel=choice.data_parallel,
        data_parallel_mode=choice.data_parallel_mode,
        pipeline_stages=choice.pipeline_stages,
    )


def contradiction(predicted: float, sigma: float, measured: float, sigmas: float = CONTRADICTION_SIGMAS) -> bool:
    """True when `measured` is worse than `predicted` beyond `sigmas` standard deviations (and the noise floor)."""
    allowance = max(sigmas * sigma, NOISE_FLOOR * abs(predicted))
    return measured - predicted > allowance


def objective_value(figures: PlanFigures, objective: str) -> float:
    if objective == "throughput":
        return -(figures.throughput or 0.0)
    value = getattr(figures, OBJECTIVE_METRIC[objective])
    return math.inf if value is None else float(value)


def tune(
    workload: Workload, settings: Settings, request: TuneRequest, estimator: Estimator | None = None
) -> TuneOutcome:
    """The tuning loop; the result holds the plan, or the reason there is none."""
    budget, objective = request.budget, request.objective
    baseline = run_profile(workload, settings)
    energy = baseline.totals.energy_j
    if (objective == "energy" or budget.energy_j is not None) and energy is None:
        raise EnvironmentUnsupported(f"energy cannot be predicted here: {baseline.totals.energy_reason}")
    assert baseline.totals.time_ms is not None
    power = energy / (baseline.totals.time_ms.median * 1e-3) if energy else None
    layers = baseline.attention_layers()
    layouts = [
        AttentionLayout(layer.name, layer.attention.num_heads, layer.attention.num_kv_heads, layer.attention.head_dim)
        for layer in layers
        if layer.attention is not None
    ]
    facts = DeviceFacts.probe(settings.device)
    space = build_space(facts, layouts, settings, request.knobs, gpus=budget.gpus, blocks=max(len(layouts), 1))
    excluded = list(space.excluded)
    checker = OutputChecker(workload, settings)
    max_error = budget.max_error if budget.max_error is not None else DEFAULT_MAX_ERROR
    space.globals = _screen_precisions(space.globals, settings, checker, max_error, excluded)

    if not space.globals:
        reasons = "; ".join(f"{e.knob} {e.value}: {e.reason}" for e in excluded)
        raise NoFeasiblePlan(f"no valid plan on this device for knobs {', '.join(request.knobs)} ({reasons})")
    if estimator is None:
        probes = ProbeEstimator(workload, settings, space.globals)
        if measured_settings(settings, probes.reference) == settings:
            probes.add(probes.reference, baseline)  # the baseline is the reference probe
        cost_model = saved_cost_model(workload, request.profiles_dir) if request.use_cost_model else None
        estimator = CostModelEstimator(cost_model, settings, probes) if cost_model is not None else probes
    pricing = Pricing(
        settings=settings,
        baseline=baseline,
        space=space,
        estimator=estimator,
        layer_bases={
            layout.name: LayerBasis.from_layer(layer, layout) for layer, layout in zip(layers, layouts, strict=True)
        },
        power_w=power,
        link=request.link,
    )
    limits = budget.limits()
    if any(o.prune or o.kv_heads is not None for options in space.layer_options.values() for o in options):
        limits["quality_loss"] = budget.max_quality_loss or DEFAULT_MAX_QUALITY_LOSS
        pricing.quality = _layer_quality(workload, settings, space, checker, estimator_backend(space, settings))
        _drop_lossy_options(space, pricing.quality, limits["quality_loss"], excluded)
    problems = pricing.problems()
    excluded.extend(pricing.excluded)
    result = search(problems, limits, objective, k=request.top_k, pareto_points=8 if request.pareto else 0)
    baseline_figures = figures_of(baseline, 1, settings.batch_size, power)
    verifications = []
    drift_measurements = feedback = 0
    if result.ranked and request.verify:
        drift = 1.0
        # Estimates from a saved cost model are as old as the model: measure how the machine's
        # speed moved since. Probes were measured moments ago, in this run.
        if isinstance(estimator, CostModelEstimator) and any(c.problem.value[0].world_size == 1 for c in result.ranked):
            drift = _drift(workload, settings, estimator, reference_choice(settings, space.globals))
            drift_measurements = 1
        verifier = Verifier(workload, settings, checker, max_error, limits, power, drift, request, estimator)
        candidates = result.ranked
        for _ in range(VERIFY_ROUNDS):
            for candidate in candidates:
                if not _could_win(candidate, verifications, objective, drift):
                    continue
                verifications.append(verifier.verify(candidate))
            if any(v.accepted or not v.can_run for v in verifications):
                break
            # Every candidate was refuted: search again, priced with what was just measured.
            again = search(pricing.problems(), limits, objective, k=request.top_k + len(verifications))
            candidates = _untried(again, verifications, settings)[: request.top_k]
            if not candidates:
                break
        feedback = verifier.feedback
    verified = sum(v.profile is not None for v in verifications)
    measurements = 1 + estimator.measurements + drift_measurements + feedback + verified
    plan, winner = _choose(result, verifications, request, baseline, settings, baseline_figures)
    return TuneOutcome(
        baseline=baseline,
        baseline_figures=baseline_figures,
        space=space,
        excluded=excluded,
        search=result,
        verifications=verifications,
        plan=plan,
        limits=limits,
        measurements=measurements,
        estimator_source=estimator.source,
        winner=winner,
        contributions=knob_contributions(pricing, winner.candidate) if winner else [],
    )


def knob_contributions(pricing: Pricing, candidate: Candidate) -> list[Contribution]:
    """Each changed global knob alone against the reference choice; per-layer knobs summed by kind."""
    choice, _ = candidate.problem.value
    reference = reference_choice(pricing.settings, pricing.space.globals)
    base = pricing.problem(reference)
    contributions = []
    for knob in ("backend", "dtype", "batch_size", "threads", "tensor_parallel", "pipeline_stages", "data_parallel"):
        before, after = getattr(reference, knob), getattr(choice, knob)
        if before == after or base is None:
            continue
        alone = pricing.problem(dataclasses.replace(reference, **{knob: after}))
        if alone is None:
            continue
        contributions.append(
            Contribution(
                knob,
                f"{before} -> {after}",
                alone.fixed["latency_ms"] - base.fixed["latency_ms"],
                alone.fixed["memory_bytes"] - base.fixed["memory_bytes"],
            )
        )
    per_kind: dict[str, list[float]] = {}
    for option in candidate.options():
        layer: LayerOption = option.value
        kind = "checkpoint" if layer.checkpoint else ("heads" if layer.prune or layer.kv_heads else "")
        if kind:
            total = per_kind.setdefault(kind, [0.0, 0.0, 0.0])
            total[0] += option.costs.get("latency_ms", 0.0)
            total[1] += option.costs.get("memory_bytes", 0.0)
            total[2] += 1
    for kind, (latency, memory, count) in per_kind.items():
        contributions.append(Contribution(kind, f"{int(count)} layer(s)", latency, memory))
    return contributions


def estimator_backend(space: PlanSpace, settings: Settings) -> str:
    return reference_choice(settings, space.globals).backend


def _layer_quality(
    workload: Workload, settings: Settings, space: PlanSpace, checker: OutputChecker, backend: str
) -> dict[tuple[str, LayerOption], float]:
    """Relative output change of each head option applied to its layer alone (fp32, example inputs).

    The optimizer adds these up over layers; verification measures the combination for real.
    """
    quality = {}
    for layout in space.layouts:
        for option in space.layer_options[layout.name]:
            if not option.prune and option.kv_heads is None:
                continue
            alone = PlanChoices(
                prune_heads={layout.name: option.prune} if option.prune else {},
                kv_heads={layout.name: option.kv_heads} if option.kv_heads is not None else {},
            )
            transform = layer_transform(workload, settings, alone)
            try:
                finite, error = checker.check("fp32", backend, transform)
            except PlanRejected:
                finite, error = False, math.inf
            quality[(layout.name, option)] = error if finite else math.inf
    return quality


def _drop_lossy_options(
    space: PlanSpace, quality: dict[tuple[str, LayerOption], float], bound: float, excluded: list[Exclusion]
) -> None:
    """An option that alone changes the outputs beyond the bound can be in no plan."""
    for layout in space.layouts:
        kept = []
        for option in space.layer_options[layout.name]:
            loss = quality.get((layout.name, option), 0.0)
            if loss <= bound:
                kept.append(option)
            else:
                reason = (
                    "the change could not be applied"
                    if math.isinf(loss)
                    else f"alone it changes the outputs by {loss:.2g} > --max-quality-loss {bound:g}"
                )
                excluded.append(Exclusion("heads", f"{layout.name} {option.label(layout)}", reason))
        space.layer_options[layout.name] = kept


def _screen_precisions(
    choices: Sequence[GlobalChoice],
    settings: Settings,
    checker: OutputChecker,
    max_error: float,
    excluded: list,
) -> list[GlobalChoice]:
    verdicts: dict[tuple[str, str], str | None] = {}
    kept = []
    for choice in choices:
        key = (choice.dtype, choice.backend)
        if key not in verdicts:
            verdicts[key] = None
            if choice.dtype != "fp32" and choice.world_size == 1:
                finite, error = checker.check(choice.dtype, choice.backend)
                if not finite:
                    verdicts[key] = f"{choice.dtype} outputs are not finite on the example inputs"
                elif error > max_error:
                    verdicts[key] = f"{choice.dtype} output error {error:.2g} exceeds --max-error {max_error:g}"
            if verdicts[key]:
                excluded.append(Exclusion("dtype", f"{choice.dtype} with {choice.backend}", verdicts[key]))
        if verdicts[key] is None:
            kept.append(choice)
    return kept


def _feed_back(
    workload: Workload, settings: Settings, estimator: CostModelEstimator, verification: Verification, folder: Path
) -> int:
    """A cost-model prediction the measurement refuted: the configuration is measured into the
    sweep's store, so the next `attnprof fit` learns from it. Returns the measurements taken."""
    choice = verification.candidate.problem.value[0]
    if verification.choices.changes_heads() or not estimator.covers(choice):
        return 0  # another architecture, or not the cost model's prediction
    architecture = architecture_key(workload)
    machine = machine_info().fingerprint()
    measurement = measure_settings(
        workload,
        measured_settings(settings, _single(choice)),
        workload_fingerprint=architecture,
        machine_fingerprint=machine,
    )
    MeasurementStore(store_path(folder, workload.name or workload.target, architecture, machine)).append(measurement)
    return 1


def _drift(workload: Workload, settings: Settings, estimator: Estimator, reference: GlobalChoice) -> float:
    """How much slower (>1) or faster the machine runs now than when the estimates were made.

    The reference choice is measured again just before the candidates, so that a machine that
    got busier (or quieter) in between does not pass for a wrong prediction (ratios, not times).
    """
    before = estimator.estimate(reference).latency_ms
    now = profile_choice(workload, settings, reference).totals.time_ms
    return now.median / before if now is not None and before > 0 else 1.0


@dataclass
class Verifier:
    """Applies and measures candidates; what it measures refines the estimates, and a refuted
    cost-model prediction is fed back into the sweep's store."""

    workload: Workload
    settings: Settings
    checker: OutputChecker
    max_error: float
    limits: dict[str, float]
    power: float | None
    drift: float
    request: TuneRequest
    estimator: Estimator
    feedback: int = 0  # measurements fed back into the store

    def verify(self, candidate: Candidate) -> Verification:
        verification = self._measure(candidate)
        changes_layers = verification.choices.changes_heads() or verification.choices.checkpoint
        if verification.profile is not None and not changes_layers:  # it refines later estimates
            self.estimator.add(candidate.problem.value[0], verification.profile)
        if verification.contradicted and isinstance(self.estimator, CostModelEstimator):
            self.feedback += _feed_back(
                self.workload, self.settings, self.estimator, verification, self.request.profiles_dir
            )
        return verification

    def _measure(self, candidate: Candidate) -> Verification:
        """Apply, measure and judge one candidate against its prediction and the limits."""
        workload, settings, checker, drift = self.workload, self.settings, self.checker, self.drift
        choice, _ = candidate.problem.value
        choices = plan_choices(candidate, settings)
        predicted = predicted_figures(candidate)
        if choice.world_size > 1:
            reason = f"needs {choice.world_size} devices"
            return Verification(candidate, choices, predicted, None, False, reason, can_run=False)
        transform = layer_transform(workload, settings, choices)
        try:
            profile = profile_choice(workload, settings, choice, transform)
            finite, error = checker.check(choice.dtype, choice.backend)
            quality = checker.check("fp32", choice.backend, transform)[1] if choices.changes_heads() else None
        except PlanRejected as exc:
            return Verification(candidate, choices, predicted, None, False, str(exc))
        micro_steps = settings.batch_size // choice.batch_size
        measured = figures_of(profile, micro_steps, settings.batch_size, self.power)
        measured.finite, measured.max_error, measured.quality_loss = finite, error, quality
        reasons = []
        if not finite:
            reasons.append("outputs are not finite")
        elif error > self.max_error and choice.dtype != "fp32":
            reasons.append(f"output error {error:.2g} exceeds {self.max_error:g}")
        for metric, limit in self.limits.items():
            value = getattr(measured, metric)
            if value is not None and value > limit:
                reasons.append(f"measured {metric} {value:.4g} exceeds the limit {limit:.4g}")
        assert measured.latency_ms is not None and predicted.latency_ms is not None
        expected = predicted.latency_ms * drift
        sigma = math.hypot((predicted.latency_sigma_ms or 0.0) * drift, measured.latency_sigma_ms or 0.0)
        sigmas = self.request.contradiction_sigmas
        contradicted = contradiction(expected, sigma, measured.latency_ms, sigmas)
        if contradicted:
            reasons.append(
                f"measured {measured.latency_ms:.3g} ms vs predicted {predicted.latency_ms:.3g} ms "
                f"(x{drift:.2f} for the machine's drift) ± {sigma:.2g} ms"
            )
        memory_sigma = predicted.memory_sigma_bytes or 0.0
        if (
            predicted.memory_bytes
            and measured.memory_bytes is not None
            and contradiction(predicted.memory_bytes, memory_sigma, measured.memory_bytes, sigmas)
        ):
            reasons.append(f"measured memory {measured.memory_bytes:.4g} B vs predicted {predicted.memory_bytes:.4g} B")
        return Verification(
            candidate, choices, predicted, measured, not reasons, "; ".join(reasons), profile, contradicted=contradicted
        )


def _could_win(candidate: Candidate, verifications: Sequence[Verification], objective: str, drift: float) -> bool:
    """False when a latency-bound candidate's prediction, even one standard deviation better,
    is slower than a plan already measured and accepted: measuring it cannot change the winner."""
    accepted = [v.measured.latency_ms for v in verifications if v.accepted and v.measured and v.measured.latency_ms]
    if objective not in ("latency", "throughput") or not accepted:
        return True
    predicted = predicted_figures(candidate)
    if predicted.latency_ms is None:
        return True
    return (predicted.latency_ms - (predicted.latency_sigma_ms or 0.0)) * drift < min(accepted)


def _untried(result: SearchResult, verifications: Sequence[Verification], settings: Settings) -> list[Candidate]:
    """The ranked candidates that no verification has measured yet."""
    tried = {repr(v.choices) for v in verifications}
    return [c for c in result.ranked if repr(plan_choices(c, settings)) not in tried]


def _choose(
    result: SearchResult,
    verifications: list[Verification],
    request: TuneRequest,
    baseline: Profile,
    settings: Settings,
    baseline_figures: PlanFigures,
) -> tuple[Plan | None, Verification | None]:
    if not result.ranked:
        return None, None
    notes = []
    if verifications:
        accepted = [v for v in verifications if v.accepted and v.measured is not None]
        if accepted:
            winner = min(accepted, key=lambda v: objective_value(v.measured, request.objective))
        else:
            unverifiable = [v for v in verifications if not v.can_run]
            if not unverifiable:
                return None, None
            winner = unverifiable[0]
            notes.append(f"not verified on this machine: {winner.reason}")
    else:
        best = result.ranked[0]
        winner = Verification(best, plan_choices(best, settings), predicted_figures(best), None, False, "")
        notes.append("not verified: --no-apply")
    if request.budget.max_error is None and winner.choices.dtype != "fp32":
        notes.append(f"precision accepted within the default max error {DEFAULT_MAX_ERROR:g}")
    if request.budget.max_quality_loss is None and winner.choices.changes_heads():
        notes.append(f"head changes accepted within the default max quality loss {DEFAULT_MAX_QUALITY_LOSS:g}")
    plan = Plan(
        workload=baseline.workload,
        settings=settings,
        device=settings.device,
        objective=request.objective,
        choices=winner.choices,
        budgets=request.budget,
        predicted=winner.predicted,
        measured=winner.measured,
        baseline=baseline_figures,
        verified=winner.accepted and winner.measured is not None,
        knobs=list(request.knobs),
        solver=", ".join(result.solvers),
        machine_fingerprint=machine_info().fingerprint(),
        created=timestamp(),
        attnprof_version=__version__,
        notes=notes,
    )
    return plan, winner


def pareto_points(outcome: TuneOutcome) -> list[ParetoPoint]:
    """The predicted frontier for the plan record, with the chosen plan marked (and added when
    measurement picked a plan off the frontier)."""
    chosen = outcome.winner.candidate if outcome.winner is not None else None

    def is_chosen(c: Candidate) -> bool:  # the frontier holds equal candidates, not the same objects
        return chosen is not None and (c.describe(), c.totals) == (chosen.describe(), chosen.totals)

    points = [
        ParetoPoint(c.describe(), dict(c.totals), c.feasible(outcome.limits), chosen=is_chosen(c))
        for c in outcome.search.frontier
    ]
    if chosen is not None and not any(p.chosen for p in points):
        points.append(
            ParetoPoint(chosen.describe(), dict(chosen.totals), chosen.feasible(outcome.limits), True, False)
        )
    return points
