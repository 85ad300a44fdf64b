"""Head pruning and GQA conversion on real models: pruning equals masking, grouping identical
K/V heads is exact, and what a family cannot do is reported by layer name."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnprof.errors import UsageError
from attnprof.plans.adapters.base import HeadLayout
from attnprof.plans.discover import discover
from attnprof.plans.engine import Example, apply_plan
from attnprof.plans.heads import choose_heads, kept_heads
from attnprof.plans.outputs import main_tensor
from attnprof.plans.records import PlanChoices
from attnprof.targets.zoo.models import ZooConfig, ZooTransformer
from tests import apply_models as models

torch.set_num_threads(1)


def zoo(attention: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    config = ZooConfig(
        vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64, attention=attention
    )
    return ZooTransformer(config).eval()


FAMILIES = {
    "zoo_decoder": (zoo, models.token_ids),
    "zoo_gpt": (lambda: zoo("manual"), models.token_ids),
    "llama": (models.llama, models.token_ids),
    "gpt2": (models.gpt2, models.token_ids),
    "bert": (models.bert, models.token_ids),
    "mha": (models.encoder_layer, lambda: torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(3))),
    "generic": (models.TinyDecoder, models.token_ids),
}


def mask_heads(model: nn.Module, heads: list[int]) -> None:
    """Silence heads in an unpruned model by zeroing their input columns of the o-projection."""
    for site in discover(model).sites:
        o_weight = site.adapter.read(site.module).o_weight
        for head in heads:
            o_weight[:, head * site.layout.head_dim : (head + 1) * site.layout.head_dim] = 0


def run(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return main_tensor(model(inputs))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pruned_model_equals_masked_original(family: str) -> None:
    build, make_inputs = FAMILIES[family]
    model, inputs = build(), make_inputs()
    masked = copy.deepcopy(model)
    heads = [1, 3]  # one head from each K/V group of the GQA models (group size 2)
    mask_heads(masked, heads)
    params_before = sum(p.numel() for p in model.parameters())

    model, report = apply_plan(model, PlanChoices(prune_heads={"*": heads}))

    assert torch.allclose(run(model, inputs), run(masked, inputs), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < params_before  # weights really sliced
    for change in report.sites:
        assert change.pruned_heads == heads
        assert change.new_num_heads == change.num_heads - 2
    for site in discover(model).sites:
        assert site.layout.num_heads == 2


def test_importance_picks_silent_heads_and_updates_llama_config() -> None:
    model, ids = models.llama(num_heads=4, num_kv_heads=4), models.token_ids()
    mask_heads(model, [0, 2])  # heads that contribute nothing score zero
    reference = run(model, ids)

    model, report = apply_plan(model, PlanChoices(prune_heads={"*": 2}), Example.of(ids))

    for change in report.sites:
        assert change.pruned_heads == [0, 2]
        assert change.head_importance[0] == 0.0 and change.head_importance[1] > 0.0
    assert torch.allclose(run(model, ids), reference, atol=1e-5)
    assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 2
    assert model.config.pruned_heads == {0: [0, 2], 1: [0, 2]}


def test_importance_needs_example_inputs() -> None:
    with pytest.raises(UsageError, match="example inputs"):
        apply_plan(models.TinyDecoder(), PlanChoices(prune_heads={"*": 2}))


def test_gqa_choice_respects_groups() -> None:
    layout = HeadLayout(num_heads=4, num_kv_heads=2, head_dim=8)
    # group 1 (heads 2, 3) carries least: dropping a whole group beats one head per group
    assert choose_heads(layout, torch.tensor([5.0, 4.0, 0.1, 0.2]), 2) == [2, 3]
    assert choose_heads(layout, torch.tensor([5.0, 0.1, 4.0, 0.2]), 2) == [1, 3]
    with pytest.raises(UsageError, match="multiple of 2"):
        choose_heads(layout, torch.ones(4), 1)
    with pytest.raises(UsageError, match="unequal"):
        kept_heads(layout, [0])


def _duplicate_kv_heads_in_pairs(weight: torch.Tensor, bias: torch.Tensor | None, head_dim: int) -> None:
    """Make K/V heads 2g and 2g+1 identical, so grouping them in pairs loses nothing."""
    for first in range(0, weight.shape[0] // head_dim, 2):
        rows = slice(first * head_dim, (first + 1) * head_dim)
        twin = slice((first + 1) * head_dim, (first + 2) * head_dim)
        weight[twin] = weight[rows]
        if bias is not None:
            bias[twin] = bias[rows]


@pytest.mark.parametrize("family", ["llama", "mha", "generic"])
def test_gqa_conversion_of_identically_grouped_heads_is_exact(family: str) -> None:
    build, make_inputs = FAMILIES[family]
    model = models.llama(num_heads=4, num_kv_heads=4) if family == "llama" else build()
    if family == "generic":
        model = models.TinyDecoder(kv_heads=4)
    inputs = make_inputs()
    for site in discover(model).sites:
        w = site.adapter.read(site.module)
        for weight, bias in ((w.k_weight, w.k_bias), (w.v_weight, w.v_bias)):
            _duplicate_kv_heads_in_pairs(weight, bias, site.layout.head_dim)
    reference = run(model, inputs)

    model, report = apply_plan(model, PlanChoices(kv_heads={"*": 2}))

    assert not report.not_applied
    assert all(c.new_num_kv_heads == 2 and c.new_num_heads == 4 for c in report.sites)
    assert torch.allclose(run(model, inputs), reference, atol=1e-5, rtol=1e-5)


def test_gqa_conversion_mean_pools_kv_heads() -> None:
    model = models.TinyDecoder(kv_heads=4)
    site = discover(model).sites[0]
    k_before = site.adapter.read(site.module).k_weight.clone()
    apply_plan(model, PlanChoices(kv_heads={site.name: 2}))
    k_after = site.adapter.read(site.module).k_weight
    assert torch.allclose(k_after[:8], (k_before[:8] + k_before[8:16]) / 2)
    assert torch.allclose(k_after[8:], (k_before[16:24] + k_before[24:]) / 2)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_gqa_on_families_without_grouping_is_reported_per_layer(family: str) -> None:
    build, _ = FAMILIES[family]
    _, report = apply_plan(build(), PlanChoices(kv_heads={"*": 2}))
    assert [n.module for n in report.not_applied] == [c.name for c in report.sites]
    assert all(n.what == "kv_heads" and "K/V" in n.reason for n in report.not_applied)


def test_plan_naming_a_missing_layer_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"blocks\.7\.attn"):
        apply_plan(models.TinyDecoder(), PlanChoices(prune_heads={"blocks.7.attn": [0, 1]}))


@pytest.mark.parametrize("batch_first", [True, False])
def test_sliced_multihead_attention_keeps_masks_and_weights(batch_first: bool) -> None:
    torch.manual_seed(0)
    original = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    masked = copy.deepcopy(original)
    mask_heads(masked, [2])
    pruned, _ = apply_plan(copy.deepcopy(original), PlanChoices(prune_heads={"*": [2]}))
    x = torch.randn(2, 6, 32) if batch_first else torch.randn(6, 2, 32)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    with torch.no_grad():
        out, weights = pruned(x, x, x, key_padding_mask=padding, attn_mask=causal, average_attn_weights=False)
        ref_out, ref_weights = masked(x, x, x, key_padding_mask=padding, attn_mask=causal, average_attn_weights=False)
        fast_out, none = pruned(x, x, x, key_padding_mask=padding, attn_mask=causal, need_weights=False)
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(fast_out, ref_out, atol=1e-6)
    assert none is None
    assert torch.allclose(weights, ref_weights[:, [0, 1, 3]], atol=1e-6)  # the kept heads' own weights
    with pytest.raises(RuntimeError, match="per-head"):
        pruned(x, x, x, attn_mask=torch.zeros(8, 6, 6, dtype=torch.bool))


class FixedWidthAttention(models.QKVOAttention):
    """Declares num_heads but merges heads with a width fixed at construction."""

    def __init__(self) -> None:
        super().__init__(num_kv_heads=4)
        self.width = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.width))


def test_a_rewrite_the_forward_does_not_follow_is_undone_and_reported() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(FixedWidthAttention()), torch.randn(2, 8, 32)
    reference = run(model, x)
    model, report = apply_plan(model, PlanChoices(prune_heads={"*": [1]}), Example.of(x))
    assert [(n.module, n.what) for n in report.not_applied] == [("0", "prune_heads")]
    assert "forward fails with the changed head counts" in report.not_applied[0].reason
    assert report.sites[0].new_num_heads == 4 and torch.equal(run(model, x), reference)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "mha", "zoo_decoder"])
def test_rewrites_are_checked_against_the_original_on_example_inputs(family: str) -> None:
    build, make_inputs = FAMILIES[family]
    model, inputs = build(), make_inputs()
    masked = copy.deepcopy(model)
    mask_heads(masked, [1, 3])
    model, report = apply_plan(model, PlanChoices(prune_heads={"*": [1, 3]}), Example.of(inputs))
    assert report.not_applied == []
    assert torch.allclose(run(model, inputs), run(masked, inputs), atol=1e-5, rtol=1e-5)
