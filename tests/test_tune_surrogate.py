"""The latency surrogate, the throughput objective and checkpointing beyond attention layers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from attnprof.plans.engine import Example, apply_plan
from attnprof.plans.records import PlanChoices
from attnprof.settings import resolve_settings
from attnprof.targets.load import load_workload
from attnprof.tuning.budget import parse_budget
from attnprof.tuning.loop import TuneRequest, tune
from attnprof.tuning.space import GlobalChoice
from attnprof.tuning.surrogate import INTERACTION_PRIOR, LatencySurrogate, micro_batch_line

REFERENCE = GlobalChoice("flash", "fp32", 4, 1)
VALUES: dict[str, list[object]] = {"backend": ["flash", "math"], "dtype": ["bf16", "fp32"], "threads": [1]}


def _with(**changes: object) -> GlobalChoice:
    return dataclasses.replace(REFERENCE, **changes)  # type: ignore[arg-type]


def test_the_micro_batch_line_has_an_intercept() -> None:
    # 10 ms of fixed cost per step plus 5 ms per sample: micro-batch 2 is 20 ms, not half of 30.
    points = {_with(batch_size=4): (30.0, 0.3), _with(batch_size=1): (15.0, 0.15)}
    surrogate = LatencySurrogate.fit(points, REFERENCE, {"backend": ["flash"], "dtype": ["fp32"], "threads": [1]})
    assert micro_batch_line([(4.0, 30.0), (1.0, 15.0)]) == pytest.approx((10.0, 5.0))
    assert surrogate.predict(_with(batch_size=2))[0] == pytest.approx(20.0, rel=1e-6)


def test_one_knob_probes_give_main_effects_and_a_measured_combination_reprices_their_interaction() -> None:
    points = {REFERENCE: (100.0, 1.0), _with(backend="math"): (150.0, 1.5), _with(dtype="bf16"): (50.0, 0.5)}
    combined = _with(backend="math", dtype="bf16")
    before = LatencySurrogate.fit(points, REFERENCE, VALUES)
    latency, sigma = before.predict(combined)
    assert latency == pytest.approx(75.0, rel=0.01)  # effects multiply until measured otherwise
    assert sigma / latency > INTERACTION_PRIOR * 0.9  # ... and σ says the interaction is unknown
    assert before.predict(_with(backend="math"))[0] == pytest.approx(150.0, rel=0.01)
    # math with bf16 measures 120 ms: the surrogate learns the interaction, also at another micro-batch.
    after = LatencySurrogate.fit({**points, combined: (120.0, 1.2)}, REFERENCE, VALUES)
    assert after.predict(combined)[0] == pytest.approx(120.0, rel=0.03)
    assert after.predict(combined)[1] < sigma
    smaller = dataclasses.replace(combined, batch_size=2)
    assert after.predict(smaller)[0] > before.predict(smaller)[0]


def test_calibration_scales_the_stated_sigma() -> None:
    points = {REFERENCE: (100.0, 1.0), _with(backend="math"): (150.0, 1.5), _with(dtype="bf16"): (50.0, 0.5)}
    surrogate = LatencySurrogate.fit(points, REFERENCE, VALUES)
    combined = _with(backend="math", dtype="bf16")
    sigma = surrogate.predict(combined)[1]
    surrogate.scale = 2.0
    assert surrogate.predict(combined)[1] == pytest.approx(2 * sigma)


SMALL = {"batch_size": 2, "seq_len": 4, "repeats": 2, "warmup": 1, "threads": 1}


def test_throughput_lets_the_batch_grow_and_is_measured_in_samples_per_second(models_dir: Path) -> None:
    # Each forward sleeps 160 ms whatever its batch: the more samples per step, the more per second.
    workload = load_workload(str(models_dir / "sleepy_model.py"))
    settings = resolve_settings(workload, SMALL)
    request = TuneRequest(parse_budget([]), "throughput", ["batch_size"], top_k=2, verify_seconds=4.0)
    outcome = tune(workload, settings, request)
    batches = {c.batch_size for c in outcome.space.globals}
    assert batches == {1, 2, 4, 8, 16}
    plan = outcome.plan
    assert plan is not None and plan.verified and plan.measured is not None
    assert plan.choices.batch_size == 16
    assert plan.measured.latency_ms is not None and plan.measured.throughput is not None
    assert plan.measured.throughput == pytest.approx(16 * 1e3 / plan.measured.latency_ms)
    assert plan.speedup is not None and plan.speedup.significant and plan.speedup.value > 1

    latency = TuneRequest(parse_budget([]), "latency", ["batch_size"], top_k=1, verify=False)
    assert {c.batch_size for c in tune(workload, settings, latency).space.globals} == {1, 2}


def test_checkpointing_covers_each_layer_s_mlp_and_block_and_applies_without_changing_gradients() -> None:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {**SMALL, "seq_len": 8, "mode": "train"})
    request = TuneRequest(parse_budget([]), "latency", ["checkpoint"], top_k=1, verify=False)
    outcome = tune(workload, settings, request)
    options = {o.checkpoint for o in outcome.space.layer_options["layers.0.attn"]}
    assert options == {"", "layers.0.attn", "layers.0.mlp", "layers.0"}

    torch.manual_seed(0)
    args, kwargs = workload.make_inputs(2, 8, torch.device("cpu"), torch.float32)
    grads = []
    for paths in ([], ["layers.0.mlp", "layers.1", "layers.2.attn"]):
        model = workload.build_model(torch.device("cpu"), torch.float32)
        model, report = apply_plan(model, PlanChoices(checkpoint=paths), Example(args, kwargs))
        assert not report.not_applied
        loss = model(*args, **kwargs).float().square().mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert math.isclose(float((grads[0] - grads[1]).abs().max()), 0.0, abs_tol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["hf:gpt2", "hf:llama"])
def test_a_model_pruned_per_layer_is_saved_and_reloaded_with_the_same_outputs(target: str, tmp_path: Path) -> None:
    import attnprof
    from attnprof.plans.discover import discover

    workload = load_workload(target)
    model = workload.build_model(torch.device("cpu"), torch.float32)
    args, kwargs = workload.make_inputs(2, 8, torch.device("cpu"), torch.float32)
    first, second = (site.name for site in discover(model).sites[:2])
    # Layers left with different head counts (Llama's grouped heads go a whole group at a time).
    prune = {first: [0], second: [0, 1]} if target == "hf:gpt2" else {first: [0, 1]}
    model, report = apply_plan(model, PlanChoices(prune_heads=prune), Example(args, kwargs))
    assert not report.not_applied
    model.eval().save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="mismatch"):  # what transformers alone does with it
        type(model).from_pretrained(tmp_path)
    again = attnprof.from_pretrained_pruned(type(model), tmp_path)
    with torch.no_grad():
        assert torch.equal(model(*args, **kwargs).logits, again(*args, **kwargs).logits)
    assert {s.name: s.layout.num_heads for s in discover(again).sites} == {
        s.name: s.layout.num_heads for s in discover(model).sites
    }


def test_reloading_a_folder_without_weights_is_one_clear_error(tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    import attnprof
    from attnprof.errors import UsageError

    with pytest.raises(UsageError, match=r"no \.safetensors weights"):
        attnprof.from_pretrained_pruned(GPT2LMHeadModel, tmp_path)
