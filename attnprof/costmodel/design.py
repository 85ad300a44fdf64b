"""Which configurations a sweep measures, and how long it may take.

The design measures few points but covers the space: every combination of choice knobs
(dtype, backend, threads) is measured at the same shapes — the corners and centre of the
numeric ranges (log scale), then space-filling points — so each combination gets its own fit
and, at every shape, the choices can be compared. Shapes come in order of information: a sweep
stopped by `--time-budget` still has the corners of every combination.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import qmc

from attnprof.costmodel.knobs import Config, Knob
from attnprof.errors import UsageError

# Candidates the greedy space-filling choice picks from, beyond corners and centre.
_FILL_CANDIDATES = 256


def design_points(knobs: Mapping[str, Knob], max_points: int, seed: int = 0) -> list[Config]:
    """At most `max_points` configurations: shapes in order of coverage, each under every
    combination of choice values."""
    if max_points < 1:
        raise UsageError(f"--max-measurements must be a positive integer, got {max_points}")
    numeric = [knob for knob in knobs.values() if knob.numeric]
    choices = [knob for knob in knobs.values() if not knob.numeric]
    combinations = list(itertools.product(*(knob.choices for knob in choices)))
    if max_points < len(combinations):
        names = " x ".join(f"{knob.flag} ({len(knob.choices)})" for knob in choices)
        raise UsageError(
            f"--max-measurements {max_points} cannot see every combination of {names}: "
            f"use at least {len(combinations)}, or fewer choice values"
        )
    shapes = _spread_shapes(numeric, max_points // len(combinations), seed)
    return [
        {
            **dict(zip([k.name for k in numeric], shape, strict=True)),
            **dict(zip([k.name for k in choices], combination, strict=True)),
        }
        for shape in shapes
        for combination in combinations
    ]


def _spread_shapes(numeric: Sequence[Knob], count: int, seed: int) -> list[tuple[int, ...]]:
    """Up to `count` distinct integer shapes: corners, centre, then greedy max-min distance
    picks from a scrambled Halton sequence, all in log-scaled unit coordinates."""
    if not numeric:
        return [()]
    dims = len(numeric)
    corners = [np.array(corner, dtype=float) for corner in itertools.product((0.0, 1.0), repeat=dims)]
    centre = np.full(dims, 0.5)
    fill = qmc.Halton(d=dims, scramble=True, seed=seed).random(_FILL_CANDIDATES)
    candidates = [*corners, centre, *fill]
    chosen: list[tuple[int, ...]] = []
    chosen_unit: list[np.ndarray] = []
    while len(chosen) < count:
        best, best_distance = None, -1.0
        for candidate in candidates:
            shape = tuple(_to_value(knob, u) for knob, u in zip(numeric, candidate, strict=True))
            if shape in chosen:
                continue
            unit = np.array([_to_unit(knob, v) for knob, v in zip(numeric, shape, strict=True)])
            distance = min((float(np.linalg.norm(unit - c)) for c in chosen_unit), default=math.inf)
            if distance > best_distance:
                best, best_distance = (shape, unit), distance
        if best is None:
            break  # every distinct integer shape in the ranges is taken
        chosen.append(best[0])
        chosen_unit.append(best[1])
    return chosen


def _to_value(knob: Knob, unit: float) -> int:
    low, high = math.log(knob.low), math.log(knob.high)
    return min(knob.high, max(knob.low, round(math.exp(low + unit * (high - low)))))


def _to_unit(knob: Knob, value: int) -> float:
    if knob.high == knob.low:
        return 0.0
    return (math.log(value) - math.log(knob.low)) / (math.log(knob.high) - math.log(knob.low))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|m|h)?\s*$")


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """Seconds from `90`, `90s`, `5m` or `1h`."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"{flag}: {text!r} is not a positive duration such as 90s, 5m or 1h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]
