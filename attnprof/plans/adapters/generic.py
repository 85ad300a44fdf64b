"""Generic attention modules: q_proj/k_proj/v_proj/o_proj nn.Linear plus int head-count attributes.

This is the shape of most hand-written attention (and of the zoo models): the forward reshapes
with `self.num_heads` / `self.num_kv_heads` / `self.head_dim`, so changing those attributes is
what makes the module run with fewer (pruned) or local (sharded) heads.
"""

from __future__ import annotations

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
