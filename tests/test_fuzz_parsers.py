"""Fuzzing the command-line parsers and the plan loader: bad input is a clean error, never a crash."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnprof.api import load_plan
from attnprof.cli.options import check_options
from attnprof.errors import InputFileError, UsageError
from attnprof.plans.records import Budget, Plan, PlanChoices, PlanFigures
from attnprof.report.registry import load_report_record
from attnprof.settings import ProjectConfig, Settings
from attnprof.store import to_json_dict, write_record
from attnprof.targets.records import WorkloadInfo
from attnprof.tuning.budget import parse_budget, parse_objective
from tests.fuzzing import EDGE_OR_WRONG_TYPE, locations, mutations_of, replaced

NUMBERS = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e308", "1e300", "1e-320", "0", "0.0", ".5", "5.", "1e", "--1", "nan", "inf"]),
)
UNITS = st.sampled_from(["", "b", "GiB", "MB", "k", "ms", "s", "us", "µs", "min", "J", "kJ", "Wh", "%", "x"])
QUANTITIES = st.one_of(st.tuples(NUMBERS, st.sampled_from(["", " "]), UNITS).map("".join), st.text(max_size=12))
BUDGET_ITEMS = st.one_of(
    st.tuples(st.sampled_from(["memory", "latency", "energy", "Memory ", "power", ""]), st.just("="), QUANTITIES).map(
        "".join
    ),
    st.text(max_size=20),
)


def _budget_is_usable(budget: Budget) -> None:
    # Whatever parses must be finite, positive where it is a limit, and survive a save and load.
    for value in (budget.memory_bytes, budget.latency_ms, budget.energy_j, budget.max_error):
        assert value is None or (math.isfinite(value) and value > 0)
    assert 0 <= budget.headroom < 1


@given(
    st.lists(BUDGET_ITEMS, max_size=3),
    st.one_of(st.none(), QUANTITIES),
    st.one_of(st.none(), QUANTITIES),
    st.one_of(st.none(), QUANTITIES),
    st.one_of(st.integers(-2, 9), st.booleans()),
)
def test_budget_flags(
    items: list[str], max_error: str | None, quality: str | None, headroom: str | None, gpus: int
) -> None:
    try:
        budget = parse_budget(items, gpus=gpus, max_error=max_error, max_quality_loss=quality, headroom=headroom)
    except UsageError as exc:
        assert "\n" not in str(exc) and exc.exit_code == 2
        return
    _budget_is_usable(budget)


@pytest.mark.parametrize("item", ["memory=1e300TiB", "latency=1e306min", "energy=1e308Wh", "memory=1e-30b"])
def test_budgets_beyond_float_range_are_usage_errors(item: str) -> None:
    with pytest.raises(UsageError, match="budget"):
        parse_budget([item])


@given(st.text(max_size=20))
def test_objective(text: str) -> None:
    with contextlib.suppress(UsageError):
        parse_objective(text)


def small_plan() -> Plan:
    return Plan(
        workload=WorkloadInfo(target="zoo:decoder", fingerprint="abc123", parameter_count=512),
        settings=Settings(),
        device="cpu",
        objective="latency",
        choices=PlanChoices(dtype="bf16", backend="flash", prune_heads={"*": 1}, kv_heads={"layers.0.attn": 2}),
        budgets=Budget(memory_bytes=2**30, latency_ms=15.0, headroom=0.1),
        predicted=PlanFigures(latency_ms=10.0, memory_bytes=1e8),
        measured=PlanFigures(latency_ms=10.5, memory_bytes=1.1e8, finite=True),
        knobs=["dtype", "backend"],
        solver="milp",
    )


PLAN = to_json_dict(small_plan())


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plans")


def _load_plan_or_clean_error(path: Path) -> None:
    try:
        load_plan(path)
    except InputFileError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    try:  # `attnprof report` recognizes the record kind first
        load_report_record(path)
    except InputFileError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)


def test_the_valid_plan_round_trips(folder: Path) -> None:
    write_record(folder / "plan.json", small_plan())
    assert load_plan(folder / "plan.json") == small_plan()


@given(mutations_of(PLAN))
def test_mutated_plans(folder: Path, data: Any) -> None:
    path = folder / "mutated.json"
    path.write_text(json.dumps(data))
    _load_plan_or_clean_error(path)


@pytest.mark.parametrize("edge", EDGE_OR_WRONG_TYPE)
def test_every_plan_field_with_every_edge_value(folder: Path, edge: Any) -> None:
    path = folder / "edge.json"
    for location in locations(PLAN):
        path.write_text(json.dumps(replaced(PLAN, location, edge)))
        _load_plan_or_clean_error(path)


THRESHOLD_TEXTS = st.one_of(
    st.text(max_size=30),
    st.tuples(
        st.sampled_from(["", "*:", "layers.*attn*:", "::", "total:"]),
        st.sampled_from(["median", "MEAN", "p10", "p90", "memory", "p50", ""]),
        st.just(":"),
        st.one_of(NUMBERS, st.sampled_from(["off", "OFF", "", "%"])),
        st.sampled_from(["%", "", " %", "%%"]),
    ).map("".join),
)
CONFIG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.lists(st.text(max_size=8), max_size=3),
)
CONFIG_KEYS = st.sampled_from(["target", "baseline", "thresholds", "metrics", "alpha", "allow_machine_mismatch", "x"])


@given(
    st.dictionaries(CONFIG_KEYS, CONFIG_VALUES.filter(lambda v: v is not None), max_size=4),
    st.dictionaries(CONFIG_KEYS.map(lambda k: "ATTNPROF_" + k.upper()), st.text(max_size=12), max_size=3),
    st.one_of(st.none(), st.lists(THRESHOLD_TEXTS, max_size=3)),
    st.one_of(st.none(), st.floats()),
)
def test_check_thresholds_from_flags_environment_and_pyproject(
    table: dict, environ: dict, thresholds: list[str] | None, alpha: float | None
) -> None:
    config = ProjectConfig(table, Path("pyproject.toml"), environ)
    try:
        options = check_options(config, thresholds, None, alpha, False)
    except UsageError as exc:
        assert "\n" not in str(exc) and exc.exit_code == 2
        return
    assert all(t.limit is None or (math.isfinite(t.limit) and t.limit >= 0) for t in options.thresholds)


@given(st.text(max_size=200))
def test_pyproject_with_random_attnprof_table(folder: Path, body: str) -> None:
    (folder / "pyproject.toml").write_text("[tool.attnprof]\n" + body, encoding="utf-8", errors="surrogatepass")
    try:
        config = ProjectConfig.load(folder, environ={})
        check_options(config, None, None, None, False)
    except (InputFileError, UsageError) as exc:
        assert exc.exit_code == 2
