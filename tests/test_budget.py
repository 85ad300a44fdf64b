"""Budget strings: valid forms parse to the right numbers; malformed ones are usage errors with an example."""

from __future__ import annotations

import pytest

from attnprof.errors import UsageError
from attnprof.plans.records import Budget
from attnprof.store import from_json_dict, to_json_dict
from attnprof.tuning.budget import parse_budget, parse_objective


def test_valid_budgets_parse_to_base_units() -> None:
    budget = parse_budget(
        ["memory=20GiB", "latency=15ms", "energy=2J"],
        gpus=8,
        max_error="1e-2",
        max_quality_loss="1%",
        headroom="10%",
    )
    assert budget.memory_bytes == 20 * 2**30
    assert budget.latency_ms == 15.0
    assert budget.energy_j == 2.0
    assert budget.gpus == 8
    assert budget.max_error == pytest.approx(0.01)
    assert budget.max_quality_loss == pytest.approx(0.01)
    assert budget.headroom == pytest.approx(0.10)
    # 10% of the memory budget is held back: the optimizer sees 18 GiB.
    assert budget.limits() == {
        "memory_bytes": pytest.approx(18 * 2**30),
        "latency_ms": 15.0,
        "energy_j": 2.0,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("memory=512MB", ("memory_bytes", 512 * 10**6)),
        ("memory=1.5GiB", ("memory_bytes", int(1.5 * 2**30))),
        ("memory=4096", ("memory_bytes", 4096)),
        ("latency=2s", ("latency_ms", 2000.0)),
        ("latency=500us", ("latency_ms", 0.5)),
        ("energy=500mJ", ("energy_j", 0.5)),
        ("Memory = 1GB", ("memory_bytes", 10**9)),
    ],
)
def test_units(text: str, expected: tuple[str, float]) -> None:
    field_name, value = expected
    assert getattr(parse_budget([text]), field_name) == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    [
        "memory",
        "memory=",
        "memroy=20GiB",
        "memory=20 parsecs",
        "memory=-1GiB",
        "memory=0GiB",
        "latency=15",
        "latency=fast",
        "energy=2W",
        "memory=nanGiB",
    ],
)
def test_malformed_budgets_are_usage_errors_showing_a_valid_example(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_budget([text])
    assert caught.value.exit_code == 2
    assert "e.g." in str(caught.value)
    assert "\n" not in str(caught.value)


def test_other_malformed_flags() -> None:
    with pytest.raises(UsageError, match="given twice"):
        parse_budget(["memory=1GiB", "memory=2GiB"])
    with pytest.raises(UsageError, match="--headroom 10%"):
        parse_budget(headroom="150%")
    with pytest.raises(UsageError, match="--max-quality-loss 1%"):
        parse_budget(max_quality_loss="1 percent")
    with pytest.raises(UsageError, match="--gpus 8"):
        parse_budget(gpus=0)
    with pytest.raises(UsageError, match="--objective latency"):
        parse_objective("fastest")
    assert parse_objective("Throughput") == "throughput"
    assert parse_budget(headroom="0%").headroom == 0.0


def test_budget_round_trips_through_json() -> None:
    budget = parse_budget(["memory=1GiB", "latency=3ms"], max_error="1e-3", headroom="5%")
    assert from_json_dict(Budget, to_json_dict(budget)) == budget


def test_plan_round_trips_through_json_with_per_layer_choices() -> None:
    from attnprof.plans.records import Plan, PlanChoices, PlanFigures
    from attnprof.settings import Settings
    from attnprof.targets.records import WorkloadInfo

    plan = Plan(
        workload=WorkloadInfo(target="zoo:decoder", fingerprint="abc123", parameter_count=10),
        settings=Settings(batch_size=4),
        device="cpu",
        objective="latency",
        choices=PlanChoices(
            dtype="bf16",
            batch_size=2,
            prune_heads={"layers.0.attn": 2, "layers.1.attn": [0, 3]},
            kv_heads={"*": 2},
        ),
        budgets=parse_budget(["memory=1GiB"]),
        predicted=PlanFigures(latency_ms=3.0, memory_bytes=1e6, latency_sigma_ms=0.1),
        measured=PlanFigures(latency_ms=3.1, finite=True, max_error=1e-3),
        baseline=PlanFigures(latency_ms=5.0),
        verified=True,
        knobs=["dtype", "batch_size", "heads"],
        solver="milp",
    )
    assert from_json_dict(Plan, to_json_dict(plan)) == plan


def test_plan_with_an_unknown_dtype_or_objective_is_refused() -> None:
    from attnprof.plans.records import PlanChoices

    with pytest.raises(UsageError, match="plan dtype"):
        PlanChoices(dtype="int4")
    with pytest.raises(UsageError, match="data_parallel_mode"):
        PlanChoices(data_parallel_mode="zero3")
