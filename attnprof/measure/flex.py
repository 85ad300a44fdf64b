"""The flex backend: SDPA calls run as compiled `flex_attention` with the block mask of their mask.

`FlexSdpa` is a torch-function mode: inside it, every `F.scaled_dot_product_attention` call is
answered by `flex_attention` (compiled once per process) computing the same attention. Masks:
`is_causal` (top-left diagonal, as SDPA defines it) becomes the causal block mask; a boolean or
0/-inf mask that is a causal band (a sliding window) becomes the causal or sliding-window block
mask, so the blocks it masks are skipped; any other boolean mask becomes the block mask of its
pairs, and a float mask is added to the scores by a score_mod. `attention_scope` is the one
place that turns a backend name into the scope that runs it (SDPA kernels through
`backends.kernel_scope`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from attnprof import backends
from attnprof.errors import UsageError
from attnprof.measure.attention_ops import SdpaCall

FLEX = "flex"
ScopeFactory = Callable[[], contextlib.AbstractContextManager[Any]]


def causal_mask(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Key kv is visible to query q when it is not after it (top-left diagonal, SDPA's is_causal)."""
    return q >= kv


@functools.cache
def window_mask(window: int) -> Callable[..., torch.Tensor]:
    """Causal attention to the last `window` keys (the query's own included). One function per
    window, so the compiled flex_attention meets the same mask_mod again and does not recompile."""

    def mask(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (q >= kv) & (q - kv < window)

    return mask


@functools.cache
def compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """flex_attention compiled once per process (eager flex_attention runs a slow dense path)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


@functools.lru_cache(maxsize=64)
def structured_block_mask(window: int | None, q_len: int, kv_len: int, device: torch.device) -> Any:
    """The causal (window None) or sliding-window block mask, shared by every batch and head."""
    from torch.nn.attention.flex_attention import create_block_mask

    mask_mod = causal_mask if window is None else window_mask(window)
    return create_block_mask(mask_mod, None, None, q_len, kv_len, device=device)


def causal_band(keep: torch.Tensor) -> tuple[bool, int | None] | None:
    """(True, window) when the (q_len, kv_len) keep-matrix is top-left causal attention limited to
    the last `window` keys (None: no limit); None when it is another mask."""
    q_len, kv_len = keep.shape
    rows = torch.arange(q_len, device=keep.device)[:, None]
    cols = torch.arange(kv_len, device=keep.device)[None, :]
    causal = rows >= cols
    if not bool((keep <= causal).all()) or q_len == 0:
        return None
    window = int(keep.sum(dim=-1).max())
    if torch.equal(keep, causal):
        return True, None
    if torch.equal(keep, causal & (rows - cols < window)):
        return True, window
    return None


def _keep_matrix(mask: torch.Tensor) -> torch.Tensor | None:
    """A mask that is the same for every batch and head, as a (q_len, kv_len) boolean matrix of
    the pairs it keeps; None when it varies over batch or heads or adds other values than 0/-inf."""
    if mask.dtype == torch.bool:
        keep = mask
    elif bool(((mask == 0) | (mask == float("-inf"))).all()):
        keep = mask == 0
    else:
        return None
    flat = keep.reshape(-1, *keep.shape[-2:])
    return flat[0] if bool((flat == flat[0]).all()) else None


def sdpa_as_flex(call: SdpaCall) -> torch.Tensor:
    """What F.scaled_dot_product_attention computes, computed by flex_attention."""
    query, key, value, attn_mask = call.query, call.key, call.value, call.attn_mask
    if call.dropout_p:
        raise UsageError(f"--backend flex: flex_attention has no dropout (an SDPA call asks for p={call.dropout_p})")
    if query.dim() != 4:
        raise UsageError(f"--backend flex: flex needs (batch, heads, seq, dim) inputs, not {query.dim()} dims")
    batch, heads, q_len, _ = query.shape
    kv_len = key.shape[-2]
    block_mask = score_mod = None
    if call.is_causal:
        block_mask = structured_block_mask(None, q_len, kv_len, query.device)
    elif attn_mask is not None:
        keep = _keep_matrix(attn_mask)
        band = causal_band(keep) if keep is not None and keep.shape == (q_len, kv_len) else None
        if band is not None:
            block_mask = structured_block_mask(band[1], q_len, kv_len, query.device)
        else:
            block_mask, score_mod = _mask_as_mods(attn_mask, batch, heads, q_len, kv_len)
    return compiled_flex_attention()(
        query, key, value, score_mod=score_mod, block_mask=block_mask, scale=call.scale,
        enable_gqa=call.enable_gqa or key.shape[-3] != heads,
    )


def _mask_as_mods(mask: torch.Tensor, batch: int, heads: int, q_len: int, kv_len: int) -> tuple[Any, Any]:
    """Any other SDPA mask: a boolean one as the block mask of the pairs it keeps (so its FLOPs
    count those pairs), a float one added to the scores. The mask is materialised: a mask_mod
    reading a broadcast (stride-0) tensor fails inductor's CPU C++ codegen in torch 2.13
    ("cur_qSplitSize5 was not declared")."""
    from torch.nn.attention.flex_attention import create_block_mask

    full = mask.expand(batch, heads, q_len, kv_len).contiguous()
    if mask.dtype == torch.bool:

        def keep(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return full[b, h, q, kv]

        return create_block_mask(keep, batch, heads, q_len, kv_len, device=mask.device), None

    def add_bias(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> Any:
        return score + full[b, h, q, kv]

    return None, add_bias


class FlexSdpa(TorchFunctionMode):
    """Inside it, scaled_dot_product_attention runs as flex_attention (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.scaled_dot_product_attention:
            return sdpa_as_flex(SdpaCall(*args, **(kwargs or {})))
        return func(*args, **(kwargs or {}))


def attention_scope(name: str) -> ScopeFactory:
    """A factory of the context managers that run attention with backend `name`: an SDPA kernel
    forced, SDPA calls run as flex_attention, or nothing (auto; eager, which is transformers'
    implementation switch, made where the model is built)."""
    if name == FLEX:
        return FlexSdpa
    return backends.kernel_scope(name)
