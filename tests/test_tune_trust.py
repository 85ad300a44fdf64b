"""Tune's winner is decided by measurement of the plan as apply builds it, never by a prediction."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.plans.engine import Example, apply_plan
from attnprof.plans.records import Plan, PlanChoices
from attnprof.profiling.records import Profile
from attnprof.profiling.run import run_profile
from attnprof.settings import resolve_settings
from attnprof.store import read_record, write_record
from attnprof.targets.load import load_workload
from attnprof.tuning.budget import parse_budget
from attnprof.tuning.compare import paired_ratio
from attnprof.tuning.estimate import ProbeEstimator, StepEstimate
from attnprof.tuning.loop import TuneRequest, tune
from attnprof.tuning.space import GlobalChoice
from attnprof.tuning.verify import change_count

SMALL = {"batch_size": 4, "seq_len": 32, "repeats": 2, "warmup": 1, "threads": 1, "backend": "flash"}


class _Bending:
    """Probe estimates passed through `bend`; measurements, re-pricing and σ calibration go to the probes."""

    source = "a bent estimator"

    def __init__(self, probes: ProbeEstimator) -> None:
        self.probes = probes

    @property
    def measurements(self) -> int:
        return self.probes.measurements

    def estimate(self, choice: GlobalChoice) -> StepEstimate:
        return self.bend(choice, self.probes.estimate(choice))

    def bend(self, choice: GlobalChoice, estimate: StepEstimate) -> StepEstimate:
        raise NotImplementedError

    def add(self, choice: GlobalChoice, profile: Profile) -> None:
        self.probes.add(choice, profile)

    def calibrate(self, scale: float) -> None:
        self.probes.calibrate(scale)

    def applied_profile(self, choice: GlobalChoice) -> Profile | None:
        return self.probes.applied_profile(choice)


class _Misled(_Bending):
    """Whole batches (micro-batch 4) are promised 100x faster than they are; with
    `tiny_memory`, every choice is promised to fit in one byte."""

    def __init__(self, probes: ProbeEstimator, tiny_memory: bool = False) -> None:
        super().__init__(probes)
        self.tiny_memory = tiny_memory

    def bend(self, choice: GlobalChoice, estimate: StepEstimate) -> StepEstimate:
        if choice.batch_size == 4:
            estimate = dataclasses.replace(estimate, latency_ms=estimate.latency_ms / 100, latency_sigma_ms=0.0)
        if self.tiny_memory:
            estimate = dataclasses.replace(estimate, memory_bytes=1.0, memory_sigma_bytes=0.0)
        return estimate


class _Bent(_Bending):
    """Each batch size's predicted latency multiplied by `factors[batch]`, its σ set to
    `sigmas[batch]` of the bent latency where given; measured choices left as measured."""

    def __init__(self, probes: ProbeEstimator, factors: dict[int, float], sigmas: dict[int, float]) -> None:
        super().__init__(probes)
        self.factors, self.sigmas = factors, sigmas

    def bend(self, choice: GlobalChoice, estimate: StepEstimate) -> StepEstimate:
        if estimate.source == "measured" or choice.batch_size not in self.factors:
            return estimate
        latency = estimate.latency_ms * self.factors[choice.batch_size]
        return dataclasses.replace(
            estimate, latency_ms=latency, latency_sigma_ms=latency * self.sigmas.get(choice.batch_size, 0.0)
        )


def _micro_batches() -> list[GlobalChoice]:
    return [GlobalChoice("flash", "fp32", micro_batch, 1) for micro_batch in (1, 2, 4)]


def test_a_wrong_prediction_does_not_reject_the_plan_that_measures_best(models_dir: Path) -> None:
    # Each forward sleeps 160 ms whatever its batch: micro-batches of 2 take twice as long as the
    # whole batch of 4, whatever else the machine is doing.
    workload = load_workload(str(models_dir / "sleepy_model.py"))
    settings = resolve_settings(workload, {**SMALL, "seq_len": 4})
    estimator = _Misled(ProbeEstimator(workload, settings, _micro_batches()))
    request = TuneRequest(parse_budget([]), "latency", ["batch_size"], top_k=2, verify_seconds=5.0)
    outcome = tune(workload, settings, request, estimator)
    whole = next(v for v in outcome.verifications if v.choices.batch_size is None)
    assert whole.contradicted and whole.accepted, whole.reason
    assert outcome.winner is whole
    assert outcome.plan is not None and outcome.plan.verified and outcome.plan.choices.batch_size is None
    assert outcome.plan.speedup is not None and outcome.plan.speedup.rounds >= 5
    assert outcome.rounds >= 5


@pytest.mark.slow
def test_a_neighbour_of_the_best_measured_plan_that_could_beat_it_is_measured(models_dir: Path) -> None:
    # A forward sleeps 160 ms whatever its batch: the larger the batch, the higher the
    # throughput. The estimates promise batch 16 the best; batch 32, one knob from it, a little
    # worse but uncertain (±30%); batch 8 worse and certain.
    workload = load_workload(str(models_dir / "sleepy_model.py"))
    settings = resolve_settings(workload, {**SMALL, "seq_len": 4})
    choices = [GlobalChoice("flash", "fp32", batch, 1) for batch in (1, 2, 4, 8, 16, 32)]
    estimator = _Bent(ProbeEstimator(workload, settings, choices), {16: 0.5, 32: 2.2, 8: 3.0}, {32: 0.3})
    request = TuneRequest(parse_budget([]), "throughput", ["batch_size"], top_k=1, verify_seconds=5.0)
    outcome = tune(workload, settings, request, estimator)
    measured = {v.choices.batch_size for v in outcome.verifications}
    assert {16, 32} <= measured and 8 not in measured, measured
    assert outcome.plan is not None and outcome.plan.choices.batch_size == 32


def test_a_candidate_predicted_sure_to_lose_is_not_measured(models_dir: Path) -> None:
    # A forward sleeps 160 ms whatever its batch. Micro-batch 2 is predicted ten times slower than
    # it is, with a tight σ: ranked third of three, it could not beat the whole batch, and
    # measuring it would cost a profile that changes nothing.
    workload = load_workload(str(models_dir / "sleepy_model.py"))
    settings = resolve_settings(workload, {**SMALL, "seq_len": 4})
    estimator = _Bent(ProbeEstimator(workload, settings, _micro_batches()), {2: 10.0}, {2: 0.01})
    request = TuneRequest(parse_budget([]), "latency", ["batch_size"], top_k=3, verify_seconds=2.0)
    outcome = tune(workload, settings, request, estimator)
    assert [c.problem.value[0].batch_size for c in outcome.search.ranked] == [4, 1, 2]
    measured = {v.choices.batch_size or settings.batch_size for v in outcome.verifications}
    assert 2 not in measured and 4 in measured, measured
    assert outcome.plan is not None and outcome.plan.choices.batch_size is None


def test_a_plan_that_measures_over_the_memory_budget_is_rejected() -> None:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, SMALL)
    memory = {mb: run_profile(workload, dataclasses.replace(settings, batch_size=mb)).totals.peak_memory_bytes
              for mb in (1, 4)}
    assert memory[1] < memory[4]  # more samples at once hold more activations
    limit = (memory[1] + memory[4]) // 2
    estimator = _Misled(ProbeEstimator(workload, settings, _micro_batches()), tiny_memory=True)
    request = TuneRequest(parse_budget([f"memory={limit}B"]), "latency", ["batch_size"], top_k=3, verify_seconds=2.0)
    outcome = tune(workload, settings, request, estimator)
    whole = next(v for v in outcome.verifications if v.choices.batch_size is None)
    assert not whole.accepted and "measured memory_bytes" in whole.reason and "exceeds the limit" in whole.reason
    assert re.search(r"memory_bytes [\d,.]+ MiB exceeds the limit [\d,.]+ MiB", whole.reason)  # as people read sizes
    plan = outcome.plan
    assert plan is not None and plan.measured is not None and plan.measured.memory_bytes is not None
    assert plan.measured.memory_bytes <= limit and plan.choices.batch_size in (1, 2)


FAST = ["--batch-size", "2", "--seq-len", "16", "--repeats", "2", "--warmup", "1", "--threads", "1"]


def test_apply_verify_fails_a_plan_whose_applied_model_breaks_its_memory_budget(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["tune", "--knobs", "dtype", "--top-k", "1", *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "plan.json").read_text())
    applied_memory = data["measured"]["memory_bytes"]
    result = runner.invoke(app, ["apply", "plan.json", "--verify", "--out", "ok.json"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ok.json").read_text())
    assert report["verification"]["measured_memory_bytes"] == applied_memory  # tune measured what apply builds
    data["budgets"]["memory_bytes"] = int(applied_memory) - 1
    (tmp_path / "tight.json").write_text(json.dumps(data))
    result = runner.invoke(app, ["apply", "tight.json", "--verify"])
    assert result.exit_code == 1, result.output
    assert "measured memory_bytes" in result.stderr and "exceeds the plan's budget" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_pruned_head_indices_round_trip_through_the_plan_and_apply_removes_those_heads(tmp_path: Path) -> None:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {"batch_size": 2, "seq_len": 16, "repeats": 2, "warmup": 1, "threads": 1})
    budget = parse_budget([], max_quality_loss="50%")
    outcome = tune(workload, settings, TuneRequest(budget, "latency", ["heads"], top_k=2, verify_seconds=2.0))
    plan = outcome.plan
    pruned = [v for v in outcome.verifications if v.choices.prune_heads and v.accepted]
    assert plan is not None and pruned, [v.reason for v in outcome.verifications]
    plan.choices = pruned[0].choices  # the winner may be the model as it is: take a pruned candidate's plan
    assert all(isinstance(heads, list) for heads in plan.choices.prune_heads.values())
    write_record(tmp_path / "plan.json", plan)
    loaded = read_record(tmp_path / "plan.json", Plan)
    assert loaded.choices.prune_heads == plan.choices.prune_heads
    # Other inputs (another batch, another seed) would score the heads differently: the plan's
    # indices are what is removed, whatever the inputs.
    torch.manual_seed(7)
    model = workload.build_model(torch.device("cpu"), torch.float32)
    args, kwargs = workload.make_inputs(3, 16, torch.device("cpu"), torch.float32)
    _, report = apply_plan(model, loaded.choices, Example(args, kwargs))
    pruned = {site.name: site.pruned_heads for site in report.sites if site.pruned_heads}
    assert pruned == loaded.choices.prune_heads


def test_paired_ratios_of_interleaved_rounds() -> None:
    ratio = paired_ratio([2.0, 2.2, 1.8, 2.0], [1.0, 1.1, 0.9, 1.0])
    assert ratio.value == pytest.approx(2.0) and ratio.low == pytest.approx(2.0) and ratio.significant
    same = paired_ratio([1.0, 1.1, 0.9, 1.05], [1.05, 1.0, 1.0, 1.0])
    assert same.low < 1.0 < same.high and not same.significant


def test_simpler_plans_change_fewer_things() -> None:
    settings = resolve_settings(load_workload("zoo:decoder"), SMALL)
    assert change_count(PlanChoices(backend="flash", threads=1), settings) == 0
    assert change_count(PlanChoices(backend="flash", batch_size=2, threads=1), settings) == 1
    assert change_count(PlanChoices(dtype="bf16", backend="math", prune_heads={"a": [0], "b": [1]}), settings) == 4


def test_pruning_one_transformers_model_leaves_the_next_one_built_unchanged() -> None:
    workload = load_workload("hf:llama")  # its factory hands one config object to every model
    cpu = torch.device("cpu")
    args, kwargs = workload.make_inputs(2, 16, cpu, torch.float32)
    pruned, _ = apply_plan(workload.build_model(cpu, torch.float32), PlanChoices(prune_heads={"*": [1, 3]}),
                           Example(args, kwargs))
    fresh = workload.build_model(cpu, torch.float32)
    assert pruned.config.num_attention_heads == 2 and fresh.config.num_attention_heads == 4
    with torch.no_grad():
        assert torch.isfinite(fresh(*args, **kwargs).logits).all()
