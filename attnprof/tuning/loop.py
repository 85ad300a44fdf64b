"""Tune: baseline -> plan space -> predicted costs -> optimizer -> verified by measurement -> Plan.

1. The workload is profiled as it runs (the baseline).
2. `space.build_space` lists the valid plans for the allowed knobs. Precisions are screened by a
   real forward pass against the fp32 reference: non-finite outputs, or outputs beyond
   `--max-error`, remove the precision with that reason.
3. An `estimate.Estimator` predicts one micro-step of each global choice (backend, precision,
   micro-batch, threads); `price.Pricing` turns the predictions into the optimizer's problems,
   with the per-layer knobs and sharding.
4. `optimize.search` ranks the plans under the budget (exit 5 with the binding limit when none fits).
5. `verify.Verifier` applies the top candidates as `attnprof apply` would and measures them;
   a candidate is rejected only by its own measurement (a budget broken, non-finite outputs, an
   error or quality loss beyond its bound). What is measured re-prices the estimates; when every
   candidate of a round is rejected, the search runs again with it. The survivors and the
   baseline are then timed in interleaved rounds: the winner is the fastest measured plan, or,
   among plans that measure the same within the noise, the one that changes least.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnprof.errors import EnvironmentUnsupported, NoFeasiblePlan, PlanRejected
from attnprof.machine import machine_info
from attnprof.plans.discover import discover
from attnprof.plans.records import (
    ALL_LAYERS,
    DEFAULT_MAX_ERROR,
    DEFAULT_MAX_QUALITY_LOSS,
    Budget,
    ParetoPoint,
    Plan,
    PlanChoices,
    PlanFigures,
)
from attnprof.plans.sharding import tensor_parallel_blocker
from attnprof.profiling.progress import StageBar, stages
from attnprof.profiling.records import LayerStats, Profile
from attnprof.profiling.run import restored_threads, run_profile
from attnprof.settings import Settings
from attnprof.store import DEFAULT_PROFILE_DIR, timestamp
from attnprof.targets.hf import attn_implementations
from attnprof.targets.workload import Workload
from attnprof.tuning.budget import CONTRADICTION_SIGMAS
from attnprof.tuning.estimate import (
    CostModelEstimator,
    Estimator,
    ProbeEstimator,
    layer_part,
    measured_settings,
    reference_choice,
    saved_cost_model,
)
from attnprof.tuning.history import TuneHistory
from attnprof.tuning.launch import measure_sharded
from attnprof.tuning.optimize import OBJECTIVE_METRIC, Candidate, SearchResult, search
from attnprof.tuning.price import Contribution, LayerBasis, Pricing, knob_contributions, plan_choices, predicted_figures
from attnprof.tuning.sharding import LinkLike
from attnprof.tuning.space import (
    AttentionLayout,
    DeviceFacts,
    Exclusion,
    GlobalChoice,
    LayerOption,
    PlanSpace,
    build_space,
)
from attnprof.tuning.verify import (
    Calibration,
    CandidateMeasurement,
    OutputChecker,
    Verifier,
    change_count,
    figures_of,
)
from attnprof.version import __version__

# Search-and-verify rounds: when every candidate of a round is rejected, the search runs again with
# the rejected measurements in the estimates and verifies the next best untried candidates.
VERIFY_ROUNDS = 3
VERIFY_SECONDS = 20.0  # the interleaved comparison's time budget, when the ranking stays unresolved
# Untried plans one global knob away from the best measured one, measured after the top candidates
# when their prediction could still beat it: a surrogate misled by a burst of load during the
# probes ranks the optimum just outside the top k, next to a plan it did rank.
NEIGHBOURS = 2
COULD_WIN_SIGMAS = 2.0  # a candidate predicted further behind the best than this is not measured (one-sided 2.3%)


@dataclass
class TuneRequest:
    budget: Budget
    objective: str
    knobs: list[str]
    top_k: int = 3
    pareto: bool = False
    verify: bool = True
    launch: bool = True  # measure sharded candidates under torchrun where this machine has the ranks
    link: LinkLike | None = None
    use_cost_model: bool = True  # use the model `attnprof fit` saved, where it covers a choice
    use_history: bool = True  # price choices from what earlier runs measured (tuning.history) instead of probing
    contradiction_sigmas: float = CONTRADICTION_SIGMAS  # how far a measurement may fall behind its prediction
    verify_seconds: float = VERIFY_SECONDS  # time the interleaved comparison may take
    profiles_dir: Path = DEFAULT_PROFILE_DIR
    backends: tuple[str, ...] | None = None  # the backend knob's values (None: the SDPA kernels)


@dataclass
class TuneOutcome:
    baseline: Profile
    baseline_figures: PlanFigures
    space: PlanSpace
    excluded: list[Exclusion]
    search: SearchResult
    verifications: list[CandidateMeasurement]
    plan: Plan | None  # None when nothing fits or nothing survived verification
    limits: dict[str, float]
    measurements: int  # configurations profiled, the baseline included
    estimator_source: str
    winner: CandidateMeasurement | None = None
    rounds: int = 0  # interleaved rounds the comparison of the survivors took
    calibration: Calibration = field(default_factory=Calibration)  # the predictions' σ against measurements
    contributions: list[Contribution] = field(default_factory=list)


def objective_value(figures: PlanFigures, objective: str) -> float:
    if objective == "throughput":
        return -(figures.throughput or 0.0)
    value = getattr(figures, OBJECTIVE_METRIC[objective])
    return math.inf if value is None else float(value)


def tune(
    workload: Workload, settings: Settings, request: TuneRequest, estimator: Estimator | None = None
) -> TuneOutcome:
    """The tuning loop; the result holds the plan, or the reason there is none.

    Its overall bar (on a terminal) names the stage and counts work in units of one profile of
    the baseline, so the time left covers the stages to come: the probes, the candidates, and
    the comparison's time budget."""
    with stages("tune: baseline profile") as bar, restored_threads():  # candidates set their own
        return _tune(workload, settings, request, estimator, bar)


