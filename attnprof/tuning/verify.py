"""The top candidates measured for real, as `attnprof apply` builds them, then compared side by side.

Each candidate is applied to a freshly built model through plans.engine.apply_plan (the code
`attnprof apply` runs) and profiled: its outputs, error, quality loss and memory are judged
there. The survivors and the baseline are then timed in interleaved rounds (tuning.compare), so
their latencies, speed-ups and ties come from the same stretch of the machine's time. A
candidate is rejected only by its own measurement, never because its prediction was off: what
is measured re-prices the estimates instead, and a refuted cost-model prediction is fed back
into the sweep's store.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from attnprof import backends
from attnprof.costmodel.measure import measure_settings
from attnprof.costmodel.measurements import MeasurementStore, architecture_key, store_path
from attnprof.errors import PlanRejected
from attnprof.machine import machine_info
from attnprof.measure.device import resolve_device
from attnprof.plans.engine import Example, apply_plan, with_pruned_indices
from attnprof.plans.outputs import output_difference
from attnprof.plans.records import PlanChoices, PlanFigures, TimeRatio, budget_value
from attnprof.plans.verify import applied_settings, applied_workload, raise_not_applied
from attnprof.profiling.records import Profile
from attnprof.profiling.run import restored_threads, run_profile
from attnprof.settings import Settings
from attnprof.targets.workload import Workload
from attnprof.tuning.budget import CONTRADICTION_SIGMAS
from attnprof.tuning.compare import TimedSide, contest, interleave, paired_ratio, side_of
from attnprof.tuning.estimate import (
    CostModelEstimator,
    Estimator,
    global_part,
    layer_part,
    measured_settings,
    sigma_of,
)
from attnprof.tuning.optimize import Candidate
from attnprof.tuning.price import plan_choices, predicted_figures, step_samples
from attnprof.tuning.space import GlobalChoice

NOISE_FLOOR = 0.10  # relative: timings on a shared machine vary this much between runs at least
FIRST_SHARE = 0.5  # of the comparison's budget, for the rounds of every side; the rest settles ties


class OutputChecker:
    """Compares a changed model's outputs with the fp32 reference on the example inputs; the
    change is applied as `attnprof apply` applies it (plans.engine.apply_plan)."""

    def __init__(self, workload: Workload, settings: Settings):
        self.workload = workload
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.reference_model = workload.build_model(self.device, torch.float32).to(self.device).eval()
        self.inputs = workload.make_inputs(settings.batch_size, settings.seq_len, self.device, torch.float32)
        with torch.no_grad():
            self.reference = Example(*self.inputs).run(self.reference_model)

    def check(self, choices: PlanChoices) -> tuple[bool, float]:
        """(finite, relative error) of the outputs once `choices` (their model changes: precision,
        backend, heads, checkpointing) are applied to a copy of the reference model."""
        example = Example(*self.inputs)
        changes = dataclasses.replace(choices, batch_size=None, threads=0)
        model, report = apply_plan(copy.deepcopy(self.reference_model), changes, example, self.workload.loss_fn)
        raise_not_applied(report)
        with torch.no_grad():
            output = example.run(model.eval())
        difference = output_difference(self.reference, output)
        return difference.finite, difference.max_rel


def pin_heads(workload: Workload, settings: Settings, choices: PlanChoices) -> PlanChoices:
    """`choices` with heads to prune by importance replaced by the heads importance picks: scored
    once, on the workload's own inputs (the whole batch) and loss, on a fresh fp32 model, so that
    every later application of the plan removes the same heads."""
    if not any(isinstance(v, int) for v in choices.prune_heads.values()):
        return choices
    device = resolve_device(settings.device)
    model = workload.build_model(device, torch.float32).to(device)
    args, kwargs = workload.make_inputs(settings.batch_size, settings.seq_len, device, torch.float32)
    heads_only = PlanChoices(prune_heads=choices.prune_heads)
    _, report = apply_plan(model, heads_only, Example(args, kwargs), workload.loss_fn)
    raise_not_applied(report)
    return with_pruned_indices(choices, report)


@dataclass
class CandidateMeasurement:
    """A candidate as verification left it: measured (or why not), accepted or rejected, and why."""

    candidate: Candidate
    choices: PlanChoices  # as applied: heads to prune by importance pinned to the heads removed
    predicted: PlanFigures
    measured: PlanFigures | None
    accepted: bool
    reason: str  # why rejected, or what was noticed when accepted
    profile: Profile | None = None
    can_run: bool = True  # False: the plan needs devices this machine does not have
    contradicted: bool = False  # measured worse than predicted beyond the stated uncertainty
    speedup: TimeRatio | None = None  # baseline time / this plan's time, from the interleaved rounds
    tied: bool = False  # not significantly different from the fastest measured plan
    reused: bool = False  # its profile is the probe's of the same choice, not taken again


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


def contradiction(predicted: float, sigma: float, measured: float, sigmas: float = CONTRADICTION_SIGMAS) -> bool:
    """True when `measured` is worse than `predicted` beyond `sigmas` standard deviations (and the noise floor)."""
    allowance = max(sigmas * sigma, NOISE_FLOOR * abs(predicted))
    return measured - predicted > allowance


def change_count(choices: PlanChoices, settings: Settings) -> int:
    """How many things a plan changes about the workload as it runs: what "simpler" means when
    measured plans tie (each layer's head or checkpoint change counts once)."""
    count = sum(
        [
            choices.dtype != settings.dtype,
            choices.backend not in (backends.AUTO, settings.backend),
            choices.batch_size not in (None, settings.batch_size),
            choices.threads not in (0, settings.threads),
            choices.tensor_parallel > 1,
            choices.data_parallel > 1,
            choices.compile,
        ]
    )
    return count + len(choices.prune_heads) + len(choices.kv_heads) + len(choices.checkpoint)


def _feed_back(
    workload: Workload, settings: Settings, estimator: CostModelEstimator, refuted: CandidateMeasurement, folder: Path
) -> int:
    """A cost-model prediction the measurement refuted: the configuration is measured into the
    sweep's store, so the next `attnprof fit` learns from it. Returns the measurements taken."""
    choice = refuted.candidate.problem.value[0]
    if refuted.choices.changes_heads() or not estimator.covers(choice):
        return 0  # another architecture, or not the cost model's prediction
    architecture = architecture_key(workload)
    machine = machine_info().fingerprint()
    measurement = measure_settings(
        workload,
        measured_settings(settings, choice.single_device()),
        workload_fingerprint=architecture,
        machine_fingerprint=machine,
    )
    MeasurementStore(store_path(folder, workload.name or workload.target, architecture, machine)).append(measurement)
    return 1


def _z_score(v: CandidateMeasurement, drift: float) -> float | None:
    """(measured - predicted) / predicted σ, the prediction scaled by the machine's drift."""
    measured, predicted = v.measured, v.predicted
    if measured is None or measured.latency_ms is None or predicted.latency_ms is None:
        return None
    sigma = (predicted.latency_sigma_ms or 0.0) * drift
    return (measured.latency_ms - predicted.latency_ms * drift) / sigma if sigma > 0 else None


@dataclass
class Calibration:
    """How well the predictions' stated 1σ covered the measurements of candidates they were not
    fitted on (each verified candidate is held out until it is measured): about 68% when σ is
    honest. `scale` is the root-mean-square of the standardised errors (1 when σ is right)."""

    points: int = 0
    covered: int = 0
    scale: float = math.nan

    def describe(self) -> str:
        return (
            f"predictions: the stated 1σ covered {self.covered} of {self.points} held-out measured "
            f"candidate(s) (errors {self.scale:.2g}σ rms; honest σ: ~68%, 1σ)"
        )

    @classmethod
    def of(cls, z_scores: list[float]) -> Calibration:
        if not z_scores:
            return cls()
        covered = sum(abs(z) <= 1.0 for z in z_scores)
        return cls(len(z_scores), covered, math.sqrt(statistics.fmean(z * z for z in z_scores)))


@dataclass
class Verifier:
    """Applies and measures candidates, then times the baseline and the survivors side by side.

    A candidate is rejected only by its own measurement: non-finite outputs, an output error or
    quality loss beyond its bound, or a measured figure over a budget. A measurement that
    contradicts its prediction only re-prices the estimates (and, for a cost-model prediction,
    is fed back into the sweep's store)."""

    workload: Workload
    settings: Settings
    checker: OutputChecker
    max_error: float
    max_quality_loss: float
    limits: dict[str, float]
    power: float | None
    estimator: Estimator
    contradiction_sigmas: float  # how far a measurement may fall behind its prediction
    profiles_dir: Path  # where the sweep's store is, for refuted cost-model predictions
    budget_s: float  # time the interleaved comparison may take
    feedback: int = 0  # measurements fed back into the store
    rounds: int = 0  # interleaved rounds run
    contests: list[str] = dataclasses.field(default_factory=list)  # how each contested tie ended
    # ln(ms per micro-step) of the baseline and of each timed one-device global choice, from the
    # interleaved rounds: the ratios the tune history keeps
    baseline_log_step: float = math.nan
    log_steps: dict[GlobalChoice, float] = dataclasses.field(default_factory=dict)
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    held_out_z: list[float] = dataclasses.field(default_factory=list)  # (measured - predicted) / σ

    def measure(self, candidate: Candidate) -> CandidateMeasurement:
        """Apply `candidate` as `attnprof apply` would, profile it, and judge its outputs and memory."""
        choice, _ = candidate.problem.value
        predicted = predicted_figures(candidate)
        choices = plan_choices(candidate, self.settings)
        if choice.world_size > 1:
            reason = f"needs {choice.world_size} devices"
            return CandidateMeasurement(candidate, choices, predicted, None, False, reason, can_run=False)
        try:
            choices = pin_heads(self.workload, self.settings, choices)
            settings = applied_settings(self.settings, choices)
            # A global choice alone may have been profiled as a probe, built the same way.
            probed = self.estimator.applied_profile(choice) if layer_part(choices) == PlanChoices() else None
            profile = probed or run_profile(applied_workload(self.workload, settings, choices), settings)
            finite, error = self.checker.check(global_part(choices))
            quality = self.checker.check(layer_part(choices))[1] if choices.changes_heads() else None
        except PlanRejected as exc:
            return CandidateMeasurement(candidate, choices, predicted, None, False, str(exc))
        micro_steps = choices.micro_steps(self.settings.batch_size)
        measured = figures_of(profile, micro_steps, step_samples(self.settings, choices.batch_size), self.power)
        measured.finite, measured.max_error, measured.quality_loss = finite, error, quality
        reasons = []
        if not finite or not all(math.isfinite(v) for v in (measured.latency_ms or 0.0, measured.memory_bytes or 0.0)):
            reasons.append("outputs are not finite")
        elif error > self.max_error and choice.dtype != "fp32":
            reasons.append(f"output error {error:.2g} exceeds {self.max_error:g}")
        if quality is not None and not quality <= self.max_quality_loss:
            reasons.append(f"quality loss {quality:.2g} exceeds {self.max_quality_loss:g}")
        reasons += self._over_budget(measured, ("memory_bytes",))
        result = CandidateMeasurement(
            candidate, choices, predicted, measured, not reasons, "; ".join(reasons), profile, reused=probed is not None
        )
        if layer_part(choices) == PlanChoices() and probed is None:  # its measurement re-prices the rest
            self.estimator.add(choice, profile)
        return result

    def as_it_runs(self, candidate: Candidate, baseline: Profile) -> CandidateMeasurement:
        """The plan that changes nothing: the workload as it runs, whose measurement is the
        baseline's profile (no profile of its own); the reference choice's `candidate` stands
        for its prediction. It is compared with the others like any candidate."""
        measured = figures_of(baseline, 1, step_samples(self.settings, None), self.power)
        measured.finite = True
        measured.max_error = 0.0  # its outputs are the workload's own
        reasons = self._over_budget(measured, ("memory_bytes",))
        return CandidateMeasurement(candidate, PlanChoices(), predicted_figures(candidate), measured, not reasons,
                                    "; ".join(reasons), baseline, reused=True)

    def _over_budget(self, measured: PlanFigures, metrics: tuple[str, ...]) -> list[str]:
        reasons = []
        for metric in metrics:
            limit, value = self.limits.get(metric), getattr(measured, metric)
            if limit is not None and value is not None and value > limit:
                shown, allowed = budget_value(metric, value), budget_value(metric, limit)
                reasons.append(f"measured {metric} {shown} exceeds the limit {allowed}")
        return reasons

    def compare(self, baseline: PlanFigures, verifications: list[CandidateMeasurement]) -> None:
        """Time the baseline and every accepted candidate in interleaved rounds; their latency
        becomes the interleaved median, their speed-up the paired ratio to the baseline, and
        the latency and energy budgets are judged on those."""
        accepted = [v for v in verifications if v.accepted and v.measured is not None]
        if not accepted:
            return
        sides = [side_of("baseline", self.workload, self.settings)]
        for v in accepted:
            settings = applied_settings(self.settings, v.choices)
            workload = applied_workload(self.workload, settings, v.choices)
            micro_steps = v.choices.micro_steps(self.settings.batch_size)
            # Plans that run a larger batch are compared per sample: time per workload batch.
            scale = self.settings.batch_size / step_samples(self.settings, v.choices.batch_size)
            sides.append(side_of(v.candidate.describe(), workload, settings, micro_steps, scale))
        started = time.perf_counter()
        with restored_threads():
            self.rounds = interleave(sides, self.settings.clock, FIRST_SHARE * self.budget_s, self.settings.warmup)
        base = sides[0]
        self.baseline_log_step = math.log(base.median_ms)
        drift = base.median_ms / baseline.latency_ms if baseline.latency_ms else 1.0  # since the probes
        baseline.latency_ms = base.median_ms
        for v, side in zip(accepted, sides[1:], strict=True):
            measured = v.measured
            assert measured is not None
            measured.latency_ms = side.median_ms
            measured.latency_sigma_ms = statistics.stdev(side.samples_ms) if len(side.samples_ms) > 1 else 0.0
            samples = step_samples(self.settings, v.choices.batch_size)
            measured.throughput = samples * 1e3 / side.median_ms
            measured.energy_j = None if self.power is None else self.power * side.median_ms * 1e-3
            v.speedup = paired_ratio(base.samples_ms, side.per_batch_ms)
            choice = v.candidate.problem.value[0]
            if v.choices != PlanChoices() and layer_part(v.choices) == PlanChoices() and choice.world_size == 1:
                self.log_steps[choice] = math.log(side.median_ms / side.micro_steps)
            reasons = self._over_budget(measured, ("latency_ms", "energy_j"))
            if reasons:
                v.accepted, v.reason = False, "; ".join(reasons)
            self._judge_prediction(v, drift)
        # Held out: predicted before being measured (a probe's or the baseline's profile reused is not).
        self.held_out_z = [z for v in accepted if not v.reused and (z := _z_score(v, drift)) is not None]
        self.calibration = Calibration.of(self.held_out_z)
        timed = [(v, side) for v, side in zip(accepted, sides[1:], strict=True) if v.accepted]
        if timed:
            fastest = min((side for _, side in timed), key=lambda side: statistics.median(side.per_batch_ms))
            for v, side in timed:
                v.tied = side is fastest or not paired_ratio(fastest.per_batch_ms, side.per_batch_ms).significant
            self._settle(timed, started + self.budget_s)

    def _settle(self, timed: list[tuple[CandidateMeasurement, TimedSide]], deadline: float) -> None:
        """A tie that "fewer changes wins" would decide against a leader more than
        PRACTICAL_MARGIN faster by median is contested (tuning.compare.contest) in the time left
        to the comparison; the significantly slower of the two is no longer tied, and the next
        simplest tied plan is contested in turn."""
        while True:
            tied = [(v, side) for v, side in timed if v.tied]
            leader = min(tied, key=lambda p: statistics.median(p[1].per_batch_ms))
            simplest = min(
                tied, key=lambda p: (change_count(p[0].choices, self.settings), statistics.median(p[1].per_batch_ms))
            )
            if simplest is leader:
                return
            with restored_threads():
                outcome = contest(simplest[1], leader[1], self.settings.clock, max(deadline - time.perf_counter(), 0.0))
            if outcome is None:
                return
            self.contests.append(outcome.describe())
            if not outcome.after.significant:
                return
            (simplest if outcome.after.value > 1.0 else leader)[0].tied = False

    def _judge_prediction(self, v: CandidateMeasurement, drift: float) -> None:
        """A measurement worse than its prediction (scaled by the machine's drift since the
        baseline was profiled) beyond the uncertainty: noted, and fed back to the estimates."""
        measured, predicted = v.measured, v.predicted
        if measured is None or measured.latency_ms is None or predicted.latency_ms is None:
            return
        expected = predicted.latency_ms * drift
        sigma = math.hypot((predicted.latency_sigma_ms or 0.0) * drift, measured.latency_sigma_ms or 0.0)
        v.contradicted = contradiction(expected, sigma, measured.latency_ms, self.contradiction_sigmas)
        if v.contradicted:
            note = f"measured {measured.latency_ms:.3g} ms vs predicted {predicted.latency_ms:.3g} ms ± {sigma:.2g}"
            v.reason = "; ".join(r for r in (v.reason, note) if r)
            if isinstance(self.estimator, CostModelEstimator):
                self.feedback += _feed_back(self.workload, self.settings, self.estimator, v, self.profiles_dir)
