"""Attention read from the arguments of the aten ops that compute it in one call.

Covers every SDPA backend op (forward and backward) and the fused ops behind
`nn.MultiheadAttention` / `nn.TransformerEncoderLayer` fast paths. Arguments are bound by the
op's own schema, so positional and keyword calls read the same.

Causal alignment differs between kernels: `is_causal` puts the diagonal at the top-left
(key j visible to query i when j <= i) for the CPU flash kernel, the efficient, cuDNN and
math paths — as the SDPA documentation states — while the CUDA flash kernels align it
bottom-right (torch/nn/attention/bias.py calls `_scaled_dot_product_flash_attention` with
`is_causal=True` to get lower-right causal attention).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from attnprof.measure.attention_math import (
    AttentionShape,
    CausalSpec,
    attention_info,
    bottom_right,
    causal_pairs,
    useful_flops,
)
from attnprof.measure.records import AttentionInfo

aten = torch.ops.aten

ValueOf = Callable[[torch.Tensor], "torch.Tensor | None"]
KvHeadsOf = Callable[[torch.Tensor], "int | None"]


@dataclass
class OpAttention:
    """The attention one op computed; fused layers also report their projection/FFN FLOPs."""

    info: AttentionInfo
    backward: bool = False
    other_flops: int = 0
    exact: bool = True  # False when a mask's values were unknown (meta without a known value)


def bind(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The op's arguments by schema name, defaults filled in."""
    bound: dict[str, Any] = {}
    for position, argument in enumerate(func._schema.arguments):
        if argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        elif position < len(args) and not argument.kwarg_only:
            bound[argument.name] = args[position]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
        else:
            bound[argument.name] = None
    return bound


@dataclass
class SdpaCall:
    """The arguments of one `F.scaled_dot_product_attention` call, as its signature names them:
    `SdpaCall(*args, **kwargs)` binds a call seen by a torch-function mode."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None = None
    dropout_p: float = 0.0
    is_causal: bool = False
    scale: float | None = None
    enable_gqa: bool = False


Causality = Literal["top_left", "bottom_right", "mask_type"]


@dataclass(frozen=True)
class SdpaKernel:
    backend: str
    layout: Literal["bhsd", "bshd"]  # (batch, heads, seq, dim) or (batch, seq, heads, dim)
    causality: Causality
    mask_arg: str | None
    backward: bool


def _kernels(
    backend: str, layout: Any, causality: Causality, mask: str | None, forward: Any, backward: Any
) -> dict[Any, SdpaKernel]:
    """The forward op and its backward share everything but the direction."""
    return {
        forward: SdpaKernel(backend, layout, causality, mask, backward=False),
        backward: SdpaKernel(backend, layout, causality, mask, backward=True),
    }


SDPA_KERNELS: dict[Any, SdpaKernel] = {
    **_kernels(
        "flash", "bhsd", "top_left", "attn_mask",
        aten._scaled_dot_product_flash_attention_for_cpu,
        aten._scaled_dot_product_flash_attention_for_cpu_backward,
    ),
    **_kernels(
        "flash", "bhsd", "bottom_right", None,
        aten._scaled_dot_product_flash_attention,
        aten._scaled_dot_product_flash_attention_backward,
    ),
    **_kernels(
        "flash", "bshd", "bottom_right", None,
        aten._flash_attention_forward,
        aten._flash_attention_backward,
    ),
    **_kernels(
        "efficient", "bhsd", "top_left", "attn_bias",
        aten._scaled_dot_product_efficient_attention,
        aten._scaled_dot_product_efficient_attention_backward,
    ),
    **_kernels(
        "efficient", "bshd", "mask_type", "bias",
        aten._efficient_attention_forward,
        aten._efficient_attention_backward,
    ),
    **_kernels(
        "cudnn", "bhsd", "top_left", "attn_bias",
        aten._scaled_dot_product_cudnn_attention,
        aten._scaled_dot_product_cudnn_attention_backward,
    ),
    **_kernels(
        "overrideable", "bhsd", "top_left", "attn_bias",
        aten._scaled_dot_product_fused_attention_overrideable,
        aten._scaled_dot_product_fused_attention_overrideable_backward,
    ),
}

# _efficient_attention_forward's custom_mask_type (sdp_utils_cpp.h CustomMaskType).
_NO_MASK, _CAUSAL_TOP_LEFT, _CAUSAL_BOTTOM_RIGHT = 0, 1, 2


def _as_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _causal_spec(kernel: SdpaKernel, bound: dict[str, Any], q_len: int, kv_len: int) -> CausalSpec | None:
    if kernel.causality == "mask_type":
        mask_type = int(bound["custom_mask_type"])
        window = _as_int(bound.get("window_size"))
        if mask_type == _CAUSAL_TOP_LEFT:
            return CausalSpec(offset=0, window=window)
        if mask_type == _CAUSAL_BOTTOM_RIGHT:
            return bottom_right(q_len, kv_len, window)
        return None
    if not bound["is_causal"]:
        return None
    left = _as_int(bound.get("window_size_left"))
    # A left window of w keys before the diagonal keeps w + 1 keys per row.
    window = left + 1 if left is not None and left >= 0 else None
    if kernel.causality == "bottom_right":
        return bottom_right(q_len, kv_len, window)
    return CausalSpec(offset=0, window=window)


def _mask(
    bound: dict[str, Any], name: str | None, value_of: ValueOf
) -> tuple[tuple[torch.Tensor, ...], bool]:
    """The kernel's mask as known values, and whether its values were known."""
    mask = bound.get(name) if name else None
    if not isinstance(mask, torch.Tensor):
        return (), True
    known = value_of(mask)
    return ((known,), True) if known is not None else ((), False)


