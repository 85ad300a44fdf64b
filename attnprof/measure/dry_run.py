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

from attnprof.measure.meta_values import MetaConstants

aten = torch.ops.aten


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SDPA's boolean masks keep True; the flash kernel takes an additive mask."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def flash_on_meta(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor | None:
    """The flash kernel's output for an SDPA call on meta tensors; None when SDPA itself should run
    (other devices, or arguments it would reject, so that its own error is raised)."""
    if query.device.type != "meta" or query.dim() != 4:
        return None
    if dropout_p > 0:  # with dropout (training) a CPU runs SDPA's math path, not the flash kernel
        return None
    if key.size(-3) != query.size(-3) and not enable_gqa:
        return None
    if attn_mask is not None and is_causal:
        return None
    mask = _additive(attn_mask, query.dtype) if attn_mask is not None else None
    output, _ = aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=mask, scale=scale
    )
    return output


class FlashOnMeta(MetaConstants):
    """The dry run's step: SDPA as the flash kernel, constants (`torch.tensor(..., device=meta)`)
    with their values known."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            output = flash_on_meta(*args, **kwargs)
            if output is not None:
                return output
        return super().__torch_function__(func, types, args, kwargs)
