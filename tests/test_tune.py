"""`attnprof tune` end to end on real models: verified plans, budgets kept, exits 1/2/5 with reasons."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.plans.outputs import output_difference
from attnprof.plans.records import Plan, PlanChoices
from attnprof.profiling.run import run_profile
from attnprof.settings import resolve_settings
from attnprof.store import read_record
from attnprof.targets.load import load_workload
from attnprof.tuning.budget import parse_budget
from attnprof.tuning.loop import TuneRequest, tune
from attnprof.tuning.price import LayerBasis, block_share_of_rest, layer_option_costs, param_share_outside_blocks
from attnprof.tuning.space import AttentionLayout, LayerOption
from attnprof.tuning.verify import OutputChecker, contradiction
from tests.samples import sample_profile

FAST = ["--batch-size", "2", "--seq-len", "16", "--repeats", "2", "--warmup", "1", "--threads", "1"]
# Timings on a shared test machine swing far beyond any model's uncertainty: tests that are not about
# refuting predictions accept any measured latency (the rule itself is tested on its own below).
LENIENT = 1e9


@pytest.mark.parametrize(
    "flags",
    [
        ["--budget", "memory"],
        ["--budget", "memroy=1GiB"],
        ["--budget", "latency=15"],
        ["--max-error", "lots"],
        ["--headroom", "200%"],
        ["--objective", "speed"],
        ["--knobs", "dtype,colour"],
        ["--top-k", "0"],
        ["--uncertainty", "0"],
        ["--gpus", "0"],
    ],
)
def test_malformed_flags_exit_2_with_an_example(runner: CliRunner, flags: list[str]) -> None:
    result = runner.invoke(app, ["tune", *flags, *FAST])
    assert result.exit_code == 2, result.output
    assert "e.g." in result.stderr and "Traceback" not in result.output
    assert not Path("plan.json").exists()


def test_infeasible_budget_exits_5_naming_the_binding_limit(runner: CliRunner) -> None:
    result = runner.invoke(app, ["tune", "--budget", "memory=1KiB", "--knobs", "dtype", *FAST])
    assert result.exit_code == 5, result.output
    assert "no plan satisfies the budget" in result.stdout
    assert "memory_bytes: limit 1.0 KiB would have to move to" in result.stderr
    assert "nearest plan" in result.stderr
    assert not Path("plan.json").exists()


def test_tune_writes_a_verified_plan_and_its_profile(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "tune",
            "--knobs",
            "backend,batch_size",
            "--budget",
            "latency=10s",
            "--top-k",
            "2",
            "--uncertainty",
            "1e9",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    plan = read_record(tmp_path / "plan.json", Plan)
    assert plan.verified and plan.measured is not None
    assert plan.workload.target == "zoo:decoder"
    assert plan.choices.backend in ("auto", "math", "flash")  # auto: the plan that changes nothing won
    assert plan.solver == "milp"
    assert plan.predicted.latency_ms is not None and plan.predicted.latency_ms <= 10_000
    assert plan.measured.latency_ms is not None and plan.measured.latency_ms <= 10_000
    assert plan.verification_profile == "plan.profile.json"
    profile = json.loads((tmp_path / "plan.profile.json").read_text())
    assert profile["settings"]["backend"] == plan.choices.backend
    assert "candidates: predicted vs measured" in result.stdout
    assert "per layer: baseline vs plan" in result.stdout


def test_precision_with_non_finite_outputs_is_rejected(models_dir: Path) -> None:
    workload = load_workload(str(models_dir / "overflow_model.py"))
    settings = resolve_settings(workload, {"threads": 1})
    checker = OutputChecker(workload, settings)
    finite, _ = checker.check(PlanChoices(dtype="fp16", precision="cast", backend="math"))
    assert not finite  # 1e6-scaled outputs overflow fp16
    finite, error = checker.check(PlanChoices(dtype="bf16", precision="cast", backend="math"))
    assert finite and error < 0.05
    outcome = tune(
        workload, settings, TuneRequest(parse_budget([]), "latency", ["dtype"], top_k=3, contradiction_sigmas=LENIENT)
    )
    reasons = {e.value: e.reason for e in outcome.excluded if e.knob == "dtype"}
    assert reasons["fp16 with flash"] == "fp16 outputs are not finite on the example inputs"
    assert all(v.choices.dtype != "fp16" for v in outcome.verifications)
    assert outcome.plan is not None and outcome.plan.choices.dtype != "fp16"
    assert outcome.plan.measured is not None and outcome.plan.measured.finite


def test_a_tight_max_error_rules_out_reduced_precision(models_dir: Path) -> None:
    workload = load_workload(str(models_dir / "overflow_model.py"))
    settings = resolve_settings(workload, {"threads": 1})
    budget = parse_budget([], max_error="1e-9")
    outcome = tune(workload, settings, TuneRequest(budget, "latency", ["dtype"], top_k=2, contradiction_sigmas=LENIENT))
    assert "exceeds --max-error 1e-09" in {e.value: e.reason for e in outcome.excluded}["bf16 with flash"]
    assert outcome.plan is not None and outcome.plan.choices.dtype == "fp32"


def test_relative_error_is_normalised_by_the_reference_scale() -> None:
    reference = {"logits": torch.tensor([[10.0, -20.0]])}
    close = output_difference(reference, {"logits": torch.tensor([[10.0, -19.0]])})
    assert (close.finite, close.max_rel) == (True, pytest.approx(0.05))
    assert output_difference(reference, {"logits": torch.tensor([[float("inf"), 0.0]])}).finite is False


def test_inf_or_nan_in_any_output_makes_it_non_finite() -> None:
    # Only the main tensor is compared, but a NaN elsewhere (a cache, an auxiliary loss) still
    # rules the output out, as tune's screening of precisions did before one definition served both.
    reference = (torch.ones(2), {"aux": torch.ones(1)})
    broken = output_difference(reference, (torch.ones(2), {"aux": torch.tensor([float("nan")])}))
    assert (broken.finite, broken.max_rel) == (False, math.inf)


def test_pruning_half_the_heads_of_mha_halves_the_layer_cost() -> None:
    layout = AttentionLayout("attn", num_heads=4, num_kv_heads=4, head_dim=8)
    basis = LayerBasis(
        layout=layout, forward_ms=2.0, backward_ms=0.0, activation_bytes=1000.0, hidden=32, tokens=10, core_flops=500.0
    )
    costs = layer_option_costs(basis, LayerOption(prune=2), 1.0, 1.0, 4, train=False)
    # Projections and the attention product both scale with the heads kept: half the FLOPs go.
    assert costs["latency_ms"] == pytest.approx(-1.0)
    # Half of q, k, v, o: 32 x 8 x (2 + 2) x 2 heads removed = 2048 params x 4 bytes; inference frees
    # activations layer by layer, so the peak keeps them.
    assert costs["memory_bytes"] == pytest.approx(-2048 * 4)
    # In training the saved activations add up: half of them go too, and the gradients of the weights.
    trained = layer_option_costs(basis, LayerOption(prune=2), 1.0, 1.0, 4, train=True)
    assert trained["memory_bytes"] == pytest.approx(-(2 * 2048 * 4 + 500.0))
    checkpoint = layer_option_costs(basis, LayerOption(checkpoint="attn"), 1.0, 1.0, 4, train=True)
    assert checkpoint["latency_ms"] == pytest.approx(2.0)  # the forward again
    assert checkpoint["memory_bytes"] == pytest.approx(-1000.0)


def test_checkpointing_a_block_or_its_mlp_is_priced_by_what_that_module_recomputes_and_frees() -> None:
    layout = AttentionLayout("block.attn", num_heads=4, num_kv_heads=4, head_dim=8, block="block", mlp="block.mlp")
    basis = LayerBasis(
        layout=layout, forward_ms=2.0, backward_ms=0.0, activation_bytes=1000.0, hidden=32, tokens=10,
        core_flops=500.0, recompute={"block.attn": (2.0, 1000.0), "block.mlp": (3.0, 4000.0), "block": (6.0, 6000.0)},
    )
    mlp = layer_option_costs(basis, LayerOption(checkpoint="block.mlp"), 1.0, 1.0, 4, train=True)
    assert (mlp["latency_ms"], mlp["memory_bytes"]) == (pytest.approx(3.0), pytest.approx(-4000.0))
    block = layer_option_costs(basis, LayerOption(checkpoint="block"), 1.0, 1.0, 4, train=True)
    assert (block["latency_ms"], block["memory_bytes"]) == (pytest.approx(6.0), pytest.approx(-6000.0))
    # Heads pruned from the block's attention are not recomputed: half of its 2 ms and 1000 bytes go.
    both = layer_option_costs(basis, LayerOption(prune=2, checkpoint="block"), 1.0, 1.0, 4, train=True)
    pruned = layer_option_costs(basis, LayerOption(prune=2), 1.0, 1.0, 4, train=True)
    assert both["latency_ms"] - pruned["latency_ms"] == pytest.approx(5.0)
    assert both["memory_bytes"] - pruned["memory_bytes"] == pytest.approx(-5500.0)


@pytest.mark.slow
def test_the_rest_of_the_step_is_split_between_blocks_and_the_model_as_the_profile_measured() -> None:
    profile = sample_profile(blocks=3)  # attention 1+i ms and MLP 2 ms per block; embed 0.5, lm_head 0.7
    layouts = [AttentionLayout(f"layers.{i}.attn", 8, 8, 16, block=f"layers.{i}") for i in range(3)]
    # Outside attention: 6 ms of MLPs inside the blocks, 1.2 ms of embedding and head outside them.
    assert block_share_of_rest(profile, layouts) == pytest.approx(6.0 / 7.2)
    slower = profile.layer("embed")
    assert slower.time_ms is not None
    slower.time_ms = dataclasses.replace(slower.time_ms, median=slower.time_ms.median + 4.8)
    root = profile.layer("")
    assert root.time_ms is not None
    root.time_ms = dataclasses.replace(root.time_ms, median=root.time_ms.median + 4.8)
    assert block_share_of_rest(profile, layouts) == pytest.approx(6.0 / 12.0)  # a heavier embedding: less inside
    unplaced = [dataclasses.replace(layout, block="") for layout in layouts]
    assert block_share_of_rest(profile, unplaced) == 0.0


def test_the_fsdp_root_is_what_the_profile_holds_outside_the_blocks() -> None:
    profile = sample_profile(blocks=3)
    layouts = [AttentionLayout(f"layers.{i}.attn", 8, 8, 16, block=f"layers.{i}") for i in range(3)]
    profile.layer("").params = 1000
    for i in range(3):
        profile.layer(f"layers.{i}").params = 200
    assert param_share_outside_blocks(profile, layouts) == pytest.approx(0.4)  # embeddings and head
    assert param_share_outside_blocks(profile, [dataclasses.replace(lay, block="") for lay in layouts]) == 0.0


def test_llama_under_a_memory_budget_below_fp32_gets_a_verified_plan_that_fits() -> None:
    workload = load_workload("hf:llama")
    settings = resolve_settings(workload, {"batch_size": 2, "seq_len": 32, "repeats": 3, "warmup": 1, "threads": 1})
    fp32 = run_profile(workload, settings).totals.peak_memory_bytes
    budget = parse_budget([f"memory={int(fp32 * 0.8)}"])
    outcome = tune(
        workload,
        settings,
        TuneRequest(budget, "latency", ["dtype", "batch_size"], top_k=3, contradiction_sigmas=LENIENT),
    )
    plan = outcome.plan
    assert plan is not None and plan.verified, [v.reason for v in outcome.verifications]
    assert plan.measured is not None and plan.measured.memory_bytes is not None
    assert plan.measured.memory_bytes <= fp32 * 0.8
    assert plan.predicted.memory_bytes is not None and plan.predicted.memory_bytes <= fp32 * 0.8
    assert plan.measured.finite and (plan.measured.max_error or 0.0) <= 1e-2


def test_sharded_plans_on_a_cpu_are_priced_over_gloo_and_marked_unverified(runner: CliRunner, tmp_path: Path) -> None:
    flags = ["--gpus", "4", "--knobs", "tensor_parallel,pipeline_stages,data_parallel", "--no-launch"]
    result = runner.invoke(app, ["tune", *flags, "--batch-size", "4", *FAST[2:]])
    assert result.exit_code == 0, result.output
    plan = read_record(tmp_path / "plan.json", Plan)
    assert plan.choices.world_size == 4 and plan.choices.pipeline_stages == 1
    assert not plan.verified and plan.measured is None
    assert "not verified on this machine: needs 4 devices" in plan.notes
    assert plan.budgets.gpus == 4
    assert "pipeline stages run alone" in result.stdout  # pp=2 with dp=2 or tp=2 is left out


def test_a_gpu_link_for_cpu_ranks_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(app, ["tune", "--gpus", "2", "--interconnect", "nvlink4", *FAST])
    assert result.exit_code == 2 and "is a GPU link" in result.stderr and "gloo" in result.stderr
    result = runner.invoke(app, ["tune", "--gpus", "2", "--interconnect", "carrier-pigeon", *FAST])
    assert result.exit_code == 2 and "must be one of" in result.stderr


def test_pareto_frontier_is_shown(runner: CliRunner) -> None:
    result = runner.invoke(
        app, ["tune", "--knobs", "batch_size", "--pareto", "--top-k", "1", "--uncertainty", "1e9", *FAST]
    )
    assert result.exit_code == 0, result.output
    assert "Pareto frontier (predicted)" in result.stdout


@pytest.mark.slow
def test_head_plans_are_verified_within_the_quality_limit_and_apply_to_a_fresh_model(tmp_path: Path) -> None:
    from attnprof.api import apply, load_plan
    from attnprof.store import write_record

    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {"batch_size": 2, "seq_len": 16, "repeats": 2, "warmup": 1, "threads": 1})
    budget = parse_budget([], max_quality_loss="50%")
    outcome = tune(
        workload, settings, TuneRequest(budget, "latency", ["heads", "kv_heads"], top_k=2, contradiction_sigmas=LENIENT)
    )
    plan = outcome.plan
    assert plan is not None and plan.verified, [v.reason for v in outcome.verifications]
    # The winner may be the model as it is when no head change measures faster: judge the head
    # candidates themselves.
    pruned = [v for v in outcome.verifications if v.choices.changes_heads() and v.accepted]
    assert pruned, [v.reason for v in outcome.verifications]
    measured, predicted = pruned[0].measured, pruned[0].predicted
    assert measured is not None and measured.quality_loss is not None and measured.quality_loss <= 0.5
    # Every layer option was scored alone before the search; the search adds them up.
    assert predicted.quality_loss is not None and 0 < predicted.quality_loss <= 0.5
    # The plan file is what the apply side consumes: it must apply to an unmodified model.
    plan.choices = pruned[0].choices
    write_record(tmp_path / "plan.json", plan)
    model = workload.build_model(torch.device("cpu"), torch.float32).eval()
    (ids,), _ = workload.make_inputs(2, 16, torch.device("cpu"), torch.float32)
    applied = apply(model, load_plan(tmp_path / "plan.json"), (ids,), strict=True)
    with torch.no_grad():
        assert torch.isfinite(applied(ids)).all()


@pytest.mark.slow
def test_head_changes_beyond_the_quality_limit_are_left_out_with_the_reason() -> None:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {"batch_size": 2, "seq_len": 16, "repeats": 2, "warmup": 1, "threads": 1})
    budget = parse_budget([], max_quality_loss="1e-9")
    outcome = tune(workload, settings, TuneRequest(budget, "latency", ["heads"], top_k=1, contradiction_sigmas=LENIENT))
    reasons = [e.reason for e in outcome.excluded if e.knob == "heads" and "heads 8->4" in e.value]
    assert reasons and all("> --max-quality-loss 1e-09" in r for r in reasons)
    assert outcome.plan is not None and not outcome.plan.choices.changes_heads()


@pytest.mark.slow
def test_a_saved_cost_model_prices_the_choices_it_covers(tmp_path: Path) -> None:
    from attnprof.costmodel.knobs import Knob
    from attnprof.costmodel.sweep import fit_workload
    from attnprof.store import write_record

    workload = load_workload("zoo:decoder")
    base = resolve_settings(workload, {"repeats": 2, "warmup": 1, "threads": 1, "backend": "flash"})
    knobs = {
        "batch_size": Knob("batch_size", low=1, high=4),
        "seq_len": Knob("seq_len", low=8, high=16),
        "dtype": Knob("dtype", choices=("fp32",)),
        "backend": Knob("backend", choices=("flash",)),
        "threads": Knob("threads", choices=(1,)),
    }
    run = fit_workload(workload, base, knobs, max_measurements=5, folds=2, folder=tmp_path)
    write_record(run.model_path, run.model)
    settings = dataclasses.replace(base, batch_size=4, seq_len=16)
    request = TuneRequest(
        parse_budget([]), "latency", ["batch_size"], top_k=2, profiles_dir=tmp_path, contradiction_sigmas=LENIENT
    )
    outcome = tune(workload, settings, request)
    assert outcome.estimator_source.startswith("cost model fitted on 5 measurement(s)")
    # micro-batch 2 (in the fitted range, not measured by tune) is priced by the cost model.
    priced = {c.problem.value[0].batch_size: c.problem.value[1].source for c in outcome.search.ranked}
    assert "cost model" in priced.values()
    assert outcome.plan is not None


def test_a_measurement_worse_than_predicted_beyond_the_uncertainty_refutes_the_prediction() -> None:
    # 3 sigma of 1 ms = 3 ms (above the 10% floor of 1 ms): 13.1 ms refutes 10 ms, 12.9 ms does not.
    assert contradiction(10.0, 1.0, 13.1) and not contradiction(10.0, 1.0, 12.9)
    # Faster than predicted never refutes a plan; the noise floor covers tiny sigmas.
    assert not contradiction(10.0, 1.0, 2.0)
    assert not contradiction(10.0, 0.0, 10.9) and contradiction(10.0, 0.0, 11.1)