def _sequence_lengths(cumulative: Any, value_of: ValueOf) -> list[int] | None:
    if not isinstance(cumulative, torch.Tensor):
        return None
    known = value_of(cumulative)
    if known is None:
        return None
    return torch.diff(known.to(torch.int64)).tolist()


def sdpa_attention(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], value_of: ValueOf, kv_heads_of: KvHeadsOf
) -> OpAttention | None:
    """Attention of an SDPA kernel call, or None when `func` is not one."""
    kernel = SDPA_KERNELS.get(func.overloadpacket)
    if kernel is None:
        return None
    bound = bind(func, args, kwargs)
    query, key, value = bound["query"], bound["key"], bound["value"]
    if kernel.layout == "bhsd":
        batch = math.prod(query.shape[:-3])
        heads, q_len, head_dim = query.shape[-3:]
        kv_heads, kv_len = key.shape[-3], key.shape[-2]
    else:
        batch, q_len, heads, head_dim = (1, *query.shape) if query.dim() == 3 else query.shape
        kv_len, kv_heads = key.shape[-3], key.shape[-2]
    value_dim = value.shape[-1]
    kv_heads = kv_heads_of(key) or kv_heads
    masks, exact = _mask(bound, kernel.mask_arg, value_of)
    varlen = _varlen_attention(kernel, bound, heads, kv_heads, head_dim, value_dim, value_of)
    if varlen is not None:
        return OpAttention(varlen, backward=kernel.backward)
    shape = AttentionShape(batch, heads, kv_heads, q_len, kv_len, head_dim, value_dim)
    info = attention_info(shape, kernel.backend, _causal_spec(kernel, bound, q_len, kv_len), masks)
    return OpAttention(info, backward=kernel.backward, exact=exact)


