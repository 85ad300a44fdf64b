"""Head pruning and GQA conversion, on the canonical weights every adapter reads and writes.

Importance is the gradient-based score of Michel et al. (2019, "Are Sixteen Heads Really Better
than One?"): with a gate ξ_h scaling head h's output, I_h = |∂L/∂ξ_h| at ξ = 1. Because head h's
output only meets the o-projection in its own input columns, ∂L/∂ξ_h = Σ W_o[:, h] · ∂L/∂W_o[:, h],
so one backward pass over the example inputs scores every head of every layer, with no hooks.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

from attnprof.errors import UsageError
from attnprof.plans.adapters.base import HeadLayout, Projections, Unsupported
from attnprof.plans.calls import ModuleCall
from attnprof.plans.discover import AttentionSite
from attnprof.plans.outputs import main_tensor


def head_importance(
    model: nn.Module, sites: Sequence[AttentionSite], loss: Callable[[], torch.Tensor]
) -> dict[str, torch.Tensor]:
    """|∂L/∂ξ_h| per query head of each site, from one backward pass of `loss()` in eval mode."""
    was_training = {m: m.training for m in model.modules()}
    wanted = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()  # dropout would make the scores random
        model.zero_grad(set_to_none=True)
        for param in model.parameters():
            param.requires_grad_(True)
        with torch.enable_grad():
            loss().backward()
        scores = {}
        for site in sites:
            layout = site.layout
            weight = site.adapter.read(site.module).o_weight.float()
            grad = site.adapter.read(site.module, grad=True).o_weight.float()
            per_column = (weight * grad).sum(dim=0)
            scores[site.name] = per_column.view(layout.num_heads, layout.head_dim).sum(dim=1).abs()
        return scores
    finally:
        model.zero_grad(set_to_none=True)
        for param, flag in wanted.items():
            param.requires_grad_(flag)
        for module, flag in was_training.items():
            module.training = flag


def choose_heads(layout: HeadLayout, importance: torch.Tensor, count: int) -> list[int]:
    """The `count` least important query heads whose removal leaves a valid head layout.

    With GQA, every K/V group must keep the same number of query heads, so either whole groups
    go (count a multiple of the group size) or each group loses count / num_kv_heads heads;
    the option that keeps the most importance wins.
    """
    if count < 1 or count >= layout.num_heads:
        raise UsageError(f"cannot prune {count} of {layout.num_heads} heads: keep at least one, remove at least one")
    groups = importance.view(layout.num_kv_heads, layout.group_size)
    options: list[list[int]] = []
    if count % layout.group_size == 0:
        dropped = groups.sum(dim=1).argsort()[: count // layout.group_size].tolist()
        options.append([g * layout.group_size + i for g in sorted(dropped) for i in range(layout.group_size)])
    if count % layout.num_kv_heads == 0 and layout.group_size > 1:
        per_group = count // layout.num_kv_heads
        options.append(
            sorted(
                g * layout.group_size + i
                for g in range(layout.num_kv_heads)
                for i in groups[g].argsort()[:per_group].tolist()
            )
        )
    if not options:
        raise UsageError(
            f"cannot prune {count} heads from a layer with {layout.num_heads} heads in {layout.num_kv_heads} "
            f"K/V groups: the count must be a multiple of {layout.group_size} or of {layout.num_kv_heads}"
        )
    return min(options, key=lambda heads: float(importance[heads].sum()))


def kept_heads(layout: HeadLayout, remove: Sequence[int]) -> tuple[list[int], list[int]]:
    """(query heads kept, K/V heads kept) after removing `remove`; refuses layouts GQA cannot run."""
    bad = [h for h in remove if not 0 <= h < layout.num_heads]
    if bad or len(set(remove)) != len(remove):
        raise UsageError(f"head indices {list(remove)} are not distinct heads of 0..{layout.num_heads - 1}")
    keep_q = [h for h in range(layout.num_heads) if h not in set(remove)]
    if not keep_q:
        raise UsageError(f"pruning {len(remove)} heads would leave no head")
    per_group = [sum(1 for h in keep_q if h // layout.group_size == g) for g in range(layout.num_kv_heads)]
    keep_kv = [g for g, n in enumerate(per_group) if n > 0]
    if len({per_group[g] for g in keep_kv}) != 1:
        raise UsageError(
            f"pruning heads {sorted(remove)} leaves K/V groups with unequal query heads {per_group}; "
            "grouped-query attention needs the same number in every group"
        )
    return keep_q, keep_kv


def prune_heads(site: AttentionSite, remove: Sequence[int], call: ModuleCall | None = None) -> HeadLayout:
    """Physically remove query heads (and K/V heads left without queries) from a layer.

    With a recorded call, the pruned layer must reproduce the original with those heads
    silenced (their o-projection columns zeroed) on the same inputs, or it is restored.
    """
    layout = site.layout
    keep_q, keep_kv = kept_heads(layout, remove)
    q_rows = _rows(keep_q, layout.head_dim)
    kv_rows = _rows(keep_kv, layout.head_dim)
    w = site.adapter.read(site.module)
    pruned = Projections(
        q_weight=w.q_weight[q_rows],
        q_bias=_select(w.q_bias, q_rows),
        k_weight=w.k_weight[kv_rows],
        k_bias=_select(w.k_bias, kv_rows),
        v_weight=w.v_weight[kv_rows],
        v_bias=_select(w.v_bias, kv_rows),
        o_weight=w.o_weight[:, q_rows],
        o_bias=w.o_bias,
    )
    silenced = dataclasses.replace(w, o_weight=w.o_weight.clone())
    for head in remove:
        silenced.o_weight[:, head * layout.head_dim : (head + 1) * layout.head_dim] = 0
    new_layout = HeadLayout(len(keep_q), len(keep_kv), layout.head_dim)
    _write_checked(site, pruned, new_layout, silenced, call)
    return new_layout


def convert_to_gqa(site: AttentionSite, num_kv_heads: int, call: ModuleCall | None = None) -> HeadLayout:
    """Group K/V heads into `num_kv_heads` by mean-pooling the heads of each group.

    Query head h then reads K/V group h // (num_heads / num_kv_heads), the same contiguous
    grouping repeat_kv and SDPA's enable_gqa use. With a recorded call, the grouped layer must
    reproduce the original whose K/V heads were each replaced by their group's mean.
    """
    layout = site.layout
    if num_kv_heads == layout.num_kv_heads:
        return layout
    if num_kv_heads > layout.num_kv_heads or layout.num_kv_heads % num_kv_heads:
        raise UsageError(
            f"{site.name}: cannot group {layout.num_kv_heads} K/V heads into {num_kv_heads}; "
            f"the new count must divide {layout.num_kv_heads}"
        )
    site.adapter.check_gqa(site.module)
    pool = layout.num_kv_heads // num_kv_heads
    w = site.adapter.read(site.module)
    pooled = Projections(
        q_weight=w.q_weight,
        q_bias=w.q_bias,
        k_weight=_pool(w.k_weight, num_kv_heads, pool, layout.head_dim),
        k_bias=_pool(w.k_bias, num_kv_heads, pool, layout.head_dim),
        v_weight=_pool(w.v_weight, num_kv_heads, pool, layout.head_dim),
        v_bias=_pool(w.v_bias, num_kv_heads, pool, layout.head_dim),
        o_weight=w.o_weight,
        o_bias=w.o_bias,
    )
    spread = dataclasses.replace(
        w,
        k_weight=_spread(pooled.k_weight, pool, layout.head_dim),
        k_bias=_spread(pooled.k_bias, pool, layout.head_dim),
        v_weight=_spread(pooled.v_weight, pool, layout.head_dim),
        v_bias=_spread(pooled.v_bias, pool, layout.head_dim),
    )
    new_layout = HeadLayout(layout.num_heads, num_kv_heads, layout.head_dim)
    _write_checked(site, pooled, new_layout, spread, call)
    return new_layout


def _write_checked(
    site: AttentionSite, weights: Projections, layout: HeadLayout, equivalent: Projections, call: ModuleCall | None
) -> None:
    """Write the rewritten weights; with a recorded call, first run the module with
    `equivalent` (the same function in the original layout), then the rewrite, and restore the
    original if the outputs differ: the forward did not follow the changed head counts."""
    adapter, module = site.adapter, site.module
    if call is None or call.snapshot is None:
        adapter.write(module, weights, layout)
        return
    original, original_layout = adapter.read(module), site.layout
    training = module.training
    module.eval()  # dropout would make the two runs differ
    try:
        adapter.write(module, equivalent, original_layout)
        expected = main_tensor(call.replay(module)).float()
        adapter.write(module, weights, layout)
        actual = main_tensor(call.replay(module)).float()
    except Exception as exc:  # the module's own forward failed on the new shapes
        adapter.write(module, original, original_layout)
        raise Unsupported(f"its forward fails with the changed head counts ({type(exc).__name__}: {exc})") from exc
    finally:
        module.train(training)
    tolerance = 1e-5 if original.q_weight.dtype in (torch.float32, torch.float64) else 5e-2
    scale = max(1.0, float(expected.abs().max()))
    if actual.shape != expected.shape or float((actual - expected).abs().max()) > tolerance * scale:
        adapter.write(module, original, original_layout)
        raise Unsupported("its forward does not follow the changed head counts (outputs differ on the example inputs)")


def update_config(model: nn.Module, sites: Sequence[AttentionSite], pruned: dict[str, list[int]]) -> list[str]:
    """Bring a transformers config in line with the rewritten layers; returns what changed.

    Per-layer pruning is recorded as `pruned_heads` {layer_idx: heads} (the transformers
    convention). Head counts are set only when every layer now has the same layout and its
    family's config states head_dim explicitly (`Adapter.config_head_fields`), since others
    derive it from the counts.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_attention_heads"):
        return []
    # The model's own copy: a factory may hand one config object to every model it builds, and
    # the unmodified models built after this one must keep their head counts.
    config = copy.deepcopy(config)
    model.config = config
    for site in sites:
        if getattr(site.attention_module, "config", None) is not None:
            site.attention_module.config = config
    changes = []
    by_layer = {getattr(s.attention_module, "layer_idx", None): pruned[s.name] for s in sites if pruned.get(s.name)}
    if by_layer and all(isinstance(k, int) for k in by_layer):
        config.pruned_heads = {**getattr(config, "pruned_heads", {}), **by_layer}
        changes.append(f"config.pruned_heads records {len(by_layer)} layers")
    layouts = {s.layout for s in sites}
    stated = [s.adapter.config_head_fields(s.layout) for s in sites]
    if len(layouts) == 1 and all(stated):
        (layout,) = layouts
        for fields in stated:  # the same fields for one family, each family's own otherwise
            for name, value in fields.items():
                setattr(config, name, value)
        changes.append(f"config heads = {layout.num_heads}, kv heads = {layout.num_kv_heads}")
    return changes


def _rows(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long)


def _select(bias: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return bias[rows] if bias is not None else None


def _spread(tensor: torch.Tensor | None, pool: int, head_dim: int) -> torch.Tensor | None:
    """Pooled K/V heads repeated back to one per original head (contiguous groups)."""
    if tensor is None:
        return None
    trailing = tensor.shape[1:]
    groups = tensor.shape[0] // head_dim
    heads = tensor.reshape(groups, head_dim, *trailing).repeat_interleave(pool, dim=0)
    return heads.reshape(groups * pool * head_dim, *trailing)


def _pool(tensor: torch.Tensor | None, groups: int, pool: int, head_dim: int) -> torch.Tensor | None:
    if tensor is None:
        return None
    trailing = tensor.shape[1:]
    return tensor.reshape(groups, pool, head_dim, *trailing).mean(dim=1).reshape(groups * head_dim, *trailing)
