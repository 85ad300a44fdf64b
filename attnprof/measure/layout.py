"""The attention layout a module declares, checked against what its kernel computed.

The counters read heads, lengths and head_dim from the kernel's tensors, which is exact for
FLOPs but not always the model's layout: transformers packs grouped query heads into the query
length for a one-token decode step with a mask (a (batch, kv_heads, n_rep, dim) query), Falcon
and eager GQA code repeat K/V to every head before the kernel, and a hand-written attention may
fold heads into the batch. Tune and apply act on the layout, so it is taken from the module
where the module states it — its attributes, or the config it carries (`num_attention_heads`,
`num_key_value_heads`, `head_dim`, ...) — and the kernel's shapes must agree with it: heads ×
query length and batch × heads are preserved by every packing above. A layout they cannot
explain is reported in a note and the kernel's shapes are kept.

This is a reader of well-known attribute names, not a family registry (plans/adapters are that,
one layer up): it never decides what to change, only what the model says it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from attnprof.measure.records import AttentionInfo

# Attribute names for each fact, on the attention module itself first, then on its config.
_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "attention_heads")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "num_key_value_head", "multi_query_group_num")
_HEAD_DIM = ("qk_head_dim", "head_dim", "attention_head_size", "head_size", "key_value_proj_dim", "d_kv")
_GROUPS = "num_key_value_groups"  # query heads per K/V head (transformers' GQA modules)


@dataclass(frozen=True)
class DeclaredLayout:
    """What a module says about its attention; None where it says nothing."""

    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    causal: bool | None = None
    window: int | None = None


def _int(owner: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(owner, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def declared_layout(module: nn.Module) -> DeclaredLayout:
    """The layout `module` states through its attributes or its own config."""
    config = getattr(module, "config", None)
    owners = [module] if config is None else [module, config]
    heads = next((found for owner in owners if (found := _int(owner, _HEADS)) is not None), None)
    kv_heads = next((found for owner in owners if (found := _int(owner, _KV_HEADS)) is not None), None)
    groups = _int(module, (_GROUPS,))
    if heads is not None and groups is not None and heads % groups == 0:
        kv_heads = heads // groups
    if kv_heads is None and getattr(module, "multi_query", False) is True:
        kv_heads = 1  # Falcon-style multi-query attention names no count
    head_dim = next((found for owner in owners if (found := _int(owner, _HEAD_DIM)) is not None), None)
    causal = getattr(module, "is_causal", None)
    window = _int(module, ("sliding_window",))
    return DeclaredLayout(heads, kv_heads, head_dim, causal if isinstance(causal, bool) else None, window)


def reconcile(info: AttentionInfo, declared: DeclaredLayout) -> tuple[AttentionInfo, str | None]:
    """The layout of `info` as the module declares it, when the kernel's shapes agree; else the
    kernel's, with a line saying what disagrees. FLOPs are never changed."""
    heads, kv_heads = declared.num_heads, declared.num_kv_heads
    if declared.head_dim is not None and declared.head_dim != info.head_dim:
        return info, f"head_dim {declared.head_dim} declared, {info.head_dim} in the kernel"
    if heads is None:
        return info, None
    fixed = info
    if heads != info.num_heads:
        pairs = info.num_heads * info.q_len  # (query head, query) rows: preserved by packing
        folded = info.batch_size * info.num_heads  # heads folded into the batch
        if pairs % heads == 0 and kv_heads == info.num_heads:
            fixed = replace(info, num_heads=heads, q_len=pairs // heads)
        elif folded % heads == 0 and info.batch_size != folded // heads:
            fixed = replace(info, num_heads=heads, batch_size=folded // heads)
        else:
            return info, (f"{heads} heads declared, the kernel ran {info.num_heads} heads × {info.q_len} queries "
                          f"(batch {info.batch_size})")
    if kv_heads is not None and kv_heads != fixed.num_kv_heads:
        if heads % kv_heads != 0 or fixed.num_kv_heads < kv_heads:
            return fixed, f"{kv_heads} key/value heads declared, {fixed.num_kv_heads} in the kernel"
        fixed = replace(fixed, num_kv_heads=kv_heads)  # K/V repeated to every head before the kernel
    if fixed.q_len == 1:  # one query at the end of the cache: its mask row shows neither fact
        if declared.causal and not fixed.causal:
            fixed = replace(fixed, causal=True)
        if declared.window is not None and declared.window < fixed.kv_len:
            fixed = replace(fixed, window=declared.window)
    if declared.window is not None and declared.window < fixed.kv_len and fixed.window is None:
        return fixed, f"sliding window {declared.window} declared, the kernel's mask shows none"
    return fixed, None
