"""Global choices priced into the optimizer's problems, and ranked candidates read back as plans.

A choice's step is its estimate times the micro-steps per replica; sharding goes through the
alpha-beta model of `sharding`. Per-layer knobs change a layer's cost in proportion to the FLOPs
and parameters they remove (heads) or the forward they repeat (checkpointing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from attnprof.errors import EnvironmentUnsupported
from attnprof.plans.records import PlanChoices, PlanFigures
from attnprof.profiling.records import LayerStats, Profile
from attnprof.settings import Settings
from attnprof.tuning.estimate import ELEMENT_BYTES, Estimator, StepEstimate, reference_choice
from attnprof.tuning.optimize import Candidate, Group, Option, Problem
from attnprof.tuning.sharding import LinkLike, ShardedCost, StepShape, sharded_step
from attnprof.tuning.space import (
    GLOBAL_KINDS,
    AttentionLayout,
    Exclusion,
    GlobalChoice,
    LayerOption,
    PlanSpace,
    knob_names,
)


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
    # Module path -> (forward ms, activation bytes) of what checkpointing may recompute: the
    # attention layer, its block's MLP, its block.
    recompute: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_layer(
        cls, layer: LayerStats, layout: AttentionLayout, by_name: Mapping[str, LayerStats] | None = None
    ) -> LayerBasis:
        info = layer.attention
        assert info is not None
        # Parameters of q, k, v, o: hidden x head_dim x (2 query-side + 2 key/value-side heads).
        width = layout.head_dim * (2 * layout.num_heads + 2 * layout.num_kv_heads)
        hidden = max(round(layer.params / width), 1) if layer.params else layout.num_heads * layout.head_dim
        around = {p: by_name[p] for p in (layout.mlp, layout.block) if by_name and p in by_name}
        modules = {layout.name: layer, **around}
        return cls(
            layout=layout,
            forward_ms=_forward_ms(layer),
            backward_ms=layer.backward_time_ms.median if layer.backward_time_ms else 0.0,
            activation_bytes=float(layer.memory_bytes),
            hidden=hidden,
            tokens=max(info.batch_size, 1) * info.q_len,
            core_flops=float(info.flops),
            recompute={path: (_forward_ms(m), float(m.memory_bytes)) for path, m in modules.items()},
        )

    def recomputed(self, path: str) -> tuple[float, float]:
        """(forward ms, activation bytes) of the module checkpointing at `path` recomputes."""
        return self.recompute.get(path, (self.forward_ms, self.activation_bytes))

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


def _forward_ms(layer: LayerStats) -> float:
    return layer.time_ms.median if layer.time_ms else 0.0


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
        # The module's saved activations are dropped and its forward runs again in backward;
        # what pruning removes from the attention layer it holds is not recomputed.
        forward, activations = basis.recomputed(option.checkpoint)
        if option.checkpoint != basis.layout.mlp:
            forward -= share * basis.forward_ms
            activations -= share * basis.activation_bytes
        latency += max(forward, 0.0) * time_scale
        memory -= max(activations, 0.0) * activation_scale
    return {"latency_ms": latency, "memory_bytes": memory, "quality_loss": quality_loss}


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
        replica_batch = batch // choice.data_parallel
        if per_replica == 0 and replica_batch and choice.batch_size % replica_batch == 0:
            per_replica, remainder = 1, 0  # a larger batch (throughput): one step of more samples
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
            samples=step_samples(self.settings, choice.batch_size * choice.data_parallel),
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
        element = ELEMENT_BYTES[choice.dtype]
        activation_scale = choice.batch_size / self.settings.batch_size * element / ELEMENT_BYTES[self.settings.dtype]
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
        # Attention layers stand for their blocks; what the blocks do besides attention (their share
        # of the rest, as the baseline measured it) is spread evenly over them.
        rest = max(estimate.latency_ms - sum(blocks), 0.0)
        inside = block_share_of_rest(self.baseline, self.space.layouts)
        per_block_rest = rest * inside / max(len(blocks), 1)
        param_bytes = (
            self.baseline.totals.param_bytes
            * ELEMENT_BYTES[choice.dtype]
            / ELEMENT_BYTES[self.settings.dtype]
            * (2 if self.settings.mode == "train" else 1)
        )
        hidden = next(iter(self.layer_bases.values())).hidden if self.layer_bases else 0
        tokens = next(iter(self.layer_bases.values())).tokens if self.layer_bases else 0
        boundary = tokens * choice.batch_size / self.settings.batch_size * hidden * ELEMENT_BYTES[choice.dtype]
        return StepShape(
            block_ms=tuple(b + per_block_rest for b in blocks),
            other_ms=rest * (1.0 - inside),
            param_bytes=param_bytes,
            activation_bytes=max(estimate.memory_bytes - param_bytes, 0.0),
            boundary_bytes=boundary,
            micro_batches=micro_steps,
            train=self.settings.mode == "train",
            replicated_param_bytes=param_bytes * (1.0 - tensor_parallel_share(self.baseline)),
            root_param_bytes=param_bytes * param_share_outside_blocks(self.baseline, self.space.layouts),
        )

    def _link(self) -> LinkLike:
        if self.link is None:
            raise EnvironmentUnsupported("sharding plans need an interconnect: pass --interconnect")
        return self.link


def block_share_of_rest(profile: Profile, layouts: Sequence[AttentionLayout]) -> float:
    """Of the model's time outside its attention layers, the share spent inside the repeated
    blocks around them (MLPs, norms, residuals): the blocks' inclusive time minus their attention
    layers', over the whole model's minus every attention layer's, from the baseline's per-layer
    steps (the hooks weigh on both alike). 0 when the profile names no block: the rest is then
    priced outside the blocks."""
    by_name = {layer.name: layer for layer in profile.layers}

    def inclusive_ms(name: str) -> float:
        layer = by_name.get(name)
        if layer is None or layer.time_ms is None:
            return 0.0
        return layer.time_ms.median + (layer.backward_time_ms.median if layer.backward_time_ms else 0.0)

    blocks = {layout.block for layout in layouts if layout.block and layout.block in by_name}
    inside = sum(inclusive_ms(block) for block in blocks) - sum(
        inclusive_ms(layout.name) for layout in layouts if layout.block in blocks
    )
    rest = inclusive_ms("") - sum(inclusive_ms(layout.name) for layout in layouts)
    return min(max(inside / rest, 0.0), 1.0) if blocks and rest > 0 else 0.0


def param_share_outside_blocks(profile: Profile, layouts: Sequence[AttentionLayout]) -> float:
    """Share of the parameters outside the repeated blocks (embeddings, head, final norm): what
    FSDP2's root unit holds, as plans/sharding.py shards a block per unit. 0 when the profile
    names no block (every parameter priced as a block's)."""
    by_name = {layer.name: layer for layer in profile.layers}
    blocks = {layout.block for layout in layouts if layout.block and layout.block in by_name}
    total = by_name[""].params if "" in by_name else 0
    if not blocks or total <= 0:
        return 0.0
    return min(max(1.0 - sum(by_name[block].params for block in blocks) / total, 0.0), 1.0)


def tensor_parallel_share(profile: Profile) -> float:
    """Share of the parameters tensor parallelism splits, as plans/sharding.py applies it: the
    attention layers' and the MLPs' (the outermost of each, so nothing is counted twice)."""
    total = profile.workload.parameter_count
    split = [layer for layer in profile.layers if layer.kind in ("attention", "mlp")]
    names = {layer.name for layer in split}
    outermost = [
        layer for layer in split
        if not any(layer.name.startswith(f"{other}.") for other in names if other != layer.name)
    ]
    return min(sum(layer.params for layer in outermost) / total, 1.0) if total else 1.0


def step_samples(settings: Settings, batch_size: int | None) -> int:
    """Samples one step of a plan processes: the workload's batch, or a larger batch the plan
    runs whole (throughput)."""
    return max(settings.batch_size, batch_size or 0)


def predicted_figures(candidate: Candidate) -> PlanFigures:
    """What the estimates promise of a candidate's step."""
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
    """The plan a candidate stands for; a global choice's fields are PlanChoices fields of the same name."""
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
            checkpoint.append(layer.checkpoint)
    unchanged_batch = choice.batch_size == settings.batch_size
    return PlanChoices(
        **{**dataclasses.asdict(choice), "batch_size": None if unchanged_batch else choice.batch_size},
        precision="cast",  # what was measured: the model's weights and inputs in that dtype
        prune_heads=prune,
        kv_heads=kv,
        checkpoint=checkpoint,
    )


@dataclass
class Contribution:
    """What one knob of the plan changes on its own, predicted against the reference choice."""

    knob: str
    change: str
    latency_ms: float
    memory_bytes: float


def knob_contributions(pricing: Pricing, candidate: Candidate) -> list[Contribution]:
    """Each changed global knob alone against the reference choice; per-layer knobs summed by kind."""
    choice, _ = candidate.problem.value
    reference = reference_choice(pricing.settings, pricing.space.globals)
    base = pricing.problem(reference)
    contributions = []
    for knob in knob_names(*GLOBAL_KINDS):
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
