"""One micro-step of a global choice: running it, and predicting it from a few such runs.

An `Estimator` predicts one micro-step of each global choice (backend, precision, micro-batch,
threads) on one device: `ProbeEstimator` measures a few probes and fits the latency surrogate on them;
`CostModelEstimator` reads the cost model `attnprof fit` saved, where it covers the choice.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from attnprof import backends
from attnprof.costmodel.fit import predict_config
from attnprof.costmodel.knobs import config_of, memory_group
from attnprof.costmodel.measurements import architecture_key, model_path
from attnprof.costmodel.records import CostModel, Prediction
from attnprof.machine import machine_info
from attnprof.plans.records import PlanChoices
from attnprof.plans.verify import applied_settings, applied_workload
from attnprof.profiling.progress import track
from attnprof.profiling.records import Profile
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings, with_plan_choices
from attnprof.store import DEFAULT_PROFILE_DIR, read_record
from attnprof.targets.workload import Workload
from attnprof.tuning.compare import interleave, side_of
from attnprof.tuning.history import HISTORY_SIGMA, Prior, TuneHistory
from attnprof.tuning.space import GlobalChoice, knob_fields, knob_names
from attnprof.tuning.surrogate import LatencySurrogate, micro_batch_line

_NORMAL_P10_P90 = 2.563  # (p90 - p10) of a normal distribution, in standard deviations
# Bytes per element of each precision: what a change of precision does to parameters and activations.
ELEMENT_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp64": 8, "fp8": 1}


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

    def calibrate(self, scale: float) -> None: ...

    def applied_profile(self, choice: GlobalChoice) -> Profile | None: ...


def measured_settings(settings: Settings, choice: GlobalChoice) -> Settings:
    """The profiler settings that run one micro-step of `choice` on one device."""
    return with_plan_choices(settings, choice.backend, choice.batch_size, choice.threads, choice.dtype)


def choice_plan(settings: Settings, choice: GlobalChoice) -> PlanChoices:
    """The plan that runs one device's global choice as `attnprof apply` would (precision by
    casting the weights, norms kept in fp32)."""
    batch = None if choice.batch_size == settings.batch_size else choice.batch_size
    return PlanChoices(
        dtype=choice.dtype, precision="cast", backend=choice.backend, batch_size=batch, threads=choice.threads,
        compile=choice.compile,
    )


def profile_choice(workload: Workload, settings: Settings, choice: GlobalChoice) -> Profile:
    """Profile one micro-step of `choice`, its model built as `attnprof apply` builds it."""
    plan = choice_plan(settings, choice)
    run_settings = applied_settings(settings, plan)
    return run_profile(applied_workload(workload, run_settings, plan), run_settings)


def layer_part(choices: PlanChoices) -> PlanChoices:
    """The per-layer part of a plan (heads, K/V heads, checkpointing); PlanChoices() when there is none."""
    return PlanChoices(**{name: getattr(choices, name) for name in knob_fields("layer")})


def global_part(choices: PlanChoices) -> PlanChoices:
    """A plan without its per-layer part: what precision, backend, micro-batch and threads do alone."""
    return dataclasses.replace(choices, **{name: getattr(PlanChoices(), name) for name in knob_fields("layer")})


def sigma_of(profile: Profile) -> float:
    stats = profile.totals.time_ms
    return 0.0 if stats is None else max(stats.p90 - stats.p10, 0.0) / _NORMAL_P10_P90


PROBE_ROUNDS = 9  # interleaved rounds that time the probes side by side: a median a burst of load cannot move
MODEL_FORM_SIGMA = 0.05  # relative: what the memory model misses of the knobs' interactions


class ProbeEstimator:
    """Measures a few probes around a reference choice and predicts the rest by the latency
    surrogate (tuning.surrogate) fitted on every choice measured so far.

    The probes are the reference itself, the reference with each other backend, precision and
    thread count, and the reference at the smallest micro-batch: enough for the surrogate's
    intercept, slope and main effects; the interactions come from its prior until verified
    candidates measure them. Memory is the parameters (scaled by element size) plus activations
    linear in the micro-batch times the measured activation ratio of each categorical value.
    Measured choices are returned as measured.

    The `baseline` (the workload as it runs, profiled by tune) is timed with the probes, so each
    probe's ratio to it is known. With a `history` (tuning.history) that timed every probe before,
    at the speed the baseline runs now, the probes are not measured again: the remembered choices
    are priced from their ratios to the baseline, scaled by the baseline as profiled now, and the
    surrogate is fitted on them.
    """

    def __init__(
        self,
        workload: Workload,
        settings: Settings,
        choices: Sequence[GlobalChoice],
        history: TuneHistory | None = None,
        baseline: Profile | None = None,
    ) -> None:
        self.workload = workload
        self.settings = settings
        self.history = history
        self.baseline = baseline
        self.baseline_timed = math.nan  # its median step in the probes' interleaved rounds
        self.remembered: dict[GlobalChoice, Prior] = {}  # priced from earlier runs, not measured in this one
        self._recalled: bool | None = None  # decided at the first fit: probes measured, or the history taken
        singles = sorted({c.single_device() for c in choices}, key=str)
        self.values = {knob: sorted({getattr(c, knob) for c in singles}, key=str) for knob in knob_names("choice")}
        self.batches = sorted({c.batch_size for c in singles})
        self.reference = reference_choice(settings, singles)
        self.profiles: dict[GlobalChoice, Profile] = {}
        self.timed: dict[GlobalChoice, tuple[float, float]] = {}  # (median, sigma) ms from interleaved rounds
        self.measurements = 0
        self.scale = 1.0  # σ calibration from held-out points
        self._surrogate: LatencySurrogate | None = None
        self._applied: set[GlobalChoice] = set()  # profiled here through profile_choice

    @property
    def source(self) -> str:
        if self.remembered:
            runs = max(p.runs for p in self.remembered.values())
            return (f"what {runs} earlier tune run(s) measured of {len(self.remembered)} choice(s) on this machine "
                    f"(ratios to the baseline, σ ≥ {HISTORY_SIGMA:.0%}), a surrogate fitted on them for the rest")
        return "surrogate fitted on probe measurements (micro-batch intercept, main effects, interactions)"

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
        """A measurement of `choice` taken elsewhere (e.g. by verification) feeds the estimates:
        the surrogate is fitted again with it before the next prediction."""
        self.profiles[choice.single_device()] = profile
        self._surrogate = None

    def calibrate(self, scale: float) -> None:
        """Scale every later prediction's σ (the held-out errors' root-mean-square z)."""
        self.scale = scale
        self._surrogate = None

    def measure(self, choice: GlobalChoice) -> Profile:
        single = choice.single_device()
        if single not in self.profiles:
            self.profiles[single] = profile_choice(self.workload, self.settings, single)
            self._applied.add(single)
            self.measurements += 1
        return self.profiles[single]

    def applied_profile(self, choice: GlobalChoice) -> Profile | None:
        """The profile of `choice` this estimator took applied as `attnprof apply` builds it (a
        probe), if any: verification need not take it again."""
        single = choice.single_device()
        return self.profiles[single] if single in self._applied else None

    def _fit(self) -> LatencySurrogate:
        probes = self.probes()
        if not self._recall(probes):
            for i, probe in enumerate(probes, 1):
                label = " ".join(f"{k}={v}" for k, v in probe.as_config().items())
                for _ in track([probe], f"probe {i}/{len(probes)}: {label}", 1):
                    self.measure(probe)
            self._time_together(probes)
        ref = self._figures(self.reference)
        self._activation_ratios: dict[tuple[str, object], float] = {}
        for knob, values in self.values.items():
            for value in values:
                probe = self._figures(dataclasses.replace(self.reference, **{knob: value}))
                self._activation_ratios[(knob, value)] = probe[2] / ref[2] if ref[2] > 0 else 1.0
        batch_points = [
            (b, self._figures(dataclasses.replace(self.reference, batch_size=b))[2])
            for b in self.batches
            if dataclasses.replace(self.reference, batch_size=b) in (self.profiles.keys() | self.remembered.keys())
        ]
        self._activation_line = micro_batch_line(batch_points)
        known = [*self.profiles, *(c for c in self.remembered if c not in self.profiles)]
        surrogate = LatencySurrogate.fit({choice: self._figures(choice)[:2] for choice in known}, self.reference,
                                         self.values)
        surrogate.scale = self.scale
        self._surrogate = surrogate
        return surrogate

    def _baseline_ms(self) -> float:
        assert self.baseline is not None and self.baseline.totals.time_ms is not None
        return self.baseline.totals.time_ms.median

    def _recall(self, probes: Sequence[GlobalChoice]) -> bool:
        """Take the remembered choices in place of the probes, when every probe not measured here
        is remembered and the baseline runs at the remembered speed. Decided once: a later fit
        (after a verified candidate) keeps what the first chose."""
        if self._recalled is None:
            priors = self.history.priors(self._baseline_ms()) if self.history and self.baseline else {}
            self._recalled = bool(priors) and all(p in priors or p in self.profiles for p in probes)
            self.remembered = priors if self._recalled else {}
        return self._recalled

    def log_ratios(self) -> dict[GlobalChoice, float]:
        """ln(micro-step / the baseline's step) of each probe timed in this run's interleaved rounds."""
        if not self.baseline_timed > 0:
            return {}
        return {c: math.log(median / self.baseline_timed) for c, (median, _) in self.timed.items() if median > 0}

    def _time_together(self, probes: Sequence[GlobalChoice]) -> None:
        """The probes' step times, from PROBE_ROUNDS interleaved rounds: the surrogate compares
        probes timed in the same stretch of the machine's time, not one after another while a
        neighbour's load comes and goes."""
        todo = [p for p in probes if p not in self.timed]
        if len(todo) < 2:
            return
        settings = self.settings
        sides = []
        for probe in todo:
            plan = choice_plan(settings, probe)
            run_settings = applied_settings(settings, plan)
            sides.append(side_of(str(probe), applied_workload(self.workload, run_settings, plan), run_settings))
        if self.baseline is not None:  # the anchor of the ratios the tune history keeps
            sides.append(side_of("baseline", self.workload, settings))
        interleave(sides, settings.clock, 0.0, settings.warmup, min_rounds=PROBE_ROUNDS, max_rounds=PROBE_ROUNDS)
        for probe, side in zip(todo, sides[: len(todo)], strict=True):
            self.timed[probe] = (side.median_ms, statistics.stdev(side.samples_ms))
        if self.baseline is not None:
            self.baseline_timed = sides[-1].median_ms

    def _figures(self, choice: GlobalChoice) -> tuple[float, float, float]:
        """(latency, latency sigma, activation bytes) of a measured, or else remembered, choice."""
        if choice not in self.profiles:
            prior = self.remembered[choice]
            latency = self._baseline_ms() * math.exp(prior.log_ratio)
            return latency, latency * prior.sigma, float(prior.peak_memory_bytes - prior.param_bytes)
        profile = self.profiles[choice]
        assert profile.totals.time_ms is not None
        activations = profile.totals.peak_memory_bytes - profile.totals.param_bytes
        latency, sigma = self.timed.get(choice, (profile.totals.time_ms.median, sigma_of(profile)))
        return latency, sigma, float(activations)

    def estimate(self, choice: GlobalChoice) -> StepEstimate:
        single = choice.single_device()
        if single in self.profiles:
            latency, sigma, _ = self._figures(single)
            memory = float(self.profiles[single].totals.peak_memory_bytes)
            return StepEstimate(latency, sigma, memory, 0.0, "measured")
        surrogate = self._surrogate or self._fit()
        if single in self.profiles:  # the fit measured it as a probe
            return self.estimate(choice)
        if single in self.remembered:
            latency, sigma, _ = self._figures(single)
            memory = float(self.remembered[single].peak_memory_bytes)
            return StepEstimate(latency, sigma * self.scale, memory, MODEL_FORM_SIGMA * memory, "remembered")
        latency, latency_sigma = surrogate.predict(single)
        activations = self._activation_line[0] + self._activation_line[1] * choice.batch_size
        for knob in self.values:
            activations *= self._activation_ratios[(knob, getattr(choice, knob))]
        reference = self.profiles.get(self.reference)
        params = reference.totals.param_bytes if reference else self.remembered[self.reference].param_bytes
        params *= ELEMENT_BYTES[choice.dtype] / ELEMENT_BYTES[self.reference.dtype]
        memory = params + activations
        return StepEstimate(latency, latency_sigma, memory, MODEL_FORM_SIGMA * memory, "predicted")


class CostModelEstimator:
    """The cost model `attnprof fit` saved for this workload on this machine, for the choice
    combinations it measured; measured choices, and the combinations it lacks, go to the probes.

    The model's predictions are re-priced by what is measured now: every covered choice measured
    in this run (the baseline, verified candidates) is a point the model was not fitted on; their
    measured/predicted ratios (geometric mean) scale its latencies to the machine's speed of the
    moment, and `calibrate` scales its σ by the held-out errors."""

    def __init__(self, model: CostModel, settings: Settings, probes: ProbeEstimator) -> None:
        self.model = model
        self.settings = settings
        self.probes = probes
        self.scale = 1.0
        self.source = (
            f"cost model fitted on {model.measurements} measurement(s) (attnprof fit), re-priced by this "
            "run's measurements; probes for choices it has not measured"
        )

    @property
    def measurements(self) -> int:
        return self.probes.measurements

    def covers(self, choice: GlobalChoice) -> bool:
        config = config_of(measured_settings(self.settings, choice.single_device()))
        return memory_group(config) in self.model.feature_laws

    def _predict(self, choice: GlobalChoice) -> Prediction:
        return predict_config(self.model, config_of(measured_settings(self.settings, choice)))

    def level(self) -> float:
        """Measured over predicted latency, over the covered choices measured in this run."""
        logs = []
        for choice in self.probes.profiles:
            if self.covers(choice):
                predicted = self._predict(choice)
                measured = self.probes.estimate(choice).latency_ms  # as measured
                if predicted.feasible and predicted.time_ms > 0 and measured > 0:
                    logs.append(math.log(measured / predicted.time_ms))
        return math.exp(statistics.fmean(logs)) if logs else 1.0

    def estimate(self, choice: GlobalChoice) -> StepEstimate:
        single = choice.single_device()
        if single in self.probes.profiles or not self.covers(single):
            return self.probes.estimate(choice)
        prediction = self._predict(single)
        if not prediction.feasible:
            return StepEstimate(math.inf, 0.0, math.inf, 0.0, "cost model", prediction.infeasible_reason)
        level = self.level()
        return StepEstimate(
            prediction.time_ms * level,
            prediction.time_sigma_ms * level * self.scale,
            prediction.memory_bytes,
            0.0 if math.isnan(prediction.memory_sigma_bytes) else prediction.memory_sigma_bytes,
            "cost model",
        )

    def add(self, choice: GlobalChoice, profile: Profile) -> None:
        self.probes.add(choice, profile)

    def calibrate(self, scale: float) -> None:
        self.scale = scale
        self.probes.calibrate(scale)

    def applied_profile(self, choice: GlobalChoice) -> Profile | None:
        return self.probes.applied_profile(choice)


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
        backend=pick("backend", [settings.backend, backends.CPU_DEFAULT]),
        dtype=pick("dtype", [settings.dtype]),
        batch_size=pick("batch_size", [settings.batch_size]),
        threads=pick("threads", [settings.threads, settings.threads or torch.get_num_threads()]),
    )