def _tune(
    workload: Workload, settings: Settings, request: TuneRequest, estimator: Estimator | None, bar: StageBar
) -> TuneOutcome:
    budget, objective = request.budget, request.objective
    started = time.perf_counter()
    baseline = run_profile(workload, settings)
    unit_s = max(time.perf_counter() - started, 1e-3)  # one profile: the bar's unit of work
    bar.describe("tune: screening the space")
    energy = baseline.totals.energy_j
    if (objective == "energy" or budget.energy_j is not None) and energy is None:
        raise EnvironmentUnsupported(f"energy cannot be predicted here: {baseline.totals.energy_reason}")
    assert baseline.totals.time_ms is not None
    power = energy / (baseline.totals.time_ms.median * 1e-3) if energy else None
    layers = baseline.attention_layers()
    facts = DeviceFacts.probe(settings.device)
    checker = OutputChecker(workload, settings)
    by_name = {layer.name: layer for layer in baseline.layers}
    blocks = {site.name: site.block_path or "" for site in discover(checker.reference_model).sites}
    layouts = [
        AttentionLayout(
            layer.name,
            layer.attention.num_heads,
            layer.attention.num_kv_heads,
            layer.attention.head_dim,
            block=blocks.get(layer.name, "") if blocks.get(layer.name) in by_name else "",
            mlp=block_mlp(by_name, blocks.get(layer.name, "")),
        )
        for layer in layers
        if layer.attention is not None
    ]
    space = build_space(
        facts,
        layouts,
        settings,
        request.knobs,
        gpus=budget.gpus,
        blocks=max(len(layouts), 1),
        tensor_parallel_blocker=tensor_parallel_blocker(checker.reference_model) if budget.gpus > 1 else None,
        backends=request.backends,
        attn_implementations=attn_implementations(workload),
        larger_batches=objective == "throughput",
    )
    excluded = list(space.excluded)
    max_error = budget.max_error if budget.max_error is not None else DEFAULT_MAX_ERROR
    space.globals = _screen_precisions(space.globals, checker, max_error, excluded)

    if not space.globals:
        reasons = "; ".join(f"{e.knob} {e.value}: {e.reason}" for e in excluded)
        raise NoFeasiblePlan(f"no valid plan on this device for knobs {', '.join(request.knobs)} ({reasons})")
    history: TuneHistory | None = None
    sigma_scale = 1.0  # what the predictions' σ is scaled by before this run's own calibration
    if estimator is None:
        history = TuneHistory.of(workload, settings)
        probes = ProbeEstimator(workload, settings, space.globals, history if request.use_history else None, baseline)
        if measured_settings(settings, probes.reference) == settings:
            probes.add(probes.reference, baseline)  # the baseline is the reference probe
        cost_model = saved_cost_model(workload, request.profiles_dir) if request.use_cost_model else None
        estimator = CostModelEstimator(cost_model, settings, probes) if cost_model is not None else probes
        if request.use_history:
            sigma_scale = history.sigma_scale()  # how wide σ turned out in earlier runs
            estimator.calibrate(sigma_scale)
    probe_units = len(estimator.probes()) if isinstance(estimator, ProbeEstimator) else 1
    total = 2 + probe_units + request.top_k + 1 + (request.verify_seconds / unit_s if request.verify else 0)
    bar.update(2, total)
    bar.describe("tune: estimates")
    pricing = Pricing(
        settings=settings,
        baseline=baseline,
        space=space,
        estimator=estimator,
        layer_bases={
            layout.name: LayerBasis.from_layer(layer, layout, by_name)
            for layer, layout in zip(layers, layouts, strict=True)
        },
        power_w=power,
        link=request.link,
    )
    limits = budget.limits()
    if any(o.prune or o.kv_heads is not None for options in space.layer_options.values() for o in options):
        limits["quality_loss"] = budget.max_quality_loss or DEFAULT_MAX_QUALITY_LOSS
        pricing.quality = _layer_quality(space, checker, estimator_backend(space, settings))
        _drop_lossy_options(space, pricing.quality, limits["quality_loss"], excluded)
    problems = pricing.problems()
    excluded.extend(pricing.excluded)
    bar.describe("tune: searching")
    result = search(problems, limits, objective, k=request.top_k, pareto_points=8 if request.pareto else 0)
    done = 2 + probe_units
    bar.update(done, total)
    baseline_figures = figures_of(baseline, 1, settings.batch_size, power)
    verifications: list[CandidateMeasurement] = []
    feedback = rounds = 0
    calibration = Calibration()
    contests: list[str] = []
    history_notes: list[str] = []  # why this run's measurements could not be remembered
    if result.ranked and request.verify:
        verifier = Verifier(
            workload,
            settings,
            checker,
            max_error,
            limits.get("quality_loss", budget.max_quality_loss or DEFAULT_MAX_QUALITY_LOSS),
            limits,
            power,
            estimator,
            contradiction_sigmas=request.contradiction_sigmas,
            profiles_dir=request.profiles_dir,
            budget_s=request.verify_seconds,
        )
        # The plan that changes nothing is always in the running, measured as the baseline: no
        # candidate wins by merely being measured when it is no faster than the workload as it is.
        unchanged = _unchanged_candidate(pricing, settings, space)
        as_it_runs = verifier.as_it_runs(unchanged, baseline) if unchanged else None
        verifications += [as_it_runs] if as_it_runs else []
        candidates = _worth_measuring(result.ranked, as_it_runs, settings, objective)
        for _ in range(VERIFY_ROUNDS):
            for i, candidate in enumerate(candidates, 1):
                bar.describe(f"tune: measuring candidate {i}/{len(candidates)}: {candidate.describe()}")
                verifications.append(verifier.measure(candidate))
                done += 1
                bar.update(done, max(total, done))
            if not candidates or any(v.accepted or not v.can_run for v in verifications if v.choices != PlanChoices()):
                break
            # Every candidate was rejected: search again, priced with what was just measured.
            again = search(pricing.problems(), limits, objective, k=request.top_k + len(verifications))
            candidates = _worth_measuring(_untried(again, verifications, settings), as_it_runs, settings, objective)
            candidates = candidates[: request.top_k]
        for candidate in _neighbours(pricing, limits, request, verifications, settings):
            bar.describe(f"tune: measuring a neighbour of the best: {candidate.describe()}")
            verifications.append(verifier.measure(candidate))
            done += 1
            bar.update(done, max(total, done))
        if request.launch:
            measure_sharded(verifications, baseline.workload, settings, objective)  # tuning/launch.py
        bar.describe(f"tune: comparing {sum(v.accepted for v in verifications)} candidate(s) with the baseline")
        verifier.compare(baseline_figures, verifications)
        bar.update(total, total)
        feedback, rounds, calibration = verifier.feedback, verifier.rounds, verifier.calibration
        contests = verifier.contests
        if calibration.points >= 2:  # the held-out errors say how wide σ really is: later prices use it
            estimator.calibrate(calibration.scale)
        if history is not None:
            history_notes = _remember(history, estimator, verifier, verifications, baseline, sigma_scale)
    verified = sum(v.profile is not None and not v.reused for v in verifications)
    measurements = 1 + estimator.measurements + feedback + verified
    plan, winner = _choose(result, verifications, request, baseline, settings, baseline_figures)
    if plan is not None:
        plan.notes.extend(contests)  # how each contested tie was settled: its rounds, why it stopped
    if plan is not None and calibration.points:
        plan.notes.append(calibration.describe())
    if plan is not None and history is not None:
        plan.notes.extend([history.note] if history.note and request.use_history else [])
        plan.notes.extend(history_notes)
    if plan is not None and _reload_breaks(checker.reference_model, plan.choices):
        plan.notes.append(
            "heads differ per layer: transformers' from_pretrained cannot reload the pruned model (it "
            "builds every layer from one head count); attnprof.api.from_pretrained_pruned(ModelClass, "
            "folder) reloads what save_pretrained wrote"
        )
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
        rounds=rounds,
        calibration=calibration,
        contributions=knob_contributions(pricing, winner.candidate) if winner else [],
    )


