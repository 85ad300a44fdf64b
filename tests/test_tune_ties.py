"""Ties that "fewer changes wins" would decide against a clearly faster median are contested:
the two plans alone run more interleaved rounds until the interval decides or the budget ends.

The steps are a real model that sleeps 6.4 s / (batch × seq)² a forward (tests/models/
erratic_model.py): 25 ms at 16 tokens, 32.7 ms at 14, so the ratio holds on a busy machine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from attnprof.profiling.run import prepare, restored_threads
from attnprof.settings import resolve_settings
from attnprof.targets.load import load_workload
from attnprof.tuning.compare import (
    CONFIDENCE,
    LOOKS,
    PRACTICAL_MARGIN,
    TimedSide,
    contest,
    decided,
    interleave,
    paired_ratio,
)

# Earlier rounds as a loaded machine leaves them: the simpler plan 3x slower in two rounds of
# four, level in the others; its median is far behind, its interval still contains 1.
NOISY = [30.0, 10.0, 30.0, 10.0]
LEVEL = [10.0, 10.0, 10.0, 10.0]


def _side(models_dir: Path, seq_len: int, label: str, samples: list[float] | None = None) -> TimedSide:
    workload = load_workload(str(models_dir / "erratic_model.py"))
    settings = resolve_settings(workload, {"batch_size": 1, "seq_len": seq_len, "threads": 1, "warmup": 1})
    return TimedSide(label, prepare(workload, settings), 1, samples_ms=list(samples or []))


def test_a_contest_is_decided_by_its_interval() -> None:
    assert decided(paired_ratio([1.3, 1.31, 1.29], [1.0, 1.0, 1.0])) == "significant"
    level = paired_ratio([1.0, 1.002, 0.999, 1.001], [1.0, 1.0, 1.0, 1.0])
    assert decided(level) == f"tied within ±{PRACTICAL_MARGIN:.0%}"
    assert decided(paired_ratio(NOISY, LEVEL)) is None


@pytest.mark.slow
def test_a_tie_with_a_large_point_difference_runs_more_rounds_until_significant(models_dir: Path) -> None:
    simpler, leader = _side(models_dir, 14, "simpler", NOISY), _side(models_dir, 16, "leader", LEVEL)
    outcome = contest(simpler, leader, "wall", budget_s=300.0)
    assert outcome is not None and outcome.before.rounds == 4 and not outcome.before.significant
    assert outcome.rounds > 1 and outcome.stopped == "significant", outcome.describe()
    assert outcome.after.low > 1.0 and outcome.after.rounds == 4 + outcome.rounds
    assert len(simpler.samples_ms) == len(leader.samples_ms) == 4 + outcome.rounds  # only these two ran


@pytest.mark.slow
def test_a_true_tie_stops_once_its_interval_lies_within_the_margin(models_dir: Path) -> None:
    a, b = _side(models_dir, 16, "a"), _side(models_dir, 16, "b")
    # A loaded machine varies a round by ~10%: a ±2% interval takes more rounds than a test
    # should; the rule is the same at a ±10% margin.
    a.samples_ms, b.samples_ms = [25.0, 34.0, 27.0], [25.0, 25.0, 25.0]  # +13.7% by point, not significant
    outcome = contest(a, b, "wall", budget_s=300.0, margin=0.10)
    assert outcome is not None and outcome.stopped == "tied within ±10%", outcome.describe()
    assert not outcome.after.significant


def test_the_budget_bounds_a_contest(models_dir: Path) -> None:
    simpler, leader = _side(models_dir, 14, "simpler", NOISY), _side(models_dir, 16, "leader", LEVEL)
    outcome = contest(simpler, leader, "wall", budget_s=0.0)
    assert outcome is not None and outcome.rounds == 1 and outcome.stopped == "the time budget was spent"
    assert "contested for 1 more round(s)" in outcome.describe()


def test_plans_within_the_margin_are_not_contested(models_dir: Path) -> None:
    a = _side(models_dir, 16, "a", [10.1, 9.9, 10.2, 9.8])
    b = _side(models_dir, 16, "b", [10.0, 10.0, 10.0, 10.0])
    assert contest(a, b, "wall", budget_s=300.0) is None
    assert len(a.samples_ms) == 4  # no round was run


def test_the_ranking_is_judged_only_at_the_scheduled_looks(models_dir: Path) -> None:
    a, b = _side(models_dir, 16, "a"), _side(models_dir, 16, "b")
    asked: list[int] = []

    def stop(sides: object) -> bool:
        asked.append(len(a.samples_ms))
        return len(asked) == 3

    rounds = interleave([a, b], "wall", math.inf, 1, stop=stop)
    assert asked == list(LOOKS[:3]) and rounds == LOOKS[2] == len(b.samples_ms)


def test_an_interval_a_sequential_comparison_reports_holds_its_level_over_every_look() -> None:
    # Six rounds whose log-ratios are 95%-significant at one look; judged at up to len(LOOKS) + 2
    # looks, the same rounds are not evidence of a difference.
    numerator, denominator = [1.04, 1.01, 1.03, 1.00, 1.05, 1.02], [1.0] * 6
    assert paired_ratio(numerator, denominator, alpha=1 - CONFIDENCE).significant
    assert not paired_ratio(numerator, denominator).significant


def test_a_plan_contested_before_is_paired_only_on_the_rounds_it_shared(models_dir: Path) -> None:
    simpler = _side(models_dir, 14, "simpler", [*NOISY, 30.0, 10.0])  # two more rounds from an earlier contest
    leader = _side(models_dir, 16, "leader", LEVEL)
    outcome = contest(simpler, leader, "wall", budget_s=0.0)
    assert outcome is not None and outcome.before.rounds == len(LEVEL)
    assert len(simpler.samples_ms) == len(leader.samples_ms) == len(LEVEL) + outcome.rounds


def test_a_side_that_keeps_the_process_threads_never_runs_with_another_sides(models_dir: Path) -> None:
    # The baseline keeps the process's thread count (threads 0); a candidate runs with one thread.
    # In shuffled passes the baseline often follows the candidate: it must still run with the
    # process's count, not with the one the candidate left set.
    seen: list[int] = []
    baseline, candidate = _side(models_dir, 16, "baseline"), _side(models_dir, 16, "one thread")
    baseline.threads = 0
    step = baseline.prepared.step
    baseline.prepared.step = lambda: (seen.append(torch.get_num_threads()), step())
    with restored_threads():
        torch.set_num_threads(2)
        interleave([baseline, candidate], "wall", 0.0, warmup=1, min_rounds=5, max_rounds=5)
        assert torch.get_num_threads() == 2
    assert seen and set(seen) == {2}, seen
