"""The latency surrogate fitted on the fly from the global choices measured so far.

One micro-step's latency is modelled in log space as

    log t(c) = log(a + b·m)  +  Σ main effects  +  Σ interactions

where a + b·m is the micro-batch line (an intercept: the fixed cost of a step that does not shrink
with the micro-batch m, and a slope) through the measurements at the reference categorical values;
a main effect is one categorical value (a backend, a precision, a thread count) against the
reference's; an interaction is a pair of non-reference values together, or a non-reference value
times log(m / m_ref) (a precision whose cost grows with the batch differently). It is a Bayesian
linear model: main effects have a wide prior, interactions a prior of INTERACTION_PRIOR (knobs
whose effects multiply have none), so one-knob-at-a-time probes identify the main effects and each
further measurement (a verified candidate) re-prices the interactions it reveals. A prediction's
σ is the posterior's plus the measurements' own noise, times `scale`, which `calibrate` sets from
held-out points (candidates predicted before they were measured) so that 1σ covers about 68%.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from attnprof.tuning.space import GlobalChoice

INTERACTION_PRIOR = 0.15  # log units: how far two knobs' effects typically stray from multiplying
MAIN_PRIOR = 10.0  # log units: effectively unconstrained
MIN_NOISE = 0.02  # relative: no timing on a shared machine is more precise than this


@dataclass(frozen=True)
class Term:
    """One term of the model: a knob value (main), two together (pair), or a value times
    log(m / m_ref) (batch)."""

    kind: str  # main | pair | batch
    knob: str
    value: object
    other_knob: str = ""
    other_value: object = None

    def of(self, choice: GlobalChoice) -> float:
        present = getattr(choice, self.knob) == self.value
        if self.kind == "pair":
            present = present and getattr(choice, self.other_knob) == self.other_value
        return float(present)


def micro_batch_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Non-negative a, b of y = a + b·x through the (x, y) points (least squares); a line through
    the origin when the points have a single x."""
    if len({x for x, _ in points}) < 2:
        x, y = points[0]
        return 0.0, y / x
    design = np.array([[1.0, x] for x, _ in points])
    coefficients, _ = nnls(design, np.array([y for _, y in points]))
    return float(coefficients[0]), float(coefficients[1])


@dataclass
class LatencySurrogate:
    reference: GlobalChoice
    knobs: tuple[str, ...]  # the categorical knobs with more than one value
    line: tuple[float, float]  # a, b of the reference's micro-batch line, ms
    terms: list[Term]
    mean: np.ndarray
    covariance: np.ndarray
    noise: float  # relative timing noise of one measurement
    scale: float = 1.0  # σ calibration from held-out points (1: as the model states it)

    @classmethod
    def fit(
        cls,
        points: Mapping[GlobalChoice, tuple[float, float]],
        reference: GlobalChoice,
        values: Mapping[str, Sequence[object]],
    ) -> LatencySurrogate:
        """Fit on measured (median ms, σ ms) per choice; `values` are each categorical knob's values."""
        knobs = tuple(k for k, v in values.items() if len(v) > 1)
        on_line = [(float(c.batch_size), t) for c, (t, _) in points.items() if _same_categories(c, reference, knobs)]
        line = micro_batch_line(on_line or [(float(reference.batch_size), next(iter(points.values()))[0])])
        terms = _terms(knobs, values, reference)
        model = cls(reference, knobs, line, terms, np.zeros(len(terms)), np.zeros((len(terms), len(terms))), 0.0)
        rows = np.array([model.features(c) for c in points]).reshape(len(points), len(terms))
        targets = np.array([math.log(t) - math.log(model.line_ms(c.batch_size)) for c, (t, _) in points.items()])
        noises = np.array([max(s / t if t > 0 else 0.0, MIN_NOISE) for t, s in points.values()])
        prior = np.array([MAIN_PRIOR if term.kind == "main" else INTERACTION_PRIOR for term in terms])
        weights = 1.0 / noises**2
        precision = rows.T @ (rows * weights[:, None]) + np.diag(1.0 / prior**2)
        model.covariance = np.linalg.inv(precision)
        model.mean = model.covariance @ (rows.T @ (weights * targets))
        model.noise = float(statistics.median(noises))
        return model

    def line_ms(self, batch_size: int) -> float:
        a, b = self.line
        return max(a + b * batch_size, 1e-9)

    def features(self, choice: GlobalChoice) -> np.ndarray:
        batch = math.log(choice.batch_size / self.reference.batch_size)
        return np.array([term.of(choice) * (batch if term.kind == "batch" else 1.0) for term in self.terms])

    def predict(self, choice: GlobalChoice) -> tuple[float, float]:
        """(latency ms, σ ms) of one micro-step of `choice`."""
        row = self.features(choice)
        latency = self.line_ms(choice.batch_size) * math.exp(float(row @ self.mean))
        variance = float(row @ self.covariance @ row) + self.noise**2
        return latency, latency * math.sqrt(max(variance, 0.0)) * self.scale


def _same_categories(choice: GlobalChoice, reference: GlobalChoice, knobs: Sequence[str]) -> bool:
    return all(getattr(choice, k) == getattr(reference, k) for k in knobs)


def _terms(knobs: Sequence[str], values: Mapping[str, Sequence[object]], reference: GlobalChoice) -> list[Term]:
    others = {k: [v for v in values[k] if v != getattr(reference, k)] for k in knobs}
    terms = [Term("main", k, v) for k in knobs for v in others[k]]
    for i, first in enumerate(knobs):
        for second in knobs[i + 1 :]:
            terms += [Term("pair", first, v, second, w) for v in others[first] for w in others[second]]
    terms += [Term("batch", k, v) for k in knobs for v in others[k]]
    return terms

