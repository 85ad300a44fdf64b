"""transformers GPT-2 attention: fused `c_attn` and `c_proj` Conv1D layers (weights are in × out).

`c_attn` holds q, k and v side by side along its output columns; the forward splits them in
three equal parts of `split_size`, so K/V heads cannot be fewer than query heads.
"""

from __future__ import annotations

import torch
from torch import nn

from attnprof.plans.adapters.base import (
    Adapter,
    HeadLayout,
    Projections,
    ShardNames,
    Unsupported,
    int_attribute,
    new_parameter,
    tensor_of,
)


def is_conv1d(module: object) -> bool:
    # transformers' Conv1D, matched by its shape contract rather than imported (transformers is optional)
    return (
        isinstance(module, nn.Module)
        and type(module).__name__ == "Conv1D"
        and int_attribute(module, "nf") is not None
        and int_attribute(module, "nx") is not None
    )


class GPT2Adapter(Adapter):
    family = "gpt2"

    def matches(self, module: nn.Module) -> bool:
        return (
            is_conv1d(getattr(module, "c_attn", None))
            and is_conv1d(getattr(module, "c_proj", None))
            and int_attribute(module, "num_heads") is not None
            and int_attribute(module, "split_size") is not None
            and not hasattr(module, "q_attn")  # cross-attention splits c_attn in two, not three
        )

    def layout(self, module: nn.Module) -> HeadLayout:
        return HeadLayout(module.num_heads, module.num_heads, module.head_dim)

    def read(self, module: nn.Module, grad: bool = False) -> Projections:
        qkv_w = tensor_of(module.c_attn.weight, grad).t()  # (3·H·D, E)
        qkv_b = tensor_of(module.c_attn.bias, grad)
        q_w, k_w, v_w = qkv_w.split(module.split_size, dim=0)
        q_b, k_b, v_b = qkv_b.split(module.split_size, dim=0)
        o_w = tensor_of(module.c_proj.weight, grad).t()  # (E, H·D)
        return Projections(q_w, q_b, k_w, k_b, v_w, v_b, o_w, tensor_of(module.c_proj.bias, grad))

    def write(self, module: nn.Module, weights: Projections, layout: HeadLayout) -> None:
        if layout.num_kv_heads != layout.num_heads:
            raise Unsupported("GPT-2's fused c_attn splits q, k and v in equal thirds")
        c_attn, c_proj = module.c_attn, module.c_proj
        c_attn.weight = new_parameter(
            c_attn.weight, torch.cat([weights.q_weight, weights.k_weight, weights.v_weight]).t()
        )
        c_attn.bias = new_parameter(c_attn.bias, torch.cat([weights.q_bias, weights.k_bias, weights.v_bias]))
        c_attn.nf = c_attn.weight.shape[1]
        c_proj.weight = new_parameter(c_proj.weight, weights.o_weight.t())
        c_proj.nx = c_proj.weight.shape[0]
        self.set_head_counts(module, layout)

    def set_head_counts(self, module: nn.Module, layout: HeadLayout) -> None:
        module.num_heads = layout.num_heads
        module.split_size = layout.num_heads * layout.head_dim

    def check_gqa(self, module: nn.Module) -> None:
        raise Unsupported("GPT-2's fused c_attn splits q, k and v in equal thirds, so K/V heads cannot be grouped")

    def shard_names(self, name: str, module: nn.Module) -> ShardNames:
        raise Unsupported("GPT-2 projections are fused Conv1D layers; DTensor parallel styles split nn.Linear only")

    def is_projection(self, module: nn.Module) -> bool:
        return is_conv1d(module) or super().is_projection(module)
