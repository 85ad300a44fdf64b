"""Generic attention modules: q_proj/k_proj/v_proj/o_proj nn.Linear plus int head-count attributes.

This is the shape of most hand-written attention (and of the zoo models): the forward reshapes
with `self.num_heads` / `self.num_kv_heads` / `self.head_dim`, so changing those attributes is
what makes the module run with fewer (pruned) or local (sharded) heads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnprof.plans.adapters.base import HeadLayout, Projections, Unsupported, int_attribute
from attnprof.plans.adapters.separate import SeparateLinearAdapter


class GenericAdapter(SeparateLinearAdapter):
    family = "generic"

    def matches(self, module: nn.Module) -> bool:
        return self.has_projections(module) and int_attribute(module, "num_heads") is not None

    def layout(self, module: nn.Module) -> HeadLayout:
        num_heads = int_attribute(module, "num_heads")
        head_dim = int_attribute(module, "head_dim") or module.q_proj.out_features // num_heads
        num_kv_heads = int_attribute(module, "num_kv_heads") or module.k_proj.out_features // head_dim
        return HeadLayout(num_heads, num_kv_heads, head_dim)

    def write(self, module: nn.Module, weights: Projections, layout: HeadLayout) -> None:
        self.write_projections(module, weights)
        self.set_head_counts(module, layout)

    def set_head_counts(self, module: nn.Module, layout: HeadLayout) -> None:
        module.num_heads = layout.num_heads
        if int_attribute(module, "num_kv_heads") is not None:
            module.num_kv_heads = layout.num_kv_heads

    def check_gqa(self, module: nn.Module) -> None:
        if int_attribute(module, "num_kv_heads") is None:
            raise Unsupported("the module has no num_kv_heads attribute, so its forward cannot group K/V heads")

    def sdpa_forwards(self, module: nn.Module) -> tuple[Callable[..., torch.Tensor], ...]:
        return tuple(self._sdpa_forward(module.forward, causal) for causal in (True, False))

    def _sdpa_forward(self, original: Callable[..., Any], causal: bool) -> Callable[..., torch.Tensor]:
        """An SDPA forward; calls that pass anything beyond the hidden states (a mask, positions)
        go to the original forward, which alone knows what they mean."""

        def forward(module: nn.Module, hidden: torch.Tensor, *extra: Any, **options: Any) -> torch.Tensor:
            if any(a is not None for a in [*extra, *options.values()]):
                return original(hidden, *extra, **options)
            head_dim = self.layout(module).head_dim  # read per call: pruning or sharding may change it
            batch, seq, _ = hidden.shape
            q = module.q_proj(hidden).view(batch, seq, -1, head_dim).transpose(1, 2)
            k = module.k_proj(hidden).view(batch, seq, -1, head_dim).transpose(1, 2)
            v = module.v_proj(hidden).view(batch, seq, -1, head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
            return module.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))

        return forward
