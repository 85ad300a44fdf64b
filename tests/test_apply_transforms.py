"""Precision, backend, checkpointing and reporting on real models."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import attnprof
from attnprof.errors import EnvironmentUnsupported, InputFileError, PlanRejected, UsageError
from attnprof.plans.calls import record_calls
from attnprof.plans.discover import discover
from attnprof.plans.engine import Example, apply_plan
from attnprof.plans.outputs import main_tensor
from attnprof.plans.records import Budget, Plan, PlanChoices
from attnprof.plans.verify import verify_model
from attnprof.settings import Settings
from attnprof.store import from_json_dict, to_json_dict, write_record
from attnprof.targets.records import WorkloadInfo
from tests import apply_models as models


def outputs(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return main_tensor(model(inputs)).float()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("mode", ["autocast", "cast"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_stays_within_its_bound(mode: str, dtype: str) -> None:
    model, ids = models.llama(), models.token_ids()
    reference = copy.deepcopy(model)
    model, report = apply_plan(model, PlanChoices(dtype=dtype, precision=mode))
    check = verify_model(reference, model, Example.of(ids), Budget(max_error=0.05), PlanChoices(dtype=dtype))
    assert check.finite and check.passed, check
    assert 0 < check.max_rel_error < 0.05  # lower precision moved the output, within the bound
    assert check.logit_kl is not None and check.logit_kl < 1e-3
    assert any(dtype in line for line in report.applied)


def test_cast_keeps_norms_in_fp32_and_computes_them_in_fp32() -> None:
    model = models.TinyDecoder()
    apply_plan(model, PlanChoices(dtype="bf16", precision="cast"))
    assert model.blocks[0].attn.q_proj.weight.dtype == torch.bfloat16
    assert model.blocks[0].norm1.weight.dtype == torch.float32
    seen = {}
    model.blocks[0].norm1.register_forward_hook(lambda m, args, out: seen.update(dtype=args[0].dtype))
    assert outputs(model, models.token_ids()).isfinite().all()
    assert seen["dtype"] == torch.float32


def test_a_bound_too_tight_for_the_precision_fails_verification() -> None:
    model = models.TinyDecoder()
    reference = copy.deepcopy(model)
    model, _ = apply_plan(model, PlanChoices(dtype="bf16"))
    check = verify_model(reference, model, Example.of(models.token_ids()), Budget(max_error=1e-7), PlanChoices())
    assert not check.passed and "exceeds max_error" in check.reasons[0]


def test_tf32_scope_is_active_inside_forward_only() -> None:
    model = models.TinyDecoder()
    inside = []
    model.blocks[0].register_forward_hook(lambda *_: inside.append(torch.get_float32_matmul_precision()))
    before = torch.get_float32_matmul_precision()
    apply_plan(model, PlanChoices(dtype="tf32"))
    outputs(model, models.token_ids())
    assert inside == ["high"] and torch.get_float32_matmul_precision() == before


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_backend_switch_on_eager_transformers_model_gives_equal_outputs(backend: str) -> None:
    model, ids = models.llama(), models.token_ids()
    model.set_attn_implementation("eager")
    reference = outputs(model, ids)
    model, report = apply_plan(model, PlanChoices(backend=backend), Example.of(ids))
    assert model.config._attn_implementation == "sdpa"
    assert any("sdpa (was eager)" in line for line in report.applied)
    assert torch.allclose(outputs(model, ids), reference, atol=1e-5)


def test_backends_agree_with_each_other() -> None:
    ids = models.token_ids()
    results = {}
    for backend in ("math", "flash"):
        model, _ = apply_plan(models.TinyDecoder(), PlanChoices(backend=backend), Example.of(ids))
        results[backend] = outputs(model, ids)
    assert torch.allclose(results["math"], results["flash"], atol=1e-5)


def test_hand_written_attention_is_replaced_by_sdpa_when_equal() -> None:
    model, ids = models.TinyDecoder(manual=True), models.token_ids()
    reference = outputs(model, ids)
    model, report = apply_plan(model, PlanChoices(backend="flash"), Example.of(ids))
    assert sum("replaced by SDPA" in line for line in report.applied) == 2
    assert torch.allclose(outputs(model, ids), reference, atol=1e-5)
    names = [s.name for s in discover(model).sites]
    recording = record_calls(model, names, lambda: model(ids))
    assert all(call.sdpa_calls == 1 for call in recording.calls.values())


class TemperatureAttention(models.QKVOAttention):
    """Hand-written attention SDPA does not reproduce: the scores carry an extra temperature."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2).repeat_interleave(2, 1)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2).repeat_interleave(2, 1)
        weights = (q @ k.transpose(-2, -1) * 3.0).softmax(dim=-1)
        return self.o_proj((weights @ v).transpose(1, 2).reshape(b, s, -1))


def test_hand_written_attention_that_differs_is_kept_and_reported() -> None:
    model, x = nn.Sequential(TemperatureAttention()), torch.randn(2, 8, 32)
    reference = outputs(model, x)
    model, report = apply_plan(model, PlanChoices(backend="math"), Example.of(x))
    assert [(n.module, n.what) for n in report.not_applied] == [("0", "backend")]
    assert "does not reproduce" in report.not_applied[0].reason
    assert torch.equal(outputs(model, x), reference)


