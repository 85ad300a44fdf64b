"""A later tune of the same workload prices choices from what earlier runs measured, and probes
again when it cannot trust them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.profiling.run import restored_threads
from attnprof.settings import Settings, resolve_settings
from attnprof.targets.load import load_workload
from attnprof.targets.workload import Workload
from attnprof.tuning import history
from attnprof.tuning.budget import parse_budget
from attnprof.tuning.loop import TuneOutcome, TuneRequest, tune
from attnprof.tuning.space import GlobalChoice

SMALL = {"batch_size": 4, "seq_len": 32, "repeats": 2, "warmup": 1, "threads": 1, "backend": "flash"}


def _tune(workload: Workload, settings: Settings, use_history: bool = True) -> TuneOutcome:
    request = TuneRequest(parse_budget([]), "latency", ["batch_size"], top_k=2, verify_seconds=2.0,
                          use_history=use_history)
    outcome = tune(workload, settings, request)
    assert outcome.plan is not None and outcome.plan.verified
    return outcome


def _history_file(workload: Workload, settings: Settings) -> Path:
    return history.TuneHistory.of(workload, settings).path


@pytest.fixture
def decoder() -> tuple[Workload, Settings]:
    workload = load_workload("zoo:decoder")
    return workload, resolve_settings(workload, SMALL)


@pytest.mark.slow
def test_a_second_run_prices_the_probes_from_the_first(
    decoder: tuple[Workload, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs a few seconds apart on a busy machine can see the baseline's speed move by more
    # than the drift bound; this test is about reuse, the drift test below about the bound.
    monkeypatch.setattr(history, "HISTORY_DRIFT", float("inf"))
    workload, settings = decoder
    first = _tune(workload, settings)
    assert first.estimator_source.startswith("surrogate fitted on probe measurements")
    lines = _history_file(workload, settings).read_text().splitlines()
    assert len(lines) == 1
    remembered = {json.dumps(c["choice"], sort_keys=True) for c in json.loads(lines[0])["choices"]}
    assert len(remembered) >= 2  # the reference and the smallest micro-batch, at least

    second = _tune(workload, settings)
    assert "earlier tune run(s) measured" in second.estimator_source
    assert second.measurements == 1 + _verified(second)  # the baseline and the candidates: no probe
    # It adds a line when it compared a candidate (none may have been worth measuring).
    assert len(_history_file(workload, settings).read_text().splitlines()) == 1 + (_verified(second) > 0)

    fresh = _tune(workload, settings, use_history=False)  # --no-history probes again
    assert fresh.estimator_source.startswith("surrogate fitted on probe measurements")
    assert fresh.measurements > 1 + _verified(fresh)


def _verified(outcome: TuneOutcome) -> int:
    """Candidates profiled for verification (not a probe's or the baseline's profile reused)."""
    return sum(v.profile is not None and not v.reused for v in outcome.verifications)


@pytest.mark.slow
def test_a_history_from_another_speed_of_the_machine_is_not_used(decoder: tuple[Workload, Settings]) -> None:
    workload, settings = decoder
    _tune(workload, settings)
    path = _history_file(workload, settings)
    run = json.loads(path.read_text())
    run["baseline_ms"] *= 1000  # as if the machine had been a thousand times slower then
    path.write_text(json.dumps(run) + "\n")
    again = _tune(workload, settings)
    assert again.estimator_source.startswith("surrogate fitted on probe measurements")
    assert again.plan is not None
    assert any("the machine has changed; probing afresh" in note for note in again.plan.notes), again.plan.notes


def test_a_damaged_history_is_noted_and_tune_probes_afresh(decoder: tuple[Workload, Settings]) -> None:
    workload, settings = decoder
    path = _history_file(workload, settings)
    path.parent.mkdir(parents=True)
    path.write_text('{"key": "x", "created": 1}\nnot json\n')
    outcome = _tune(workload, settings)
    assert outcome.estimator_source.startswith("surrogate fitted on probe measurements")
    assert outcome.plan is not None
    assert any("the tune history could not be read" in note for note in outcome.plan.notes), outcome.plan.notes


def test_tune_leaves_the_callers_thread_count_as_it_was(
    decoder: tuple[Workload, Settings],
) -> None:
    # The baseline keeps the process's threads (3 here); the probes and candidates run with the
    # thread counts of the space (1 or 2 on this machine's cores), each setting its own.
    workload, settings = decoder
    settings = dataclasses.replace(settings, threads=0)
    with restored_threads():
        torch.set_num_threads(3)
        request = TuneRequest(parse_budget([]), "latency", ["threads"], top_k=2, verify_seconds=2.0)
        outcome = tune(workload, settings, request)
        assert torch.get_num_threads() == 3
    assert outcome.plan is not None and outcome.plan.verified


def _line(key: str, baseline_ms: float, ratios: dict[int, float], held_out: int = 0, z2: float = 0.0) -> str:
    choices = [{"choice": {"backend": "flash", "dtype": "fp32", "batch_size": batch, "threads": 1},
                "log_ratio": ratio, "peak_memory_bytes": 2000, "param_bytes": 1000} for batch, ratio in ratios.items()]
    return json.dumps({"schema_version": 1, "key": key, "created": "2026-12-02T00:00:00+00:00",
                       "baseline_ms": baseline_ms, "choices": choices, "held_out": held_out, "z_square_sum": z2})


def test_remembered_ratios_pool_the_latest_observations_with_a_floor_on_their_spread(tmp_path: Path) -> None:
    path = tmp_path / "tune-history" / "w.jsonl"
    path.parent.mkdir()
    old = [_line("k", 10.0, {1: 5.0}) for _ in range(history.HISTORY_SAMPLES)]  # pushed out by the later ones
    later = [_line("k", 10.0, {1: r, 2: 0.0}) for r in (0.60, 0.70, 0.80, 0.70, 0.70)]
    path.write_text("\n".join([*old, _line("other", 99.0, {1: 9.0}), *later]) + "\n")
    priors = history.TuneHistory(path, "k").priors(baseline_ms=11.0)
    one, two = (priors[GlobalChoice("flash", "fp32", batch, 1)] for batch in (1, 2))
    assert one.log_ratio == pytest.approx(0.70) and one.runs == history.HISTORY_SAMPLES
    assert one.sigma == pytest.approx(max(0.0707, history.HISTORY_SIGMA), abs=1e-3)
    assert two.log_ratio == 0.0 and two.sigma == history.HISTORY_SIGMA  # no spread seen: the floor
    assert history.TuneHistory(path, "k").priors(baseline_ms=10.0 * 1.6) == {}  # the machine has changed


def test_sigma_is_scaled_by_the_remembered_held_out_errors_once_there_are_enough(tmp_path: Path) -> None:
    path = tmp_path / "tune-history" / "w.jsonl"
    path.parent.mkdir()
    path.write_text(_line("k", 10.0, {1: 0.0}, held_out=2, z2=8.0) + "\n")
    assert history.TuneHistory(path, "k").sigma_scale() == 1.0  # 2 points: too few to say
    path.write_text("\n".join(_line("k", 10.0, {1: 0.0}, held_out=2, z2=z2) for z2 in (8.0, 8.0, 2.0)) + "\n")
    assert history.TuneHistory(path, "k").sigma_scale() == pytest.approx((18.0 / 6) ** 0.5)
    path.write_text("\n".join(_line("k", 10.0, {1: 0.0}, held_out=3, z2=0.03) for _ in range(3)) + "\n")
    assert history.TuneHistory(path, "k").sigma_scale() == history.MIN_SIGMA_SCALE


@pytest.mark.slow
def test_the_cli_prices_a_second_run_from_the_first_unless_told_not_to(runner: CliRunner) -> None:
    flags = ["--knobs", "batch_size", "--batch-size", "4", "--seq-len", "16", "--repeats", "2", "--warmup", "1",
             "--threads", "1", "--uncertainty", "1e9", "--out", "plan.json"]
    first = runner.invoke(app, ["tune", *flags])
    assert first.exit_code == 0, first.output
    assert "estimates: surrogate fitted on probe measurements" in first.stdout
    second = runner.invoke(app, ["tune", *flags, "--out", "again.json"])
    assert second.exit_code == 0, second.output
    assert "earlier tune run(s) measured" in second.stdout
    fresh = runner.invoke(app, ["tune", *flags, "--out", "fresh.json", "--no-history"])
    assert fresh.exit_code == 0, fresh.output
    assert "estimates: surrogate fitted on probe measurements" in fresh.stdout
