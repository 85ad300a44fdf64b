"""The flex backend: SDPA calls run as flex_attention with block masks, its FLOPs exact, and
transformers' attention implementations (eager, sdpa, flex_attention) as backend values.

Fast tests run flex_attention eagerly (the counter's force_eager stance: no compile); the tests
marked slow compile it for real, as `attnprof apply` and `profile` run it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from attnprof.errors import UsageError
from attnprof.measure.accounting import CostCounter, ModuleCost
from attnprof.measure.attention_ops import flex_attention_uncompiled
from attnprof.measure.flex import FlexSdpa, causal_band, causal_mask, window_mask
from attnprof.measure.scopes import ModuleScopes
from attnprof.plans.engine import Example, apply_plan
from attnprof.plans.outputs import output_difference
from attnprof.plans.records import PlanChoices
from attnprof.plans.verify import applied_settings, applied_workload
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings
from attnprof.targets.hf import attn_implementations, load_hf, select_attn_implementation
from attnprof.targets.load import load_workload
from attnprof.tuning.space import DeviceFacts, build_space, parse_backend_values

B, H, KV_H, D = 2, 4, 2, 16
CPU = DeviceFacts("cpu", "cpu", None, 2)
# flex_attention and SDPA sum in different orders: outputs agree to float32 rounding.
TOLERANCE = 1e-5


def window_pairs(n: int, window: int) -> int:
    """Causal pairs of an n-token sequence where each query sees at most `window` keys (n: all)."""
    return sum(min(i + 1, window) for i in range(n))


class Attend(nn.Module):
    """Calls whatever attention function it is given, so the counter attributes it to a module."""

    def __init__(self, attend: Any) -> None:
        super().__init__()
        self.attend = attend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.attend(q, k, v)


def counted(attend: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> ModuleCost:
    model = Attend(attend)
    with ModuleScopes(model) as scopes, CostCounter(scopes) as counter, flex_attention_uncompiled():
        model(q, k, v)
    return counter.per_module[""]


def qkv(n: int, kv_heads: int = KV_H) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(B, H, n, D), torch.randn(B, kv_heads, n, D), torch.randn(B, kv_heads, n, D)


@pytest.mark.parametrize(("n", "window"), [(40, None), (40, 7), (130, 50), (9, 1)])
def test_flex_flops_are_the_unmasked_pairs_of_causal_and_window_block_masks(n: int, window: int | None) -> None:
    q, k, v = qkv(n)
    mask = create_block_mask(causal_mask if window is None else window_mask(window), None, None, n, n, device="cpu")
    cost = counted(lambda q, k, v: flex_attention(q, k, v, block_mask=mask, enable_gqa=True), q, k, v)
    (info,) = cost.attention
    pairs = window_pairs(n, window or n)
    assert info.backend == "flex" and info.flops == 4 * D * B * H * pairs
    assert info.flops_dense == 4 * D * B * H * n * n


def test_causal_band_reads_causal_and_window_masks_and_nothing_else() -> None:
    rows, cols = torch.arange(6)[:, None], torch.arange(6)[None, :]
    assert causal_band(rows >= cols) == (True, None)
    assert causal_band((rows >= cols) & (rows - cols < 3)) == (True, 3)
    assert causal_band(torch.ones(6, 6, dtype=torch.bool)) is None
    padded = (rows >= cols) & (cols > 0)
    assert causal_band(padded) is None


def _window_mask(n: int, window: int) -> torch.Tensor:
    rows, cols = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return (rows >= cols) & (rows - cols < window)


def _padding(n: int) -> torch.Tensor:
    keep = torch.ones(B, 1, 1, n, dtype=torch.bool)
    keep[1, ..., n - 5 :] = False
    return keep


SDPA_CALLS = {
    "causal": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    "window bool": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=_window_mask(q.shape[-2], 5), enable_gqa=True),
    "window additive": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.zeros(q.shape[-2], q.shape[-2]).masked_fill(~_window_mask(q.shape[-2], 5), -torch.inf),
        enable_gqa=True),
    "padding": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=_padding(q.shape[-2]), enable_gqa=True),
    "full": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
}


@pytest.mark.parametrize("name", sorted(SDPA_CALLS))
def test_sdpa_calls_run_as_flex_with_the_same_outputs_and_flops(name: str) -> None:
    call = SDPA_CALLS[name]
    q, k, v = qkv(24)
    expected = call(q, k, v)

    def as_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with FlexSdpa():
            return call(q, k, v)

    with flex_attention_uncompiled():
        got = as_flex(q, k, v)
    assert float((got - expected).abs().max()) <= TOLERANCE * float(expected.abs().max())
    sdpa_info, = counted(call, q, k, v).attention
    flex_info, = counted(as_flex, q, k, v).attention
    assert flex_info.backend == "flex" and flex_info.flops == sdpa_info.flops


def test_sdpa_with_dropout_is_refused_in_one_line() -> None:
    q, k, v = qkv(8)
    with FlexSdpa(), pytest.raises(UsageError, match="no dropout"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, enable_gqa=True)


def test_space_offers_flex_and_eager_where_they_run_each_left_out_with_a_reason() -> None:
    values = parse_backend_values("flash,flex,eager")
    zoo = build_space(CPU, [], Settings(), ["backend"], backends=values)
    assert {g.backend for g in zoo.globals} == {"flash", "flex"}
    assert any("transformers models" in e.reason for e in zoo.excluded if e.value.startswith("eager"))
    hf = build_space(CPU, [], Settings(), ["backend"], backends=values,
                     attn_implementations=("eager", "sdpa", "flex_attention"))
    assert {g.backend for g in hf.globals} == {"flash", "flex", "eager"}
    train = build_space(CPU, [], Settings(mode="train"), ["backend"], backends=values,
                        attn_implementations=("eager", "sdpa", "flex_attention"))
    assert {g.backend for g in train.globals} == {"flash", "eager"}
    assert any("no backward on CPU" in e.reason for e in train.excluded if e.value.startswith("flex"))
    default = build_space(CPU, [], Settings(), ["backend"])
    assert {g.backend for g in default.globals} == {"math", "flash"}  # flex and eager only when asked for
    with pytest.raises(UsageError, match="unknown 'sdpa'"):
        parse_backend_values("flash,sdpa")


def test_attn_implementation_is_in_the_fingerprint_and_never_leaks_into_the_next_build() -> None:
    workload = load_hf("hf:llama")
    assert attn_implementations(workload) == ("eager", "sdpa", "flex_attention")
    fingerprints = {impl: workload.fingerprint(Settings(attn_implementation=impl))
                    for impl in ("auto", "eager", "sdpa", "flex_attention")}
    assert len(set(fingerprints.values())) == 4
    assert fingerprints["auto"] == workload.fingerprint(Settings())
    select_attn_implementation(workload, "eager")
    eager = workload.build_model(torch.device("cpu"), torch.float32)
    eager.set_attn_implementation("sdpa")  # writes into the model's own copy of the config
    assert workload.build_model(torch.device("cpu"), torch.float32).config._attn_implementation == "eager"
    select_attn_implementation(workload, "auto")
    assert workload.build_model(torch.device("cpu"), torch.float32).config._attn_implementation == "sdpa"
    select_attn_implementation(workload, "auto", "eager")  # the eager backend builds transformers' eager code
    assert workload.build_model(torch.device("cpu"), torch.float32).config._attn_implementation == "eager"
    with pytest.raises(UsageError, match="hf: targets only"):
        select_attn_implementation(load_workload("zoo:decoder"), "auto", "eager")


def _applied_outputs(target: str, choices: PlanChoices, settings: Settings) -> tuple[Any, Any, list[str]]:
    workload = load_workload(target)
    device = torch.device("cpu")
    reference = workload.build_model(device, torch.float32).eval()
    example = Example(*workload.make_inputs(settings.batch_size, settings.seq_len, device, torch.float32))
    with torch.no_grad():
        expected = example.run(reference)
    model, report = apply_plan(workload.build_model(device, torch.float32).eval(), choices, example)
    assert not report.not_applied, report.not_applied
    with torch.no_grad():
        got = example.run(model)
    return expected, got, report.applied


SMALL = Settings(batch_size=2, seq_len=24, warmup=1, repeats=2)


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("target", ["zoo:decoder", "hf:llama"])
def test_apply_flex_matches_outputs_and_profiles_exact_flops(target: str) -> None:
    choices = PlanChoices(backend="flex")
    expected, got, applied = _applied_outputs(target, choices, SMALL)
    difference = output_difference(expected, got)
    assert difference.finite and difference.max_rel <= TOLERANCE, difference
    assert any("flex" in line for line in applied)
    workload = load_workload(target)
    baseline = run_profile(workload, dataclasses.replace(SMALL, backend="flash"))
    settings = applied_settings(SMALL, choices)
    profile = run_profile(applied_workload(workload, settings, choices), settings)
    assert {layer.attention.backend for layer in profile.attention_layers()} == {"flex"}
    assert profile.totals.attention_flops == baseline.totals.attention_flops > 0
    assert profile.workload.fingerprint != baseline.workload.fingerprint


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_apply_eager_switches_a_transformers_model_and_keeps_its_outputs() -> None:
    expected, got, applied = _applied_outputs("hf:llama", PlanChoices(backend="eager"), SMALL)
    assert "transformers attention implementation: eager (was sdpa)" in applied
    difference = output_difference(expected, got)
    assert difference.finite and difference.max_rel <= TOLERANCE, difference


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tune_measures_flex_and_eager_like_any_other_backend() -> None:
    from attnprof.plans.records import Budget, PlanChoices
    from attnprof.tuning.estimate import ProbeEstimator
    from attnprof.tuning.loop import TuneRequest, tune
    from attnprof.tuning.space import GlobalChoice

    workload = load_workload("hf:llama")
    settings = Settings(batch_size=1, seq_len=32, warmup=1, repeats=3, threads=1)
    request = TuneRequest(Budget(), "latency", ["backend"], backends=("flash", "flex", "eager"), verify_seconds=5.0)
    probes = ProbeEstimator(workload, settings, [GlobalChoice(b, "fp32", 1, 1) for b in ("flash", "flex", "eager")])
    outcome = tune(workload, settings, request, probes)
    assert {g.backend for g in outcome.space.globals} == {"flash", "flex", "eager"}
    # Each backend is profiled as built by apply: as a probe, or as a verified candidate (one whose
    # probe says it cannot win is not measured twice).
    measured = {c.backend for c in probes.profiles} | {v.choices.backend for v in outcome.verifications
                                                       if v.measured is not None and v.choices != PlanChoices()}
    assert measured == {"flash", "flex", "eager"}
    assert outcome.plan is not None and outcome.plan.verified
    assert outcome.plan.choices.backend in measured | {"auto"}  # auto: the plan that changes nothing won
