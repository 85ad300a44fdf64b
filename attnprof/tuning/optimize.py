"""Budget + predicted costs -> ranked plans, the Pareto frontier, and why a budget is infeasible.

The plan space is split in two levels. The *global* knobs (backend, precision, micro-batch,
threads, sharding) are few and are enumerated: each combination is a `Problem`. Inside one
problem the *per-layer* knobs (heads kept, KV groups, checkpointing) pick one `Option` per
layer `Group`. When a problem's costs add up over layers this is a multiple-choice knapsack,
solved exactly with `scipy.optimize.milp`; a problem whose costs do not add up (it brings its
own `evaluate`) is enumerated when small and searched with differential evolution otherwise,
and the result says which solver produced it. Metrics are minimised; `throughput` is ranked
through latency (a problem processes a fixed number of samples per step).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, differential_evolution, milp

METRICS: tuple[str, ...] = ("latency_ms", "memory_bytes", "energy_j", "quality_loss")
OBJECTIVE_METRIC = {
    "latency": "latency_ms",
    "throughput": "latency_ms",
    "energy": "energy_j",
    "memory": "memory_bytes",
}

SOLVER_MILP = "milp"
SOLVER_ENUMERATION = "enumeration"
SOLVER_HEURISTIC = "heuristic (differential evolution, not proven optimal)"

ENUMERATION_LIMIT = 20_000  # combinations a non-additive problem may have and still be enumerated
_FEASIBILITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Option:
    """One choice for one layer; `costs` are what it adds to each metric."""

    label: str
    costs: Mapping[str, float]
    value: Any = None  # what the plan builder needs to realise the choice


@dataclass
class Group:
    name: str
    options: list[Option]


@dataclass
class Problem:
    """One combination of global knobs: fixed costs plus one option per group.

    `evaluate`, when given, maps chosen option indices to metric totals for costs that do not add
    up over layers (e.g. a pipeline bounded by its slowest stage); otherwise totals are
    `fixed + sum of the chosen options' costs`.
    """

    config: dict[str, Any]
    fixed: dict[str, float]
    groups: list[Group] = field(default_factory=list)
    samples: int = 1  # samples processed per step, for throughput
    value: Any = None  # what the plan builder needs to realise the global choice
    evaluate: Callable[[tuple[int, ...]], dict[str, float]] | None = None

    @property
    def additive(self) -> bool:
        return self.evaluate is None

    def size(self) -> int:
        return math.prod(len(g.options) for g in self.groups)

    def totals(self, choice: tuple[int, ...]) -> dict[str, float]:
        if self.evaluate is not None:
            return self.evaluate(choice)
        totals = {m: float(self.fixed.get(m, 0.0)) for m in self._metrics()}
        for group, index in zip(self.groups, choice, strict=True):
            for metric, cost in group.options[index].costs.items():
                totals[metric] = totals.get(metric, 0.0) + float(cost)
        return totals

    def _metrics(self) -> list[str]:
        names = set(self.fixed)
        for group in self.groups:
            for option in group.options:
                names.update(option.costs)
        return sorted(names)

    def cost_matrix(self, metric: str) -> list[np.ndarray]:
        return [np.array([float(o.costs.get(metric, 0.0)) for o in g.options]) for g in self.groups]


@dataclass
class Candidate:
    """A fully specified point of the space with its predicted totals."""

    problem: Problem
    choice: tuple[int, ...]
    totals: dict[str, float]
    solver: str

    @property
    def throughput(self) -> float:
        latency = self.totals.get("latency_ms", math.nan)
        return self.problem.samples * 1000.0 / latency if latency > 0 else math.nan

    def options(self) -> list[Option]:
        return [g.options[i] for g, i in zip(self.problem.groups, self.choice, strict=True)]

    def feasible(self, limits: Mapping[str, float]) -> bool:
        return all(
            self.totals.get(m, 0.0) <= limit * (1 + _FEASIBILITY_TOLERANCE) for m, limit in limits.items()
        )

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.problem.config.items()]
        changed = [
            f"{g.name}:{g.options[i].label}"
            for g, i in zip(self.problem.groups, self.choice, strict=True)
            if g.options[i].label
        ]
        return ", ".join(parts + changed)


def objective_key(objective: str) -> Callable[[Candidate], float]:
    """Sort key, smaller is better, comparable across problems."""
    if objective == "throughput":
        return lambda c: -c.throughput
    metric = OBJECTIVE_METRIC[objective]
    return lambda c: c.totals.get(metric, math.inf)


# --- solving one problem ----------------------------------------------------------------------


def solve_milp(
    problem: Problem, limits: Mapping[str, float], metric: str, k: int = 1
) -> list[tuple[int, ...]]:
    """Up to k best choices (minimising `metric`) under `limits`, exactly, by MILP with no-good cuts."""
    if not problem.additive:
        raise ValueError("the MILP formulation needs costs that add up over layers")
    if not problem.groups:
        return [()] if Candidate(problem, (), problem.totals(()), SOLVER_MILP).feasible(limits) else []
    sizes = [len(g.options) for g in problem.groups]
    offsets = np.cumsum([0, *sizes])
    n = int(offsets[-1])
    rows: list[np.ndarray] = []
    lower: list[float] = []
    upper: list[float] = []
    for gi in range(len(sizes)):  # exactly one option per layer
        row = np.zeros(n)
        row[offsets[gi] : offsets[gi + 1]] = 1.0
        rows.append(row)
        lower.append(1.0)
        upper.append(1.0)
    for name, limit in limits.items():  # fixed + sum of chosen costs <= limit
        rows.append(np.concatenate(problem.cost_matrix(name)))
        lower.append(-np.inf)
        upper.append(limit - problem.fixed.get(name, 0.0))
    objective = np.concatenate(problem.cost_matrix(metric))
    solutions: list[tuple[int, ...]] = []
    while len(solutions) < k:
        result = milp(
            objective,
            integrality=np.ones(n),
            bounds=Bounds(0, 1),
            constraints=LinearConstraint(np.array(rows), np.array(lower), np.array(upper)),
        )
        if result.x is None:
            break
        picked = np.flatnonzero(result.x > 0.5)
        choice = tuple(int(p - offsets[gi]) for gi, p in enumerate(picked))
        solutions.append(choice)
        cut = np.zeros(n)  # exclude exactly this combination next time
        cut[picked] = 1.0
        rows.append(cut)
        lower.append(-np.inf)
        upper.append(len(sizes) - 1.0)
    return solutions


def solve_enumeration(
    problem: Problem, limits: Mapping[str, float], metric: str, k: int = 1
) -> list[tuple[int, ...]]:
    """Up to k best choices by trying every combination."""
    scored = []
    for choice in itertools.product(*(range(len(g.options)) for g in problem.groups)):
        totals = problem.totals(choice)
        if all(totals.get(m, 0.0) <= limit * (1 + _FEASIBILITY_TOLERANCE) for m, limit in limits.items()):
            scored.append((totals.get(metric, 0.0), choice))
    scored.sort()
    return [choice for _, choice in scored[:k]]


def solve_heuristic(
    problem: Problem, limits: Mapping[str, float], metric: str, k: int = 1, seed: int = 0
) -> list[tuple[int, ...]]:
    """Up to k good choices by differential evolution with a penalty for broken limits."""
    if not problem.groups:
        return solve_enumeration(problem, limits, metric, k)
    seen: dict[tuple[int, ...], dict[str, float]] = {}

    def to_choice(x: np.ndarray) -> tuple[int, ...]:
        return tuple(min(round(v), len(g.options) - 1) for v, g in zip(x, problem.groups, strict=True))

    def penalised(x: np.ndarray) -> float:
        choice = to_choice(x)
        totals = seen.setdefault(choice, problem.totals(choice))
        excess = sum(max(0.0, totals.get(m, 0.0) / limit - 1.0) for m, limit in limits.items() if limit > 0)
        return totals.get(metric, 0.0) * (1.0 + 1e3 * excess) + 1e6 * excess

    differential_evolution(
        penalised,
        bounds=[(0, len(g.options) - 1) for g in problem.groups],
        integrality=np.ones(len(problem.groups), dtype=bool),
        seed=seed,
        maxiter=200,
        polish=False,
        tol=1e-8,
    )
    feasible = [
        (totals.get(metric, 0.0), choice)
        for choice, totals in seen.items()
        if all(totals.get(m, 0.0) <= limit * (1 + _FEASIBILITY_TOLERANCE) for m, limit in limits.items())
    ]
    feasible.sort()
    return [choice for _, choice in feasible[:k]]


def pick_solver(problem: Problem) -> str:
    if problem.additive:
        return SOLVER_MILP
    return SOLVER_ENUMERATION if problem.size() <= ENUMERATION_LIMIT else SOLVER_HEURISTIC


_SOLVERS = {SOLVER_MILP: solve_milp, SOLVER_ENUMERATION: solve_enumeration, SOLVER_HEURISTIC: solve_heuristic}


def solve(problem: Problem, limits: Mapping[str, float], metric: str, k: int = 1) -> list[Candidate]:
    solver = pick_solver(problem)
    choices = _SOLVERS[solver](problem, limits, metric, k)
    return [Candidate(problem, c, problem.totals(c), solver) for c in choices]


def lower_bound(problem: Problem, metric: str) -> float:
    """No choice in the problem can do better than this (used to skip hopeless problems)."""
    if not problem.additive:
        return -math.inf
    return problem.fixed.get(metric, 0.0) + sum(float(c.min()) for c in problem.cost_matrix(metric) if c.size)


# --- the whole space --------------------------------------------------------------------------


@dataclass
class Infeasibility:
    """Why no plan fits: what each limit would have to become, and the nearest plan."""

    binding: list[str]  # the limits that cannot all be met
    needed: dict[str, float | None]  # limit -> smallest value that, relaxed alone, makes a plan fit
    nearest: Candidate | None  # the plan exceeding its limits by the smallest worst ratio
    nearest_ratio: float  # the nearest plan's worst total / limit

    def describe(self, limits: Mapping[str, float], fmt: Callable[[str, float], str]) -> str:
        lines = []
        for metric in self.binding:
            need = self.needed.get(metric)
            if need is None:
                lines.append(
                    f"{metric}: limit {fmt(metric, limits[metric])} cannot be met by relaxing it alone"
                )
            else:
                lines.append(
                    f"{metric}: limit {fmt(metric, limits[metric])} would have to move to "
                    f"{fmt(metric, need)} ({need / limits[metric] - 1:+.1%})"
                )
        if self.nearest is not None:
            lines.append(
                f"nearest plan ({self.nearest.describe()}) exceeds its worst limit "
                f"by {self.nearest_ratio - 1:.1%}"
            )
        return "; ".join(lines)


@dataclass
class SearchResult:
    ranked: list[Candidate]  # feasible plans, best first
    frontier: list[Candidate]  # non-dominated points over the objective and the limited metrics
    infeasibility: Infeasibility | None
    solvers: list[str]  # which solvers ran, in the order first used
    problems: int  # global configurations considered
    evaluated: int  # problems actually solved (others were bounded away)

    @property
    def best(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None


def search(
    problems: Sequence[Problem],
    limits: Mapping[str, float],
    objective: str,
    k: int = 5,
    pareto_points: int = 0,
) -> SearchResult:
    """Rank the best `k` plans under `limits`; explain infeasibility; optionally trace the frontier."""
    metric = OBJECTIVE_METRIC[objective]
    key = objective_key(objective)
    solvers: list[str] = []
    ranked: list[Candidate] = []
    evaluated = 0
    # Best-first by lower bound: once k plans are in hand, a problem that cannot beat the k-th is skipped.
    order = sorted(problems, key=lambda p: _bound_key(p, metric, objective))
    for problem in order:
        if len(ranked) >= k and _bound_key(problem, metric, objective) >= key(ranked[k - 1]):
            continue
        evaluated += 1
        found = solve(problem, limits, metric, k)
        for candidate in found:
            if candidate.solver not in solvers:
                solvers.append(candidate.solver)
        ranked = sorted(ranked + found, key=key)[:k]
    frontier = pareto_frontier(problems, limits, objective, pareto_points) if pareto_points else []
    infeasibility = None if ranked else explain_infeasible(problems, limits)
    if not solvers:
        solvers = sorted({pick_solver(p) for p in problems})
    return SearchResult(ranked, frontier, infeasibility, solvers, len(problems), evaluated)


def _bound_key(problem: Problem, metric: str, objective: str) -> float:
    bound = lower_bound(problem, metric)
    if objective == "throughput":
        return -problem.samples * 1000.0 / bound if bound > 0 else -math.inf
    return bound


def _min_metric(problem: Problem, limits: Mapping[str, float], metric: str) -> Candidate | None:
    found = solve(problem, limits, metric, 1)
    return found[0] if found else None


def explain_infeasible(problems: Sequence[Problem], limits: Mapping[str, float]) -> Infeasibility:
    """For each limit, the value it would need (others held); and the plan nearest to fitting."""
    needed: dict[str, float | None] = {}
    for metric in limits:
        others = {m: v for m, v in limits.items() if m != metric}
        best = [c for p in problems if (c := _min_metric(p, others, metric)) is not None]
        needed[metric] = min((c.totals.get(metric, 0.0) for c in best), default=None)
    nearest, ratio = _nearest(problems, limits)
    # Binding: relaxing it alone would let a plan fit, or the nearest plan breaks it.
    binding = [
        m
        for m, need in needed.items()
        if need is not None and need > limits[m] * (1 + _FEASIBILITY_TOLERANCE)
    ]
    if nearest is not None:  # limits the nearest plan breaks are binding too
        for metric, limit in limits.items():
            if (
                nearest.totals.get(metric, 0.0) > limit * (1 + _FEASIBILITY_TOLERANCE)
                and metric not in binding
            ):
                binding.append(metric)
    return Infeasibility(binding, {m: needed[m] for m in binding}, nearest, ratio)


def _nearest(problems: Sequence[Problem], limits: Mapping[str, float]) -> tuple[Candidate | None, float]:
    """The plan minimising max(total / limit) over the limits (minimax relaxation)."""
    best: Candidate | None = None
    best_ratio = math.inf
    positive = {m: v for m, v in limits.items() if v > 0}
    for problem in problems:
        if problem.additive and problem.groups:
            choice = _minimax_milp(problem, positive)
        else:
            choices = itertools.product(*(range(len(g.options)) for g in problem.groups))
            if problem.size() > ENUMERATION_LIMIT:
                choices = iter([tuple(0 for _ in problem.groups)])
            choice = min(choices, key=lambda c: _worst_ratio(problem.totals(c), positive))
        if choice is None:
            continue
        totals = problem.totals(choice)
        ratio = _worst_ratio(totals, positive)
        if ratio < best_ratio:
            best, best_ratio = Candidate(problem, choice, totals, pick_solver(problem)), ratio
    return best, best_ratio


def _worst_ratio(totals: Mapping[str, float], limits: Mapping[str, float]) -> float:
    return max((totals.get(m, 0.0) / limit for m, limit in limits.items()), default=0.0)


def _minimax_milp(problem: Problem, limits: Mapping[str, float]) -> tuple[int, ...] | None:
    # Variables: the option indicators, then r. Constraints: fixed_m + c_m.x <= r * limit_m.
    sizes = [len(g.options) for g in problem.groups]
    offsets = np.cumsum([0, *sizes])
    n = int(offsets[-1])
    rows, lower, upper = [], [], []
    for gi in range(len(sizes)):
        row = np.zeros(n + 1)
        row[offsets[gi] : offsets[gi + 1]] = 1.0
        rows.append(row)
        lower.append(1.0)
        upper.append(1.0)
    for metric, limit in limits.items():
        rows.append(np.concatenate([*problem.cost_matrix(metric), [-limit]]))
        lower.append(-np.inf)
        upper.append(-problem.fixed.get(metric, 0.0))
    objective = np.zeros(n + 1)
    objective[-1] = 1.0
    integrality = np.concatenate([np.ones(n), [0]])
    result = milp(
        objective,
        integrality=integrality,
        bounds=Bounds(np.concatenate([np.zeros(n), [-np.inf]]), np.concatenate([np.ones(n), [np.inf]])),
        constraints=LinearConstraint(np.array(rows), np.array(lower), np.array(upper)),
    )
    if result.x is None:
        return None
    picked = np.flatnonzero(result.x[:n] > 0.5)
    return tuple(int(p - offsets[gi]) for gi, p in enumerate(picked))


def pareto_frontier(
    problems: Sequence[Problem], limits: Mapping[str, float], objective: str, points: int = 8
) -> list[Candidate]:
    """Non-dominated plans over the objective and the budget metrics (memory when none is set).

    Each problem contributes its best plan for every metric and an epsilon-constraint sweep of
    `points` levels on the first budget metric, so the frontier between the extremes is traced too.
    """
    metric = OBJECTIVE_METRIC[objective]
    axes = [metric, *[m for m in limits if m != metric]]
    if len(axes) == 1:
        axes.append("memory_bytes" if metric != "memory_bytes" else "latency_ms")
    pool: list[Candidate] = []
    for problem in problems:
        extremes = [c for m in axes if (c := _min_metric(problem, {}, m)) is not None]
        pool.extend(extremes)
        second = axes[1]
        values = [c.totals.get(second, 0.0) for c in extremes]
        if values and max(values) > min(values):
            for level in np.linspace(min(values), max(values), points)[1:-1]:
                found = _min_metric(problem, {second: float(level)}, metric)
                if found is not None:
                    pool.append(found)
    return non_dominated(pool, axes, objective)


def non_dominated(pool: Sequence[Candidate], axes: Sequence[str], objective: str) -> list[Candidate]:
    def vector(c: Candidate) -> tuple[float, ...]:
        values = [c.totals.get(a, 0.0) for a in axes]
        if objective == "throughput":
            values[0] = -c.throughput
        return tuple(values)

    unique: dict[tuple[float, ...], Candidate] = {}
    for candidate in pool:
        unique.setdefault(vector(candidate), candidate)
    points = list(unique.items())
    front = [
        c
        for v, c in points
        if not any(all(a <= b for a, b in zip(w, v, strict=True)) and w != v for w, _ in points)
    ]
    return sorted(front, key=vector)