def block_mlp(by_name: dict[str, LayerStats], block: str) -> str:
    """The outermost module the profile counts as an MLP inside `block` ("" when none)."""
    inside = [name for name, layer in by_name.items() if block and name.startswith(f"{block}.") and layer.kind == "mlp"]
    return min(inside, key=lambda name: (name.count("."), name), default="")


def estimator_backend(space: PlanSpace, settings: Settings) -> str:
    return reference_choice(settings, space.globals).backend


def _layer_quality(
    space: PlanSpace, checker: OutputChecker, backend: str
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
            try:
                finite, error = checker.check(dataclasses.replace(alone, backend=backend))
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
                finite, error = checker.check(PlanChoices(dtype=choice.dtype, precision="cast", backend=choice.backend))
                if not finite:
                    verdicts[key] = f"{choice.dtype} outputs are not finite on the example inputs"
                elif error > max_error:
                    verdicts[key] = f"{choice.dtype} output error {error:.2g} exceeds --max-error {max_error:g}"
            if verdicts[key]:
                excluded.append(Exclusion("dtype", f"{choice.dtype} with {choice.backend}", verdicts[key]))
        if verdicts[key] is None:
            kept.append(choice)
    return kept


def _reload_breaks(model: torch.nn.Module, choices: PlanChoices) -> bool:
    """A transformers model whose attention layers the plan leaves with different head counts."""
    if not choices.prune_heads or not hasattr(model, "save_pretrained") or ALL_LAYERS in choices.prune_heads:
        return False
    counts = {len(v) if isinstance(v, list) else v for v in choices.prune_heads.values()}
    return len(counts) > 1 or len(choices.prune_heads) < len(discover(model).sites)


def _unchanged_candidate(pricing: Pricing, settings: Settings, space: PlanSpace) -> Candidate | None:
    """The candidate of the reference choice with no per-layer change: the prediction of the
    plan that changes nothing (None when the reference is not in the space)."""
    reference = reference_choice(settings, space.globals)
    problem = pricing.problem(reference) if reference in space.globals else None
    if problem is None:
        return None
    unchanged = [[i for i, o in enumerate(g.options) if o.value == LayerOption()] for g in problem.groups]
    if not all(unchanged):
        return None
    choice = tuple(indices[0] for indices in unchanged)
    return Candidate(problem, choice, problem.totals(choice), "reference")


def _runs_as_it_is(choices: PlanChoices, settings: Settings) -> bool:
    """A plan that builds the workload as it runs (no change counted, and a cast to fp32 of an fp32
    model is none): the plan that changes nothing stands for it."""
    return change_count(choices, settings) == 0 and choices.dtype == "fp32" and layer_part(choices) == PlanChoices()


def _worth_measuring(
    ranked: Sequence[Candidate], as_it_runs: CandidateMeasurement | None, settings: Settings, objective: str
) -> list[Candidate]:
    """The candidates that could win, less those that build the workload as it runs: the plan
    that changes nothing (`as_it_runs`) measured them, and when it was rejected so would they be."""

    def left_to_it(candidate: Candidate) -> bool:
        return as_it_runs is not None and _runs_as_it_is(plan_choices(candidate, settings), settings)

    if as_it_runs is not None and not as_it_runs.accepted:
        ranked = [c for c in ranked if not left_to_it(c)]
    return [c for c in _could_win(ranked, objective) if not left_to_it(c)]


def _could_win(ranked: Sequence[Candidate], objective: str) -> list[Candidate]:
    """The ranked candidates worth measuring: the best predicted, and each other that could still
    beat it, its predicted latency less than COULD_WIN_SIGMAS combined σ behind (all of them for
    objectives other than latency, and when sharded plans are among them: launched, they are
    priced by a model of the link, not measured here). A prediction sure to lose costs a
    measurement and cannot change the winner."""
    if objective != "latency" or any(c.problem.value[0].world_size > 1 for c in ranked):
        return list(ranked)

    def log_latency(candidate: Candidate) -> tuple[float, float]:
        figures = predicted_figures(candidate)
        latency = figures.latency_ms if figures.latency_ms else math.inf
        return math.log(latency), (figures.latency_sigma_ms or 0.0) / latency  # relative σ: σ of the log

    if not ranked:
        return []
    best, best_sigma = log_latency(ranked[0])
    kept = [ranked[0]]
    for candidate in ranked[1:]:
        mean, sigma = log_latency(candidate)
        if mean - best < COULD_WIN_SIGMAS * math.hypot(sigma, best_sigma):
            kept.append(candidate)
    return kept


def _remember(
    history: TuneHistory,
    estimator: Estimator,
    verifier: Verifier,
    verifications: Sequence[CandidateMeasurement],
    baseline: Profile,
    sigma_scale: float,
) -> list[str]:
    """Append this run's interleaved ratios to the baseline to the history: the probes', then the
    compared candidates'. Returns a note when the history could not be written."""
    probes = estimator.probes if isinstance(estimator, CostModelEstimator) else estimator
    if not isinstance(probes, ProbeEstimator):
        return []
    unscaled_z = [z * sigma_scale for z in verifier.held_out_z]
    ratios = probes.log_ratios()
    ratios.update({choice: step - verifier.baseline_log_step for choice, step in verifier.log_steps.items()})
    profiles = dict(probes.profiles)
    profiles.update({v.candidate.problem.value[0]: v.profile for v in verifications
                     if v.candidate.problem.value[0] in verifier.log_steps and v.profile is not None})
    note = history.append(baseline, ratios, profiles, unscaled_z)
    return [note] if note else []


def _neighbours(
    pricing: Pricing,
    limits: dict[str, float],
    request: TuneRequest,
    verifications: Sequence[CandidateMeasurement],
    settings: Settings,
) -> list[Candidate]:
    """Up to NEIGHBOURS untried candidates whose global choice differs from the best measured
    plan's in one knob and whose prediction, re-priced by what was measured, is within 2σ of
    beating that plan's measurement; the most promising first."""
    if request.objective not in ("latency", "throughput"):
        return []
    measured = [v for v in verifications if v.accepted and v.measured is not None and v.measured.latency_ms]
    if not measured:
        return []
    best = min(measured, key=lambda v: objective_value(v.measured, request.objective))  # type: ignore[arg-type]
    best_choice = best.candidate.problem.value[0]
    seen = {v.candidate.problem.value[0] for v in verifications}
    again = search(pricing.problems(), limits, request.objective, k=len(pricing.space.globals) + len(verifications))
    close = []
    for candidate in _untried(again, verifications, settings):
        choice = candidate.problem.value[0]
        apart = sum(getattr(choice, f.name) != getattr(best_choice, f.name) for f in dataclasses.fields(choice))
        if apart != 1 or choice in seen:
            continue
        seen.add(choice)
        predicted = predicted_figures(candidate)
        spread = 2 * (predicted.latency_sigma_ms or 0.0) / (predicted.latency_ms or math.inf)
        optimistic = dataclasses.replace(
            predicted,
            latency_ms=(predicted.latency_ms or math.inf) * max(1 - spread, 0.0),
            throughput=(predicted.throughput or 0.0) * (1 + spread),
        )
        if objective_value(optimistic, request.objective) < objective_value(best.measured, request.objective):  # type: ignore[arg-type]
            close.append(candidate)
    return close[:NEIGHBOURS]


def _untried(
    result: SearchResult, verifications: Sequence[CandidateMeasurement], settings: Settings
) -> list[Candidate]:
    """The ranked candidates that no verification has measured yet."""
    tried = {repr(v.choices) for v in verifications}
    return [c for c in result.ranked if repr(plan_choices(c, settings)) not in tried]


def _choose(
    result: SearchResult,
    verifications: list[CandidateMeasurement],
    request: TuneRequest,
    baseline: Profile,
    settings: Settings,
    baseline_figures: PlanFigures,
) -> tuple[Plan | None, CandidateMeasurement | None]:
    if not result.ranked:
        return None, None
    notes = []
    if verifications:
        accepted = [v for v in verifications if v.accepted and v.measured is not None]
        if accepted:
            winner = _best_measured(accepted, request.objective, settings)
            if winner.speedup is not None and not winner.speedup.significant:
                notes.append(
                    f"no significant speed-up over the baseline: x{winner.speedup.value:.3f} "
                    f"[{winner.speedup.low:.3f}, {winner.speedup.high:.3f}] over {winner.speedup.rounds} rounds"
                )
        else:
            unverifiable = [v for v in verifications if not v.can_run]
            if not unverifiable:
                return None, None
            winner = unverifiable[0]
            notes.append(f"not verified on this machine: {winner.reason}")
    else:
        best = result.ranked[0]
        winner = CandidateMeasurement(best, plan_choices(best, settings), predicted_figures(best), None, False, "")
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
        budgets=dataclasses.replace(  # the bounds it was accepted within, for apply --verify to hold it to
            request.budget,
            max_error=request.budget.max_error or DEFAULT_MAX_ERROR,
            max_quality_loss=request.budget.max_quality_loss or DEFAULT_MAX_QUALITY_LOSS,
        ),
        predicted=winner.predicted,
        measured=winner.measured,
        baseline=baseline_figures,
        speedup=winner.speedup,
        verified=winner.accepted and winner.measured is not None,
        knobs=list(request.knobs),
        solver=", ".join(result.solvers),
        machine_fingerprint=machine_info().fingerprint(),
        created=timestamp(),
        attnprof_version=__version__,
        notes=notes,
    )
    return plan, winner


