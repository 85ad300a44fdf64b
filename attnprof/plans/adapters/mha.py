"""torch.nn.MultiheadAttention: one fused `in_proj_weight` [q; k; v] and an `out_proj` Linear.

nn.MultiheadAttention ties the inner width to `embed_dim` (F.multi_head_attention_forward checks
it), so a module with pruned or grouped heads cannot run through it. Such a module is turned
into `SlicedMultiheadAttention`: the same parameters, sliced, and a forward with the same
signature and semantics that runs SDPA with `num_heads` query and `num_kv_heads` K/V heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnprof.plans.adapters.base import (
    Adapter,
    HeadLayout,
    Projections,
    ShardNames,
    Unsupported,
    linear_weight,
    new_parameter,
    set_linear,
    tensor_of,
)


class SlicedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention after its heads were pruned or grouped.

    `in_proj_weight` rows are q (num_heads·head_dim), then k and v (num_kv_heads·head_dim each).
    Per-head 3-D `attn_mask`s are refused: they were written for the original heads.
    """

    num_kv_heads: int

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, q_len, k_len = query.shape[0], query.shape[1], key.shape[1]
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.split([q_width, kv_width, kv_width])
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split([q_width, kv_width, kv_width])
        q = F.linear(query, w_q, b_q).view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(batch, k_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(batch, k_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        mask = _additive_mask(attn_mask, key_padding_mask, batch, q_len, k_len, q.dtype)
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            group = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            scores = q @ k.transpose(-2, -1) * self.head_dim**-0.5
            if mask is not None:
                scores = scores + mask
            probs = F.dropout(scores.softmax(dim=-1), p=dropout)
            out = probs @ v
            weights = probs.mean(dim=1) if average_attn_weights else probs
        else:
            # F.multi_head_attention_forward requires attn_mask with is_causal; the mask then decides
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=is_causal and mask is None,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, q_len, q_width))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights


def _additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    q_len: int,
    k_len: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """attn_mask (L, S) and key_padding_mask (N, S) merged into one additive (N|1, 1, L, S) mask."""
    mask = None
    if attn_mask is not None:
        if attn_mask.dim() != 2:
            raise RuntimeError(
                "per-head (3-D) attn_mask cannot be used with an attention layer whose heads were changed"
            )
        mask = _as_additive(attn_mask, dtype).view(1, 1, q_len, k_len)
    if key_padding_mask is not None:
        padding = _as_additive(key_padding_mask, dtype).view(batch, 1, 1, k_len)
        mask = padding if mask is None else mask + padding
    return mask


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # nn.MultiheadAttention: a boolean True means "may not attend"; float masks are added
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttentionAdapter(Adapter):
    family = "mha"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    def layout(self, module: nn.Module) -> HeadLayout:
        num_kv_heads = getattr(module, "num_kv_heads", module.num_heads)
        return HeadLayout(module.num_heads, num_kv_heads, module.head_dim)

    def read(self, module: nn.Module, grad: bool = False) -> Projections:
        self._check_rewritable(module)
        layout = self.layout(module)
        sizes = [layout.num_heads * layout.head_dim, *[layout.num_kv_heads * layout.head_dim] * 2]
        q_w, k_w, v_w = tensor_of(module.in_proj_weight, grad).split(sizes)
        q_b = k_b = v_b = None
        if module.in_proj_bias is not None:
            q_b, k_b, v_b = tensor_of(module.in_proj_bias, grad).split(sizes)
        return Projections(q_w, q_b, k_w, k_b, v_w, v_b, *linear_weight(module.out_proj, grad))

    def write(self, module: nn.Module, weights: Projections, layout: HeadLayout) -> None:
        self._check_rewritable(module)
        module.in_proj_weight = new_parameter(
            module.in_proj_weight, torch.cat([weights.q_weight, weights.k_weight, weights.v_weight])
        )
        if module.in_proj_bias is not None:
            module.in_proj_bias = new_parameter(
                module.in_proj_bias, torch.cat([weights.q_bias, weights.k_bias, weights.v_bias])
            )
        set_linear(module.out_proj, weights.o_weight, weights.o_bias)
        self.set_head_counts(module, layout)

    def set_head_counts(self, module: nn.Module, layout: HeadLayout) -> None:
        module.__class__ = SlicedMultiheadAttention
        module.num_heads = layout.num_heads
        module.num_kv_heads = layout.num_kv_heads
        # keeps nn.TransformerEncoderLayer off its fused fast path, which assumes the original widths
        module._qkv_same_embed_dim = False

    def check_gqa(self, module: nn.Module) -> None:
        self._check_rewritable(module)

    def shard_names(self, name: str, module: nn.Module) -> ShardNames:
        raise Unsupported("nn.MultiheadAttention fuses q/k/v in one in_proj_weight that DTensor styles cannot split")

    def _check_rewritable(self, module: nn.Module) -> None:
        if module.in_proj_weight is None:
            raise Unsupported("kdim/vdim differ from embed_dim (separate q/k/v weights)")
        if module.bias_k is not None or module.add_zero_attn:
            raise Unsupported("add_bias_kv / add_zero_attn append per-head K/V entries")