def _varlen_attention(
    kernel: SdpaKernel,
    bound: dict[str, Any],
    heads: int,
    kv_heads: int,
    head_dim: int,
    value_dim: int,
    value_of: ValueOf,
) -> AttentionInfo | None:
    """Packed variable-length sequences (cumulative offsets): pairs counted sequence by sequence."""
    q_lengths = _sequence_lengths(bound.get("cum_seq_q", bound.get("cu_seqlens_q")), value_of)
    kv_lengths = _sequence_lengths(bound.get("cum_seq_k", bound.get("cu_seqlens_k")), value_of)
    if q_lengths is None or kv_lengths is None or kernel.layout != "bshd":
        return None
    pairs = dense = 0
    causal = None
    for q_len, kv_len in zip(q_lengths, kv_lengths, strict=True):
        causal = _causal_spec(kernel, bound, q_len, kv_len)
        pairs += causal_pairs(q_len, kv_len, causal) if causal is not None else q_len * kv_len
        dense += q_len * kv_len
    return AttentionInfo(
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        q_len=max(q_lengths, default=0),
        kv_len=max(kv_lengths, default=0),
        causal=causal is not None,
        window=causal.window if causal is not None else None,
        backend=kernel.backend,
        flops=useful_flops(pairs * heads, head_dim, value_dim),
        flops_dense=useful_flops(dense * heads, head_dim, value_dim),
        batch_size=len(q_lengths),
    )


# --- fused transformer ops ----------------------------------------------------------------


def _key_padding_or_attention_mask(
    mask: Any, mask_type: Any, batch: int, value_of: ValueOf
) -> tuple[tuple[torch.Tensor, ...], bool]:
    """The fused ops take a (batch, kv_len) key-padding mask (mask_type 1) or an attention mask."""
    if not isinstance(mask, torch.Tensor):
        return (), True
    known = value_of(mask)
    if known is None:
        return (), False
    if mask_type == 1 or (mask_type is None and known.dim() == 2 and known.size(0) == batch and batch > 1):
        known = known[:, None, None, :]
    if known.dtype == torch.bool:
        known = ~known  # the fused ops' boolean masks mark keys to *ignore*, unlike SDPA's
    return (known,), True


def _lengths(tensor: torch.Tensor) -> list[int]:
    """Per-sequence lengths of a (batch, seq, embed) tensor, nested or dense."""
    if tensor.is_nested:
        return [int(n) for n in tensor._nested_tensor_size()[:, 0].tolist()]
    return [tensor.shape[-2]] * math.prod(tensor.shape[:-2])


def _self_attention(
    lengths_q: list[int],
    lengths_kv: list[int],
    heads: int,
    head_dim: int,
    masks: tuple[torch.Tensor, ...],
    padded_shape: tuple[int, int, int],
) -> AttentionInfo:
    """Bidirectional attention over (possibly nested) sequences with optional masks."""
    batch, q_len, kv_len = padded_shape
    shape = AttentionShape(batch, heads, heads, q_len, kv_len, head_dim, head_dim)
    if masks or (len(set(lengths_q)) <= 1 and len(set(lengths_kv)) <= 1):
        return attention_info(shape, "fused", None, masks)
    pairs = sum(lq * lk for lq, lk in zip(lengths_q, lengths_kv, strict=True)) * heads
    info = attention_info(shape, "fused")
    info.flops = useful_flops(pairs, head_dim, head_dim)
    return info


