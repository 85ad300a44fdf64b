"""transformers Llama-family attention (Llama, Mistral, Qwen2, ...): GQA with separate projections.

These modules carry no head counts of their own (transformers 5.x): the forward reshapes with
`-1` and `head_dim`, and repeats K/V by `num_key_value_groups`. Head counts are read from the
projection shapes, so they stay right after pruning or sharding.
"""

from __future__ import annotations

from torch import nn

from attnprof.plans.adapters.base import HeadLayout, Projections, int_attribute
from attnprof.plans.adapters.separate import SeparateLinearAdapter


class LlamaAdapter(SeparateLinearAdapter):
    family = "llama"

    def matches(self, module: nn.Module) -> bool:
        return (
            self.has_projections(module)
            and hasattr(module, "config")
            and int_attribute(module, "num_key_value_groups") is not None
            and int_attribute(module, "head_dim") is not None
        )

    def layout(self, module: nn.Module) -> HeadLayout:
        head_dim = module.head_dim
        return HeadLayout(module.q_proj.out_features // head_dim, module.k_proj.out_features // head_dim, head_dim)

    def write(self, module: nn.Module, weights: Projections, layout: HeadLayout) -> None:
        self.write_projections(module, weights)
        self.set_head_counts(module, layout)

    def set_head_counts(self, module: nn.Module, layout: HeadLayout) -> None:
        module.num_key_value_groups = layout.group_size

    def check_gqa(self, module: nn.Module) -> None:
        return None  # repeat_kv / enable_gqa by num_key_value_groups: any grouping runs

    def config_head_fields(self, layout: HeadLayout) -> dict[str, int]:
        return {
            "head_dim": layout.head_dim,
            "num_attention_heads": layout.num_heads,
            "num_key_value_heads": layout.num_kv_heads,
        }
