"""FLOP and byte accounting over aten ops, attributed to the module that ran them.

Formulas are plain functions of the op's arguments in a registry keyed by aten op packet
(the style of torch/utils/flop_counter.py). attnprof owns the attention formulas because
FlopCounterMode counts 0 FLOPs for SDPA on CPU and never discounts masks (DESIGN.md).

Bytes moved is the size of every tensor an op reads plus every tensor it writes; views move
nothing and are skipped.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnprof.measure.scopes import ModuleScopes

aten = torch.ops.aten

# FlashAttention benchmark convention: backward does 2.5x the forward FLOPs.
ATTENTION_BACKWARD_FACTOR = 2.5


@dataclass
class AttentionCall:
    """One attention computation as its op arguments describe it."""

    batch_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    q_len: int
    kv_len: int
    causal: bool
    window: int | None
    backend: str
    flops: int  # useful: 4 * head_dim per unmasked (query, key) pair, over batch and query heads
    flops_dense: int


@dataclass
class OpCost:
    flops: int
    attention: AttentionCall | None = None


@dataclass
class ModuleCost:
    """What the ops run directly inside one module (not its children) cost."""

    flops: int = 0
    bytes: int = 0
    backward_flops: int = 0
    backward_bytes: int = 0
    ops: int = 0
    attention: list[AttentionCall] = field(default_factory=list)
    backward_attention_flops: int = 0


Formula = Callable[[tuple[Any, ...], dict[str, Any], Any], OpCost]
FORMULAS: dict[Any, Formula] = {}


def register(*packets: Any) -> Callable[[Formula], Formula]:
    def add(formula: Formula) -> Formula:
        for packet in packets:
            FORMULAS[packet] = formula
        return formula

    return add


@register(aten.mm)
def _mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    (m, k), (_, n) = args[0].shape, args[1].shape
    return OpCost(2 * m * k * n)


@register(aten.addmm)
def _addmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    return _mm(args[1:], kwargs, out)


@register(aten.bmm)
def _bmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    (b, m, k), (_, _, n) = args[0].shape, args[1].shape
    return OpCost(2 * b * m * k * n)


@register(aten.baddbmm)
def _baddbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    return _bmm(args[1:], kwargs, out)


@register(aten.convolution)
def _convolution(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    weight = args[1]
    # Each output element is a dot product over (in_channels / groups) * kernel elements.
    per_output = math.prod(weight.shape[1:])
    return OpCost(2 * out.numel() * per_output)


def attention_pairs(q_len: int, kv_len: int, causal: bool) -> int:
    """Unmasked (query, key) pairs of one head; a causal mask aligns its diagonal bottom-right
    when q_len < kv_len (decoding against a KV cache), as SDPA does."""
    if not causal:
        return q_len * kv_len
    offset = kv_len - q_len
    # Query i sees keys 0..i+offset, clipped to [0, kv_len].
    return sum(min(kv_len, max(0, i + offset + 1)) for i in range(q_len))


def _sdpa_call(query: torch.Tensor, key: torch.Tensor, causal: bool, backend: str) -> AttentionCall:
    *batch_dims, heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[-3], key.shape[-2]
    batch = math.prod(batch_dims)
    pairs = attention_pairs(q_len, kv_len, causal)
    return AttentionCall(
        batch_size=batch,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        q_len=q_len,
        kv_len=kv_len,
        causal=causal,
        window=None,
        backend=backend,
        flops=4 * head_dim * pairs * batch * heads,
        flops_dense=4 * head_dim * q_len * kv_len * batch * heads,
    )


def _causal_flag(args: tuple[Any, ...], kwargs: dict[str, Any], position: int) -> bool:
    if "is_causal" in kwargs:
        return bool(kwargs["is_causal"])
    return bool(args[position]) if len(args) > position else False


@register(aten._scaled_dot_product_flash_attention_for_cpu)
def _sdpa_flash_cpu(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    # (query, key, value, dropout_p, is_causal, *, attn_mask, scale)
    call = _sdpa_call(args[0], args[1], _causal_flag(args, kwargs, 4), "flash")
    return OpCost(call.flops, call)


@register(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _sdpa_flash_cpu_backward(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCost:
    # (grad_out, query, key, value, out, logsumexp, dropout_p, is_causal, ...)
    call = _sdpa_call(args[1], args[2], _causal_flag(args, kwargs, 7), "flash")
    return OpCost(int(ATTENTION_BACKWARD_FACTOR * call.flops))


def _tensor_bytes(values: list[Any]) -> int:
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


class CostCounter(TorchDispatchMode):
    """Counts FLOPs and bytes of every op and attributes them to `scopes.current()`."""

    def __init__(self, scopes: ModuleScopes) -> None:
        super().__init__()
        self.scopes = scopes
        self.per_module: dict[str, ModuleCost] = defaultdict(ModuleCost)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        cost = self.per_module[self.scopes.current()]
        backward = self.scopes.phase == "backward"
        formula = FORMULAS.get(func.overloadpacket)
        op_cost = formula(args, kwargs, out) if formula is not None else OpCost(0)
        moved = 0 if func.is_view else _tensor_bytes(tree_flatten((args, kwargs, out))[0])
        if backward:
            cost.backward_flops += op_cost.flops
            cost.backward_bytes += moved
        else:
            cost.flops += op_cost.flops
            cost.bytes += moved
            cost.ops += 1
            if op_cost.attention is not None:
                cost.attention.append(op_cost.attention)
        return out