def native_mha_attention(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], value_of: ValueOf
) -> OpAttention:
    """aten._native_multi_head_attention: in-projections, attention and out-projection in one op."""
    bound = bind(func, args, kwargs)
    query, key = bound["query"], bound["key"]
    embed, heads = int(bound["embed_dim"]), int(bound["num_head"])
    lengths_q, lengths_kv = _lengths(query), _lengths(key)
    batch = len(lengths_q)
    masks, exact = _key_padding_or_attention_mask(bound["mask"], bound["mask_type"], batch, value_of)
    padded = (batch, max(lengths_q), max(lengths_kv))
    info = _self_attention(lengths_q, lengths_kv, heads, embed // heads, masks, padded)
    tokens_q, tokens_kv = sum(lengths_q), sum(lengths_kv)
    # q from the query tokens, k and v from the key/value tokens, out-projection on the query tokens
    projections = 2 * embed * embed * (tokens_q + 2 * tokens_kv + tokens_q)
    return OpAttention(info, other_flops=projections, exact=exact)


def encoder_layer_attention(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], value_of: ValueOf
) -> OpAttention:
    """aten._transformer_encoder_layer_fwd: nn.TransformerEncoderLayer's eval fast path."""
    bound = bind(func, args, kwargs)
    src = bound["src"]
    embed, heads = int(bound["embed_dim"]), int(bound["num_heads"])
    ffn = int(bound["ffn_weight_1"].shape[0])
    lengths = _lengths(src)
    batch = len(lengths)
    masks, exact = _key_padding_or_attention_mask(bound["mask"], bound["mask_type"], batch, value_of)
    padded = (batch, max(lengths), max(lengths))
    info = _self_attention(lengths, lengths, heads, embed // heads, masks, padded)
    tokens = sum(lengths)
    # qkv in-projection E -> 3E, out-projection E -> E, feed-forward E -> F -> E
    other = 2 * tokens * embed * (3 * embed + embed + 2 * ffn)
    return OpAttention(info, other_flops=other, exact=exact)


FUSED_LAYERS: dict[Any, Callable[..., OpAttention]] = {
    aten._native_multi_head_attention: native_mha_attention,
    aten._transformer_encoder_layer_fwd: encoder_layer_attention,
}


# --- flex attention (a higher-order op) ---------------------------------------------------

FLEX_FORWARD, FLEX_BACKWARD = "flex_attention", "flex_attention_backward"


def flex_keep(block_mask: tuple[Any, ...], mask_buffers: tuple[Any, ...], shape: AttentionShape) -> torch.Tensor:
    """The (batch, heads, q_len, kv_len) pairs a flex BlockMask's mask_mod keeps, evaluated as
    flex attention's own dense path evaluates it (vmapped over the four index ranges)."""
    from torch._dynamo._trace_wrapped_higher_order_op import TransformGetItemToIndex
    from torch.nn.attention.flex_attention import _vmap_for_bhqkv

    mask_mod = _vmap_for_bhqkv(block_mask[-1], prefix=(), suffix=(None,) * len(mask_buffers))
    device = next((t.device for t in mask_buffers if isinstance(t, torch.Tensor)), torch.device("cpu"))
    ranges = [torch.arange(size, device=device)
              for size in (shape.batch, shape.num_heads, shape.q_len, shape.kv_len)]
    with TransformGetItemToIndex():
        return mask_mod(*ranges, *mask_buffers).to(torch.bool).expand(
            shape.batch, shape.num_heads, shape.q_len, shape.kv_len)


def flex_attention(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> OpAttention | None:
    """Attention of a flex_attention (or its backward) call, or None for other higher-order ops.

    Arguments as the op takes them: (query, key, value, score_mod, block_mask, scale,
    kernel_options, score_mod_other_buffers, mask_mod_other_buffers) forward, and (query, key,
    value, out, logsumexp, grad_out, grad_logsumexp, fw_graph, joint_graph, block_mask, scale,
    kernel_options, score_mod_other_buffers, mask_mod_other_buffers) backward."""
    name = func.name()
    if name not in (FLEX_FORWARD, FLEX_BACKWARD):
        return None
    query, key, value = args[:3]
    backward = name == FLEX_BACKWARD
    block_mask = args[9] if backward else args[4]
    buffers = args[13] if backward else (args[8] if len(args) > 8 else ())
    batch, heads, q_len, head_dim = query.shape
    shape = AttentionShape(batch, heads, key.shape[1], q_len, key.shape[2], head_dim, value.shape[-1])
    exact = query.device.type != "meta"
    masks = (flex_keep(block_mask, tuple(buffers), shape),) if exact else ()
    return OpAttention(attention_info(shape, "flex", None, masks), backward=backward, exact=exact)


@contextlib.contextmanager
def flex_attention_uncompiled() -> Iterator[None]:
    """Eager flex_attention wraps its op in torch.compile(fullgraph=True) (and transformers compiles
    it again), which cannot run under a dispatch mode such as the counter: while counting, every
    torch.compile runs its function eagerly, so the op reaches the counter as itself."""
    with torch.compiler.set_stance("force_eager"):
        yield
