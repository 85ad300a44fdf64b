"""The optimizer: exact MILP vs enumeration, limits respected, infeasibility explained, frontier."""

from __future__ import annotations

import math
import random

import pytest

from attnprof.tuning.optimize import (
    SOLVER_ENUMERATION,
    SOLVER_HEURISTIC,
    SOLVER_MILP,
    Group,
    Option,
    Problem,
    non_dominated,
    search,
    solve_enumeration,
    solve_heuristic,
    solve_milp,
)


def random_problem(rng: random.Random, groups: int, options: int, exact_options: bool = False) -> Problem:
    return Problem(
        config={"id": rng.randrange(1000)},
        fixed={"latency_ms": rng.uniform(0, 5), "memory_bytes": rng.uniform(0, 50)},
        groups=[
            Group(
                f"layer{g}",
                [
                    Option(
                        f"o{o}",
                        {"latency_ms": rng.uniform(0.1, 10), "memory_bytes": rng.uniform(1, 100)},
                    )
                    for o in range(options if exact_options else rng.randint(1, options))
                ],
            )
            for g in range(groups)
        ],
    )


def objective_value(problem: Problem, choice: tuple[int, ...], metric: str) -> float:
    return problem.totals(choice)[metric]


@pytest.mark.parametrize("seed", range(40))
def test_milp_and_enumeration_agree_on_random_small_instances(seed: int) -> None:
    rng = random.Random(seed)
    problem = random_problem(rng, groups=rng.randint(1, 5), options=4)
    # A memory limit somewhere between the cheapest and the dearest plan, sometimes below both.
    low = problem.fixed["memory_bytes"] + sum(
        min(o.costs["memory_bytes"] for o in g.options) for g in problem.groups
    )
    high = problem.fixed["memory_bytes"] + sum(
        max(o.costs["memory_bytes"] for o in g.options) for g in problem.groups
    )
    limits = {"memory_bytes": rng.uniform(low * 0.9, high)}
    exact = solve_milp(problem, limits, "latency_ms", k=3)
    brute = solve_enumeration(problem, limits, "latency_ms", k=3)
    assert len(exact) == len(brute)
    for a, b in zip(exact, brute, strict=True):  # ties may pick different plans; the values agree
        assert objective_value(problem, a, "latency_ms") == pytest.approx(
            objective_value(problem, b, "latency_ms")
        )
    for choice in exact:
        assert problem.totals(choice)["memory_bytes"] <= limits["memory_bytes"] * (1 + 1e-9)
    if not brute:
        assert low > limits["memory_bytes"]  # empty only when even the leanest plan does not fit


@pytest.mark.parametrize("seed", range(10))
def test_returned_plans_never_violate_any_limit(seed: int) -> None:
    rng = random.Random(100 + seed)
    problems = [random_problem(rng, groups=3, options=3) for _ in range(6)]
    limits = {"memory_bytes": rng.uniform(60, 250), "latency_ms": rng.uniform(8, 30)}
    result = search(problems, limits, "latency", k=5, pareto_points=4)
    for candidate in result.ranked:
        for metric, limit in limits.items():
            assert candidate.totals[metric] <= limit * (1 + 1e-9)
    every = [(p, c) for p in problems for c in solve_enumeration(p, limits, "latency_ms", k=10**6)]
    if every:
        best = min(p.totals(c)["latency_ms"] for p, c in every)
        assert result.best is not None and result.best.totals["latency_ms"] == pytest.approx(best)
        assert result.infeasibility is None
    else:
        assert result.best is None and result.infeasibility is not None


def test_top_k_are_distinct_and_ordered() -> None:
    problem = random_problem(random.Random(7), groups=4, options=3, exact_options=True)
    choices = solve_milp(problem, {}, "latency_ms", k=6)
    assert len(set(choices)) == len(choices) == 6
    values = [problem.totals(c)["latency_ms"] for c in choices]
    assert values == sorted(values)


def test_infeasible_budget_names_the_binding_limit_and_how_far_it_must_move() -> None:
    # Two layers; pruning halves memory and costs latency. Memory cannot go below 10 + 20 + 20 = 50.
    layer = [
        Option("full", {"memory_bytes": 40, "latency_ms": 1}),
        Option("half", {"memory_bytes": 20, "latency_ms": 1.5}),
    ]
    problem = Problem(
        {"dtype": "fp32"}, {"memory_bytes": 10, "latency_ms": 1}, [Group("a", layer), Group("b", layer)]
    )
    limits = {"memory_bytes": 40.0, "latency_ms": 100.0}
    result = search([problem], limits, "latency")
    assert result.best is None
    why = result.infeasibility
    assert why is not None
    assert why.binding == ["memory_bytes"]
    assert why.needed["memory_bytes"] == pytest.approx(50.0)
    assert why.nearest is not None and why.nearest.totals["memory_bytes"] == pytest.approx(50.0)
    assert why.nearest_ratio == pytest.approx(50 / 40)
    text = why.describe(limits, lambda m, v: f"{v:g}")
    assert "would have to move to 50 (+25.0%)" in text