def test_attention_of_a_family_without_an_sdpa_forward_is_kept_and_reported() -> None:
    """nn.MultiheadAttention returning its weights runs no SDPA; its adapter offers no SDPA forward."""
    model, x = nn.MultiheadAttention(32, 4, batch_first=True).eval(), torch.randn(2, 8, 32)
    reference = model(x, x, x)[0].detach()
    model, report = apply_plan(model, PlanChoices(backend="math"), Example.of((x, x, x)))
    assert [(n.module, n.what, n.reason) for n in report.not_applied] == [
        ("", "backend", "its forward did not call scaled_dot_product_attention")
    ]
    assert torch.equal(model(x, x, x)[0], reference)


@pytest.mark.parametrize(
    ("build", "blocks"),
    [
        (models.gpt2, ["transformer.h.0", "transformer.h.1"]),  # an MLP of Conv1D layers only
        (models.llama, ["model.layers.0", "model.layers.1"]),
        (models.bert, ["encoder.layer.0", "encoder.layer.1"]),
        (models.TinyDecoder, ["blocks.0", "blocks.1"]),
    ],
)
def test_blocks_are_found_by_each_familys_projection_layers(build: Callable[[], nn.Module], blocks: list[str]) -> None:
    assert discover(build()).blocks() == blocks


def test_backend_missing_on_this_device_is_exit_4() -> None:
    with pytest.raises(EnvironmentUnsupported, match="efficient") as caught:
        apply_plan(models.TinyDecoder(), PlanChoices(backend="efficient"), Example.of(models.token_ids()))
    assert caught.value.exit_code == 4


def test_checkpointed_blocks_recompute_and_give_equal_gradients() -> None:
    ids = models.token_ids()
    plain, checkpointed = models.TinyDecoder(), models.TinyDecoder()
    checkpointed, report = apply_plan(checkpointed, PlanChoices(checkpoint=["*"]))
    assert report.applied == ["activation checkpointing on 2 modules"]
    calls = []
    checkpointed.blocks[0].attn.register_forward_hook(lambda *_: calls.append(1))
    for model in (plain, checkpointed):
        model(ids).square().mean().backward()
    assert len(calls) == 2  # once forward, once recomputed in backward
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


class TokenMixer(models.FusedQKVAttention):
    """Attention by another name: found only by watching it call SDPA."""


class MixedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.known = models.QKVOAttention()
        self.fused = models.FusedQKVAttention()
        self.mixer = TokenMixer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixer(self.fused(self.known(x)))


def test_unknown_attention_is_named_in_the_report_and_warned_about() -> None:
    x = torch.randn(2, 8, 32)
    _, report = apply_plan(MixedModel(), PlanChoices(prune_heads={"*": [0, 1]}))
    assert [c.name for c in report.sites] == ["known"]
    assert [(n.module, n.type, n.what) for n in report.not_applied] == [("fused", "FusedQKVAttention", "prune_heads")]
    _, report = apply_plan(MixedModel(), PlanChoices(prune_heads={"*": [0, 1]}), Example.of(x))
    assert [(n.module, n.type) for n in report.not_applied] == [("fused", "FusedQKVAttention"), ("mixer", "TokenMixer")]
    plan = make_plan(PlanChoices(prune_heads={"*": [0, 1]}))
    with pytest.warns(UserWarning, match=r"fused \(FusedQKVAttention\)"):
        applied = attnprof.apply(MixedModel(), plan)
    assert applied.known.num_heads == 2 and applied(x).shape == x.shape
    with pytest.raises(PlanRejected, match="fused"):
        attnprof.apply(MixedModel(), plan, strict=True)


def make_plan(choices: PlanChoices) -> Plan:
    return Plan(
        workload=WorkloadInfo("tests", "0" * 12, 0),
        settings=Settings(),
        device="cpu",
        objective="latency",
        choices=choices,
    )


def test_public_api_loads_a_saved_plan_and_applies_it(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    write_record(path, make_plan(PlanChoices(prune_heads={"*": 2}, kv_heads={"*": 1})))
    plan = attnprof.load_plan(path)
    assert from_json_dict(Plan, to_json_dict(plan)) == plan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = attnprof.apply(models.TinyDecoder(), path, models.token_ids())
    assert [(s.layout.num_heads, s.layout.num_kv_heads) for s in discover(model).sites] == [(2, 1), (2, 1)]


class Difference(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b


def test_example_inputs_follow_the_documented_forms() -> None:
    """A list of two tensors is two positional arguments; only a (tuple | list, dict) pair is (args, kwargs)."""
    x, y = torch.ones(3), torch.arange(3.0)
    assert torch.equal(Example.of([x, y]).run(Difference()), x - y)
    assert torch.equal(Example.of((x, y)).run(Difference()), x - y)
    assert torch.equal(Example.of([(x,), {"b": y}]).run(Difference()), x - y)
    assert torch.equal(Example.of({"a": x, "b": y}).run(Difference()), x - y)
    single = Example.of(x)
    assert len(single.args) == 1 and single.args[0] is x and single.kwargs == {}
    with pytest.raises(UsageError, match="example_inputs must be a tensor"):
        Example.of(42)


@pytest.mark.parametrize("text", ["{", '{"schema_version": 1}', json.dumps({"schema_version": 99})])
def test_bad_plan_files_are_input_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(InputFileError):
        attnprof.load_plan(path)
