"""FLOP and byte accounting over aten ops, attributed to the module that ran them.

Formulas live in one registry (flop_formulas.py: torch's own where it counts right, attnprof's
for the rest); the counter only looks them up, and times the ops no formula covers so that a
profile can say what share of the step it could not count. attnprof owns the attention formulas
because FlopCounterMode counts 0 FLOPs for SDPA on CPU and never discounts masks
(docs/architecture.md, "Facts about PyTorch that shaped the code").

Attention is found three ways, all from op arguments rather than class names:
  - SDPA kernel ops, flex attention (a higher-order op, its BlockMask evaluated) and the fused
    MHA / encoder-layer ops (attention_ops.py);
  - matmul → mask → softmax → matmul chains written by hand, or SDPA's decomposed math path
    (attention_tracking.py), whose matmuls are then not counted again as plain matmuls;
  - on the meta device, masks built from constants get values by replay (meta_values.py),
    so a dry run counts masked pairs exactly as a real run does.
A module's `flops` include the useful (mask-aware) FLOPs of the attention it ran.

Bytes moved is the size of every tensor an op reads plus every tensor it writes; views move
nothing and are skipped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._ops import HigherOrderOperator
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnprof.measure.attention_math import backward_flops
from attnprof.measure.attention_ops import FUSED_LAYERS, OpAttention, flex_attention, sdpa_attention
from attnprof.measure.attention_tracking import AttentionTracker, Site
from attnprof.measure.flop_formulas import Coverage, op_flops
from attnprof.measure.meta_values import MetaValues
from attnprof.measure.records import AttentionInfo
from attnprof.measure.scopes import ModuleScopes, Phase
from attnprof.measure.sharded import defers_to_shards, is_propagation

aten = torch.ops.aten


@dataclass
class ModuleCost:
    """What the ops run directly inside one module (not its children) cost."""

    flops: int = 0
    bytes: int = 0
    backward_flops: int = 0
    backward_bytes: int = 0
    ops: int = 0
    attention: list[AttentionInfo] = field(default_factory=list)
    backward_attention_flops: int = 0  # included in backward_flops
    # Activation checkpointing runs forwards again inside backward: counted apart, so that
    # forward is one forward and backward is gradient work only.
    recompute_flops: int = 0
    recompute_bytes: int = 0


def merge_attention(calls: list[AttentionInfo], backward: int) -> AttentionInfo:
    """One module's attention calls as one record: FLOPs summed, shapes from the first call."""
    first = calls[0]
    return AttentionInfo(
        num_heads=first.num_heads,
        num_kv_heads=first.num_kv_heads,
        head_dim=first.head_dim,
        q_len=first.q_len,
        kv_len=first.kv_len,
        causal=first.causal,
        window=first.window,
        backend=first.backend,
        flops=sum(c.flops for c in calls),
        flops_dense=sum(c.flops_dense for c in calls),
        backward_flops=backward,
        batch_size=first.batch_size,
        calls=sum(c.calls for c in calls),
    )


def _call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return func(*args, **kwargs)


def _tensor_bytes(values: list[Any]) -> int:
    return sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))


class CostCounter(TorchDispatchMode):
    """Counts FLOPs and bytes of every op and books them on the module and phase `scopes.site()`
    names: forward, backward (from the autograd node running it) or recompute."""

    supports_higher_order_operators = True  # flex_attention reaches the counter as one op

    def __init__(self, scopes: ModuleScopes, values: MetaValues | None = None) -> None:
        super().__init__()
        self.scopes = scopes
        self.per_module: dict[str, ModuleCost] = defaultdict(ModuleCost)
        self.values = values if values is not None else MetaValues()
        self.tracker = AttentionTracker(self.values.value)
        self.coverage = Coverage()
        self.unknown_masks = 0  # attention masks whose values a dry run could not know

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if defers_to_shards(types):
            return NotImplemented  # counted on this rank's shards (measure/sharded.py)
        if is_propagation(args, kwargs):
            return func(*args, **kwargs)
        if isinstance(func, HigherOrderOperator):
            return self._higher_order(func, args, kwargs)
        out = self.coverage.run(self.values.call, func, args, kwargs)
        self.values.observe(func, args, kwargs, out)
        site: Site = self.scopes.site()
        cost = self.per_module[site[0]]
        phase = site[1]  # ops the autograd engine runs are backward (scopes.site reads the running node)
        flops = op_flops(func, args, kwargs, out) or 0
        fused = self._attention_op(func, args, kwargs)
        if fused is not None:
            flops = self._book_attention_op(cost, fused, phase)
            phase = "backward" if fused.backward else phase  # a kernel's backward op is backward, whatever the scope
        verdict = self.tracker.observe(func, args, kwargs, out, site, flops)
        if verdict.absorb:
            flops = 0
        if verdict.release is not None:
            self._take_back(*verdict.release)
        if verdict.attention is not None:
            flops += self._book_attention_found(cost, verdict.attention, phase)
        cost.backward_attention_flops += verdict.backward_flops
        flops += verdict.backward_flops
        self.unknown_masks += not verdict.exact and phase != "recompute"
        moved = 0 if func.is_view else _tensor_bytes(tree_flatten((args, kwargs, out))[0])
        self._book(cost, phase, flops, moved)
        return out

    def _higher_order(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A higher-order op runs as one call (its inner ops are not seen); flex attention is counted
        from its mask, any other one is timed as uncounted."""
        out = self.coverage.run(_call, func, args, kwargs)
        found = flex_attention(func, args, kwargs)
        if found is not None:
            name, phase = self.scopes.site()
            cost = self.per_module[name]
            phase = "backward" if found.backward else phase
            self._book(cost, phase, self._book_attention_op(cost, found, phase), 0)
        return out

    def _attention_op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> OpAttention | None:
        fused_layer = FUSED_LAYERS.get(func.overloadpacket)
        if fused_layer is not None:
            return fused_layer(func, args, kwargs, self.values.value)
        return sdpa_attention(func, args, kwargs, self.values.value, self.tracker.kv_heads_of)

    def _book_attention_op(self, cost: ModuleCost, found: OpAttention, phase: Phase) -> int:
        """Record an attention op's call; its FLOPs (backward: 2.5x forward) are returned to book."""
        if found.backward:
            self.unknown_masks += not found.exact
            extra = backward_flops(found.info.flops)
            cost.backward_attention_flops += extra
            return extra
        return self._book_attention_found(cost, found.info, phase, found.exact) + found.other_flops

    def _book_attention_found(self, cost: ModuleCost, info: AttentionInfo, phase: Phase, exact: bool = True) -> int:
        """A forward attention: a call of the module's attention, unless it is a recompute of one
        already recorded. Its FLOPs are returned to book."""
        if phase != "recompute":
            cost.attention.append(info)
            self.unknown_masks += not exact
        return info.flops

    def _take_back(self, site: Site, flops: int) -> None:
        """FLOPs booked earlier as a plain matmul that turned out to be attention."""
        name, phase = site
        cost = self.per_module[name]
        if phase == "backward":
            cost.backward_flops -= flops
        elif phase == "recompute":
            cost.recompute_flops -= flops
        else:
            cost.flops -= flops

    @staticmethod
    def _book(cost: ModuleCost, phase: str, flops: int, moved: int) -> None:
        if phase == "backward":
            cost.backward_flops += flops
            cost.backward_bytes += moved
        elif phase == "recompute":
            cost.recompute_flops += flops
            cost.recompute_bytes += moved
        else:
            cost.flops += flops
            cost.bytes += moved
            cost.ops += 1
