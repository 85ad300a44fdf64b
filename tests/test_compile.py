"""The compile knob: transformer blocks compiled by torch.compile (inductor), applied, profiled
with compile time and recompiles apart from step time, and chosen by tune like any other knob.

Compiling takes tens of seconds on a loaded CPU: the models are tiny, the tests that compile
are marked slow, and nothing here compares a time with a threshold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from attnprof.errors import UsageError
from attnprof.measure.compilation import CompileWatch, _frame_and_attempt
from attnprof.plans.engine import Example, apply_plan
from attnprof.plans.outputs import output_difference
from attnprof.plans.records import PlanChoices
from attnprof.plans.verify import applied_settings, applied_workload
from attnprof.profiling.records import Profile
from attnprof.profiling.run import run_profile
from attnprof.report.profile import compile_fact
from attnprof.settings import Settings
from attnprof.targets.load import load_workload
from attnprof.targets.workload import architecture_fingerprint, compiled_forward
from attnprof.tuning.space import DeviceFacts, build_space

CPU = DeviceFacts("cpu", "cpu", None, 2)
SMALL = Settings(batch_size=1, seq_len=16, warmup=1, repeats=3, threads=1)
# Inductor fuses and reorders float32 arithmetic: outputs agree to rounding.
TOLERANCE = 1e-4


def test_compile_ids_read_as_frame_and_attempt() -> None:
    assert _frame_and_attempt("0/0") == ("0", 0)
    assert _frame_and_attempt("3/2") == ("3", 2)
    assert _frame_and_attempt("[1/1]") == ("1", 1)
    assert _frame_and_attempt("!0/4_1") == ("!0", 4)


def test_compile_is_a_knob_named_only_and_never_sharded_or_around_flex() -> None:
    default = build_space(CPU, [], Settings(), ["backend"])
    assert {g.compile for g in default.globals} == {False}
    space = build_space(CPU, [], Settings(), ["backend", "compile"], backends=("flash", "flex"))
    assert {(g.backend, g.compile) for g in space.globals} == {("flash", False), ("flash", True), ("flex", False)}
    assert any(e.knob == "compile" and "flex" in e.reason for e in space.excluded)
    assert {g.as_config().get("compile") for g in space.globals} == {None, True}
    with pytest.raises(UsageError, match="one device"):
        PlanChoices(compile=True, tensor_parallel=2)
    with pytest.raises(UsageError, match="flex"):
        PlanChoices(compile=True, backend="flex")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_watch_counts_compiles_and_recompiles_and_retimes_a_step_that_compiled() -> None:
    @torch.compile(dynamic=False)
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1

    calls: list[int] = []

    def step() -> int:
        calls.append(1)
        double(torch.ones(3))
        return len(calls)

    with CompileWatch() as watch:
        assert watch.without_compiles(step) == 2  # the first call compiled: its result is discarded
        double(torch.ones(5))  # new shape, dynamic=False: a recompile
    stats = watch.stats()
    assert stats is not None
    assert (stats.frames, stats.compiles, stats.recompiles) == (1, 2, 1)
    assert (stats.timed_compiles, stats.retimed_steps) == (1, 1)
    assert stats.compile_time_s > 0
    with CompileWatch() as idle:
        double(torch.ones(5))
    assert idle.stats() is None  # nothing compiled: no record


def _compiled_profile(target: str) -> tuple[Profile, Profile]:
    workload = load_workload(target)
    choices = PlanChoices(compile=True)
    settings = applied_settings(SMALL, choices)
    return run_profile(workload, SMALL), run_profile(applied_workload(workload, settings, choices), settings)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("target", ["zoo:decoder", "hf:llama"])
def test_compiled_profile_reports_compiles_apart_from_step_time(target: str) -> None:
    eager, compiled = _compiled_profile(target)
    stats = compiled.compilation
    assert eager.compilation is None and stats is not None
    assert stats.compiles >= 1 and stats.compile_time_s > 0
    step = compiled.totals.time_ms
    assert step is not None and len(step.samples) == SMALL.repeats
    # No step sample holds a compile: each is far below the compile time the watch measured.
    assert max(step.samples) < 1e3 * stats.compile_time_s
    # The counting pass runs eagerly: the same FLOPs, attributed to the same modules.
    assert compiled.totals.flops == eager.totals.flops
    assert compiled.totals.attention_flops == eager.totals.attention_flops
    assert [layer.name for layer in compiled.layers] == [layer.name for layer in eager.layers]
    assert compiled.workload.fingerprint != eager.workload.fingerprint  # the gate never compares the two
    fact = compile_fact(compiled)
    assert f"{stats.recompiles} recompile(s)" in fact and "not in the step time" in fact
    assert compile_fact(eager) == "nothing compiled"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_apply_compiles_each_block_and_keeps_the_outputs() -> None:
    workload = load_workload("zoo:decoder")
    device = torch.device("cpu")
    example = Example(*workload.make_inputs(2, 16, device, torch.float32))
    reference = workload.build_model(device, torch.float32).eval()
    model, report = apply_plan(workload.build_model(device, torch.float32).eval(), PlanChoices(compile=True), example)
    assert report.applied == ["torch.compile (inductor) on 4 transformer block(s); compiled on the first call"]
    assert [name for name, m in model.named_modules() if compiled_forward(m)] == [f"layers.{i}" for i in range(4)]
    assert architecture_fingerprint(model) != architecture_fingerprint(reference)
    with torch.no_grad():
        difference = output_difference(example.run(reference), example.run(model))
    assert difference.finite and difference.max_rel <= TOLERANCE, difference
    _, second = apply_plan(model, PlanChoices(compile=True), example)
    assert second.applied == []  # already compiled: not wrapped twice


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_tune_measures_the_compiled_plan_and_apply_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from attnprof.cli.app import app
    from attnprof.plans.records import Budget
    from attnprof.store import write_record
    from attnprof.tuning.loop import TuneRequest, tune

    workload = load_workload("zoo:decoder")
    request = TuneRequest(Budget(), "latency", ["compile"], verify_seconds=5.0, profiles_dir=tmp_path / "profiles")
    outcome = tune(workload, SMALL, request)
    assert {g.compile for g in outcome.space.globals} == {False, True}
    measured = {v.choices.compile: v for v in outcome.verifications if v.measured is not None}
    assert set(measured) == {False, True}
    # The compiled candidate ran compiled code (its fingerprint says so); its own profile lists a
    # compile only if one ran in it: the probe before it may have compiled the shared block code.
    profile = measured[True].profile
    assert profile is not None and profile.workload.fingerprint != outcome.baseline.workload.fingerprint
    plan = outcome.plan
    assert plan is not None and plan.verified and plan.choices.compile in measured
    compiled_plan = dataclasses.replace(plan, choices=dataclasses.replace(plan.choices, compile=True))
    write_record(tmp_path / "plan.json", compiled_plan)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["apply", "plan.json", "--verify"])
    assert result.exit_code == 0, result.output
    assert "torch.compile (inductor) on 4 transformer block(s)" in result.stdout
