"""SDPA on the meta device, run as the CPU flash kernel would run it.

On meta, `F.scaled_dot_product_attention` has no fused kernel and decomposes into its math
path: it materialises a (q_len, kv_len) mask and (batch, heads, q_len, kv_len) scores, which
makes a long-context dry run slow and its activation memory that of the math path. A dry run
stands for a CPU run, whose default backend is the flash kernel; this mode sends SDPA calls
on meta tensors to that kernel (`aten._scaled_dot_product_flash_attention_for_cpu`, whose meta
implementation allocates only the output), so FLOPs, the backend and the memory estimate
match the CPU run and `is_causal` is counted in closed form.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from attnprof.measure.attention_ops import SdpaCall
from attnprof.measure.meta_values import MetaConstants

aten = torch.ops.aten


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SDPA's boolean masks keep True; the flash kernel takes an additive mask."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def flash_on_meta(call: SdpaCall) -> torch.Tensor | None:
    """The flash kernel's output for an SDPA call on meta tensors; None when SDPA itself should run
    (other devices, or arguments it would reject, so that its own error is raised)."""
    query, key, value, attn_mask = call.query, call.key, call.value, call.attn_mask
    if query.device.type != "meta" or query.dim() != 4:
        return None
    if call.dropout_p > 0:  # with dropout (training) a CPU runs SDPA's math path, not the flash kernel
        return None
    if key.size(-3) != query.size(-3) and not call.enable_gqa:
        return None
    if attn_mask is not None and call.is_causal:
        return None
    mask = _additive(attn_mask, query.dtype) if attn_mask is not None else None
    output, _ = aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, call.dropout_p, call.is_causal, attn_mask=mask, scale=call.scale
    )
    return output


class FlashOnMeta(MetaConstants):
    """The dry run's step: SDPA as the flash kernel, constants (`torch.tensor(..., device=meta)`)
    with their values known."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            output = flash_on_meta(SdpaCall(*args, **kwargs))
            if output is not None:
                return output
        return super().__torch_function__(func, types, args, kwargs)