def _best_measured(accepted: list[CandidateMeasurement], objective: str, settings: Settings) -> CandidateMeasurement:
    """The best measured plan; among plans whose timings do not differ significantly (tied, from
    the interleaved rounds), the one that changes least, so noise never picks a needless change."""

    def measured(v: CandidateMeasurement) -> float:
        assert v.measured is not None
        return objective_value(v.measured, objective)

    if objective == "memory":
        return min(accepted, key=measured)
    tied = [v for v in accepted if v.tied] or accepted
    return min(tied, key=lambda v: (change_count(v.choices, settings), measured(v)))


def pareto_points(outcome: TuneOutcome) -> list[ParetoPoint]:
    """The predicted frontier for the plan record, with the chosen plan marked (and added when
    measurement picked a plan off the frontier)."""
    chosen = outcome.winner.candidate if outcome.winner is not None else None

    def is_chosen(c: Candidate) -> bool:  # the frontier holds equal candidates, not the same objects
        return chosen is not None and (c.describe(), c.totals) == (chosen.describe(), chosen.totals)

    rejected = {
        (v.candidate.describe(), tuple(sorted(v.candidate.totals.items()))): v.reason or "rejected"
        for v in outcome.verifications
        if v.can_run and not v.accepted
    }
    points = [
        ParetoPoint(
            c.describe(), dict(c.totals), c.feasible(outcome.limits), chosen=is_chosen(c),
            rejected=rejected.get((c.describe(), tuple(sorted(c.totals.items())))),
        )
        for c in outcome.search.frontier
    ]
    if chosen is not None and not any(p.chosen for p in points):
        points.append(
            ParetoPoint(chosen.describe(), dict(chosen.totals), chosen.feasible(outcome.limits), True, False)
        )
    return points
