"""The top candidates measured for real, and judged against their predictions and the limits.

The reference choice is measured again first, to correct the predictions for the machine's
drift; a candidate is accepted with finite outputs, error and quality within bounds, limits
met, and a measurement no worse than predicted beyond the stated uncertainty. What is measured
refines the estimates of the rest; a refuted cost-model prediction is fed back into the sweep's
store.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnprof import backends
from attnprof.costmodel.measure import measure_settings
from attnprof.costmodel.measurements import MeasurementStore, architecture_key, store_path
from attnprof.errors import PlanRejected
from attnprof.machine import machine_info
from attnprof.measure.device import resolve_device
from attnprof.measure.dtypes import parse_dtype
from attnprof.plans.outputs import output_difference
from attnprof.plans.records import PlanChoices, PlanFigures
from attnprof.profiling.records import Profile
from attnprof.settings import Settings
from attnprof.targets.workload import Inputs, Workload
from attnprof.tuning.budget import CONTRADICTION_SIGMAS
from attnprof.tuning.estimate import (
    CostModelEstimator,
    Estimator,
    ModelTransform,
    layer_part,
    layer_transform,
    measured_settings,
    profile_choice,
    sigma_of,
    tf32_matmuls,
)
from attnprof.tuning.optimize import Candidate
from attnprof.tuning.price import plan_choices, predicted_figures
from attnprof.tuning.space import GlobalChoice

NOISE_FLOOR = 0.10  # relative: timings on a shared machine vary this much between runs at least


def _cast_inputs(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    args, kwargs = inputs

    def cast(value: Any) -> Any:
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


class OutputChecker:
    """Compares a changed model's outputs with the fp32 reference on the example inputs."""

    def __init__(self, workload: Workload, settings: Settings):
        self.device = resolve_device(settings.device)
        self.reference_model = workload.build_model(self.device, torch.float32).eval()
        self.inputs = workload.make_inputs(settings.batch_size, settings.seq_len, self.device, torch.float32)
        with torch.no_grad():
            self.reference = self._run(self.reference_model, backends.REFERENCE, torch.float32)

    def _run(self, model: torch.nn.Module, backend: str, dtype: torch.dtype) -> Any:
        args, kwargs = _cast_inputs(self.inputs, dtype)
        with torch.no_grad(), backends.kernel_scope(backend)():
            return model(*args, **kwargs)

    def check(self, dtype: str, backend: str, transform: ModelTransform | None = None) -> tuple[bool, float]:
        """(finite, relative error) of the model cast to `dtype`, run with `backend`, after `transform`."""
        torch_dtype = torch.float32 if dtype == "tf32" else parse_dtype(dtype)
        model = copy.deepcopy(self.reference_model)
        if transform is not None:
            model = transform(model)
        model = model.to(torch_dtype)
        with tf32_matmuls(dtype == "tf32"):
            output = self._run(model, backend, torch_dtype)
        difference = output_difference(self.reference, output)
        return difference.finite, difference.max_rel


@dataclass
class CandidateMeasurement:
    """A candidate as verification left it: measured (or why not), accepted or rejected, and why."""

    candidate: Candidate
    choices: PlanChoices
    predicted: PlanFigures
    measured: PlanFigures | None
    accepted: bool
    reason: str  # why rejected, or what was noticed when accepted
    profile: Profile | None = None
    can_run: bool = True  # False: the plan needs devices this machine does not have
    contradicted: bool = False  # measured worse than predicted beyond the stated uncertainty


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


def measure_drift(workload: Workload, settings: Settings, estimator: Estimator, reference: GlobalChoice) -> float:
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
    estimator: Estimator
    contradiction_sigmas: float  # how far a measurement may fall behind its prediction
    profiles_dir: Path  # where the sweep's store is, for refuted cost-model predictions
    feedback: int = 0  # measurements fed back into the store

    def verify(self, candidate: Candidate) -> CandidateMeasurement:
        result = self._measure(candidate)
        if result.profile is not None and layer_part(result.choices) == PlanChoices():  # it refines later estimates
            self.estimator.add(candidate.problem.value[0], result.profile)
        if result.contradicted and isinstance(self.estimator, CostModelEstimator):
            self.feedback += _feed_back(self.workload, self.settings, self.estimator, result, self.profiles_dir)
        return result

    def _measure(self, candidate: Candidate) -> CandidateMeasurement:
        """Apply, measure and judge one candidate against its prediction and the limits."""
        workload, settings, checker, drift = self.workload, self.settings, self.checker, self.drift
        choice, _ = candidate.problem.value
        choices = plan_choices(candidate, settings)
        predicted = predicted_figures(candidate)
        if choice.world_size > 1:
            reason = f"needs {choice.world_size} devices"
            return CandidateMeasurement(candidate, choices, predicted, None, False, reason, can_run=False)
        transform = layer_transform(workload, settings, choices)
        try:
            profile = profile_choice(workload, settings, choice, transform)
            finite, error = checker.check(choice.dtype, choice.backend)
            quality = checker.check("fp32", choice.backend, transform)[1] if choices.changes_heads() else None
        except PlanRejected as exc:
            return CandidateMeasurement(candidate, choices, predicted, None, False, str(exc))
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
        sigmas = self.contradiction_sigmas
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
        return CandidateMeasurement(
            candidate, choices, predicted, measured, not reasons, "; ".join(reasons), profile, contradicted=contradicted
        )