def test_two_limits_that_only_fail_together_are_both_binding() -> None:
    # Either plan meets one limit alone; no plan meets both.
    options = [
        Option("fast", {"latency_ms": 1, "memory_bytes": 10}),
        Option("lean", {"latency_ms": 10, "memory_bytes": 1}),
    ]
    problem = Problem({}, {}, [Group("a", options)])
    result = search([problem], {"latency_ms": 5.0, "memory_bytes": 5.0}, "latency")
    why = result.infeasibility
    assert why is not None and sorted(why.binding) == ["latency_ms", "memory_bytes"]
    assert why.needed == {"latency_ms": 10.0, "memory_bytes": 10.0}
    assert why.nearest_ratio == pytest.approx(2.0)


def test_non_additive_problems_are_enumerated_or_searched_heuristically() -> None:
    rng = random.Random(3)
    base = random_problem(rng, groups=4, options=3, exact_options=True)

    def bottleneck(choice: tuple[int, ...]) -> dict[str, float]:
        # A two-stage pipeline: latency is the slower stage, not the sum.
        costs = [g.options[i].costs for g, i in zip(base.groups, choice, strict=True)]
        first = sum(c["latency_ms"] for c in costs[:2])
        second = sum(c["latency_ms"] for c in costs[2:])
        return {"latency_ms": max(first, second), "memory_bytes": sum(c["memory_bytes"] for c in costs)}

    problem = Problem({"pp": 2}, {}, base.groups, evaluate=bottleneck)
    memories = sorted(
        problem.totals(c)["memory_bytes"] for c in solve_enumeration(problem, {}, "latency_ms", 100)
    )
    limits = {"memory_bytes": memories[len(memories) // 2]}  # half the plans fit
    result = search([problem], limits, "latency")
    assert result.solvers == [SOLVER_ENUMERATION]
    heuristic = solve_heuristic(problem, limits, "latency_ms", k=1)
    exact = solve_enumeration(problem, limits, "latency_ms", k=1)
    assert heuristic and exact
    # On a space of 81 points differential evolution finds the optimum.
    assert bottleneck(heuristic[0])["latency_ms"] == pytest.approx(bottleneck(exact[0])["latency_ms"])


def test_large_non_additive_problem_uses_the_heuristic_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import attnprof.tuning.optimize as optimize

    monkeypatch.setattr(optimize, "ENUMERATION_LIMIT", 10)
    base = random_problem(random.Random(4), groups=3, options=3, exact_options=True)
    problem = Problem({}, {}, base.groups, evaluate=base.totals)
    result = search([problem], {}, "latency")
    assert result.solvers == [SOLVER_HEURISTIC]
    assert "not proven optimal" in SOLVER_HEURISTIC


def test_throughput_objective_compares_samples_per_second_across_problems() -> None:
    small = Problem({"micro_batch": 1}, {"latency_ms": 10.0}, samples=8)
    large = Problem({"micro_batch": 8}, {"latency_ms": 40.0}, samples=8)
    result = search([small, large], {}, "throughput", k=2)
    assert [c.problem.config["micro_batch"] for c in result.ranked] == [1, 8]
    assert result.ranked[0].throughput == pytest.approx(800.0)
    assert result.solvers == [SOLVER_MILP]


def test_pareto_frontier_is_non_dominated_and_spans_the_trade_off() -> None:
    rng = random.Random(11)
    problems = [random_problem(rng, groups=3, options=3) for _ in range(3)]
    result = search(problems, {"memory_bytes": 1e9}, "latency", pareto_points=6)
    front = result.frontier
    assert len(front) >= 2
    for a in front:
        for b in front:
            if a is not b:
                assert not (
                    a.totals["latency_ms"] <= b.totals["latency_ms"]
                    and a.totals["memory_bytes"] <= b.totals["memory_bytes"]
                    and (a.totals["latency_ms"], a.totals["memory_bytes"])
                    != (b.totals["latency_ms"], b.totals["memory_bytes"])
                )
    every = [(p, c) for p in problems for c in solve_enumeration(p, {}, "latency_ms", k=10**6)]
    fastest = min(p.totals(c)["latency_ms"] for p, c in every)
    leanest = min(p.totals(c)["memory_bytes"] for p, c in every)
    assert front[0].totals["latency_ms"] == pytest.approx(fastest)
    assert min(c.totals["memory_bytes"] for c in front) == pytest.approx(leanest)
    assert non_dominated(front, ["latency_ms", "memory_bytes"], "latency") == front
    assert all(math.isfinite(c.totals["latency_ms"]) for c in front)
