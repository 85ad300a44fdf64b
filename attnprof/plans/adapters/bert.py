"""transformers BERT-family attention: `BertAttention` holds `self.query/key/value` and `output.dense`.

The adapted module is the container (it owns all four projections); the attention op runs in
its `.self` child, whose path is the layer name profiles and plans use.
"""

from __future__ import annotations

from torch import nn

from attnprof.plans.adapters.base import HeadLayout, Projections, Unsupported, int_attribute
from attnprof.plans.adapters.separate import SeparateLinearAdapter


class BertAdapter(SeparateLinearAdapter):
    family = "bert"
    attention_child = "self"
    q_path = "self.query"
    k_path = "self.key"
    v_path = "self.value"
    o_path = "output.dense"

    def matches(self, module: nn.Module) -> bool:
        inner = getattr(module, "self", None)
        return (
            isinstance(inner, nn.Module)
            and self.has_projections(module)
            and int_attribute(inner, "num_attention_heads") is not None
            and int_attribute(inner, "attention_head_size") is not None
        )

    def layout(self, module: nn.Module) -> HeadLayout:
        inner = module.self
        return HeadLayout(inner.num_attention_heads, inner.num_attention_heads, inner.attention_head_size)

    def write(self, module: nn.Module, weights: Projections, layout: HeadLayout) -> None:
        self.write_projections(module, weights)
        self.set_head_counts(module, layout)

    def set_head_counts(self, module: nn.Module, layout: HeadLayout) -> None:
        module.self.num_attention_heads = layout.num_heads
        module.self.all_head_size = layout.num_heads * layout.head_dim

    def check_gqa(self, module: nn.Module) -> None:
        raise Unsupported("BERT attention multiplies queries by keys of the same head count (no K/V grouping)")
