"""FLOP formulas of aten ops: one registry, looked up by the counter (accounting.CostCounter).

What a FLOP is here (docs/architecture.md, "Definitions"): the multiply-adds of matrix
products and convolutions, 2 FLOPs each — the convention of torch.utils.flop_counter and of
every published model FLOP count. Elementwise work, reductions, normalisation, softmax and data
movement are bytes, not FLOPs. Attention is owned by attention_ops.py / attention_tracking.py
(mask-aware), never by this table: torch's SDPA formulas count the dense square.

torch's own registry is reused where it counts exactly this (mm, addmm, bmm, baddbmm,
_scaled_mm). attnprof owns the rest: convolutions (torch's forward formula is right, but its
convolution_backward counts the weight gradient of a grouped convolution `groups` times over),
grouped expert matmuls (`_grouped_mm`, which torch has no formula for), matrix-vector products.

Ops with no formula fall in two classes, so that a profile can say what it could not count:
  - arithmetic-free (`is_flop_free`): views, copies, indexing, factories, pointwise ops,
    reductions, normalisation, softmax, sorting, pooling — legitimately 0 FLOPs;
  - uncounted: everything else (an FFT, a linear solve, a library's custom kernel, a matmul
    variant nobody registered). Their time share is reported as `totals.uncounted_ops`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import flop_counter

from attnprof.measure.attention_ops import FLEX_BACKWARD, FLEX_FORWARD, FUSED_LAYERS, SDPA_KERNELS, bind

aten = torch.ops.aten

# (args, kwargs, out) -> FLOPs of one call
Formula = Callable[[tuple[Any, ...], dict[str, Any], Any], int]
# Keyed by qualified op name ("aten::mm"), so a library's custom ops can be registered without
# importing the library.
FORMULAS: dict[str, Formula] = {}


def op_name(func: Any) -> str:
    """'aten::mm' for aten.mm.default: the overload packet's qualified name ('higher_order::flex_attention'
    for a higher-order op)."""
    packet = getattr(func, "overloadpacket", None)
    return f"higher_order::{func.name()}" if packet is None else packet._qualified_op_name


def register(*names: str) -> Callable[[Formula], Formula]:
    def add(formula: Formula) -> Formula:
        for name in names:
            FORMULAS[name] = formula
        return formula

    return add


def op_flops(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int | None:
    """The FLOPs of one op call, or None when no formula knows the op."""
    formula = FORMULAS.get(op_name(func))
    return None if formula is None else formula(args, kwargs, out)


def _from_torch(packet: Any) -> Formula:
    torch_formula = flop_counter.flop_registry[packet]

    def formula(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
        return int(torch_formula(*args, out_val=out, **kwargs))

    return formula


for _packet in (aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten._scaled_mm):
    FORMULAS[_packet._qualified_op_name] = _from_torch(_packet)
# The same products under other names: an activation fused into addmm, int8 matmul.
FORMULAS["aten::_addmm_activation"] = FORMULAS["aten::addmm"]
FORMULAS["aten::_int_mm"] = FORMULAS["aten::mm"]


@register("aten::addbmm")
def _addbmm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    (b, m, k), n = args[1].shape, args[2].shape[-1]
    return 2 * b * m * k * n


@register("aten::mv")
def _mv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return 2 * args[0].numel()


@register("aten::addmv")
def _addmv(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return 2 * args[1].numel()


@register("aten::dot", "aten::vdot")
def _dot(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return 2 * args[0].numel()


@register("aten::addr")
def _addr(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    # A rank-1 update: one multiply-add per output element.
    return 2 * args[1].numel() * args[2].numel()


@register("aten::_weight_int8pack_mm")
def _int8pack_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    (m, k), n = args[0].shape, args[1].shape[0]  # weight is (N, K)
    return 2 * m * k * n


# --- convolutions -------------------------------------------------------------------------


def _conv_products(x: torch.Tensor, weight: torch.Tensor, y_shape: Any, transposed: bool) -> int:
    """Multiply-adds of one convolution, ×2. Each output element of a convolution is a dot
    product over (in_channels / groups) · kernel elements — weight.shape[1:]; a transposed
    convolution scatters each *input* element over (out_channels / groups) · kernel outputs."""
    per_element = math.prod(weight.shape[1:])
    elements = math.prod(x.shape) if transposed else math.prod(y_shape)
    return 2 * elements * per_element


@register("aten::convolution", "aten::_convolution", "aten::convolution_overrideable")
def _convolution(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    transposed = bool(args[6]) if len(args) > 6 else bool(kwargs.get("transposed", False))
    return _conv_products(args[0], args[1], out.shape, transposed)


@register("aten::convolution_backward", "aten::convolution_backward_overrideable")
def _convolution_backward(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """The input gradient and the weight gradient each repeat every multiply-add of the forward
    convolution once (grouped or not); the bias gradient is a reduction."""
    func = aten.convolution_backward.default
    bound = bind(func, args, kwargs)
    forward = _conv_products(bound["input"], bound["weight"], bound["grad_output"].shape, bool(bound["transposed"]))
    mask = bound["output_mask"]
    return forward * (int(bool(mask[0])) + int(bool(mask[1])))


# --- grouped (expert) matmuls -------------------------------------------------------------


def _grouped_extent(offs: Any, full: int) -> int:
    """How much of the grouped dimension the groups cover: the last offset (groups end there;
    rows after it are not computed), or the whole dimension when the offsets are not readable
    here (meta tensors: routing depends on data a dry run does not have)."""
    if not isinstance(offs, torch.Tensor) or offs.numel() == 0 or offs.device.type == "meta":
        return full
    return int(offs[-1])


@register("aten::_grouped_mm", "aten::_scaled_grouped_mm")
def _grouped_mm(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """torch._grouped_mm(a, b, offs): 2-D operands are split into groups along one dimension by
    the cumulative offsets, 3-D ones carry one matrix per group.
      a (M, K) × b (G, K, N): rows of a by group (MoE experts)  → 2·rows·K·N
      a (G, M, K) × b (K, N): columns of b by group             → 2·M·K·cols
      a (M, K) × b (K, N): the contraction split (weight grads) → 2·M·k·N
      a (G, M, K) × b (G, K, N): a batched matmul               → 2·G·M·K·N
    """
    a, b = args[0], args[1]
    offs = args[2] if len(args) > 2 else kwargs.get("offs")
    if a.dim() == 2 and b.dim() == 3:
        return 2 * _grouped_extent(offs, a.shape[0]) * a.shape[1] * b.shape[2]
    if a.dim() == 3 and b.dim() == 2:
        return 2 * a.shape[1] * a.shape[2] * _grouped_extent(offs, b.shape[1])
    if a.dim() == 2 and b.dim() == 2:
        return 2 * a.shape[0] * _grouped_extent(offs, a.shape[1]) * b.shape[1]
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


@register("transformers::grouped_mm_fallback")
def _grouped_mm_fallback(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """transformers' expert loop behind one custom op: input (S, K) × weight (G, K, N)."""
    return _grouped_mm(args[:3], {}, out)


@register("transformers::grouped_mm_fallback_backward")
def _grouped_mm_fallback_backward(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """Input and weight gradients: each repeats the forward's multiply-adds."""
    return 2 * _grouped_mm(args[:3], {}, out)


# --- ops with no FLOPs by definition ------------------------------------------------------

_FLOP_FREE_TAGS = (torch.Tag.pointwise, torch.Tag.reduction, torch.Tag.nondeterministic_seeded,
                   torch.Tag.view_copy, torch.Tag.inplace_view)

# Untagged ops that move, index, build, normalise, sort or pool data without products.
_FLOP_FREE_NAMES = frozenset(f"aten::{name}" for name in (
    # copies, layout, factories
    "_to_copy", "copy_", "clone", "contiguous", "cat", "stack", "split", "split_with_sizes", "chunk",
    "unbind", "slice_backward", "select_backward", "as_strided_scatter", "slice_scatter", "select_scatter",
    "constant_pad_nd", "repeat", "repeat_interleave", "roll", "flip", "tril", "triu", "tril_", "triu_",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "ones",
    "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full", "arange", "linspace", "eye",
    "scalar_tensor", "fill_", "zero_", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "set_", "resize_",
    "_unsafe_view", "_pin_memory", "detach_", "alias", "_assert_async", "_assert_tensor_metadata",
    # indexing
    "index", "index_put", "index_put_", "_index_put_impl_", "index_select", "index_add", "index_add_",
    "index_copy", "index_copy_", "index_fill", "index_fill_", "gather", "scatter", "scatter_", "scatter_add",
    "scatter_add_", "scatter_reduce", "scatter_reduce_", "masked_scatter", "masked_scatter_", "masked_select",
    "nonzero", "embedding", "embedding_dense_backward", "embedding_backward", "_embedding_bag",
    "_embedding_bag_backward", "one_hot",
    # sorting, scans, counting
    "sort", "topk", "argsort", "cumsum", "cumsum_", "cumprod", "histc", "bincount", "searchsorted",
    "bucketize", "unique_consecutive", "_unique2", "unique_dim", "kthvalue", "median", "mode",
    # comparisons and integer arithmetic without a pointwise tag
    "eq", "ne", "lt", "le", "gt", "ge", "isin", "floor_divide", "floor_divide_", "remainder", "remainder_", "fmod",
    "rsub", "complex", "polar",
    # normalisation, softmax, losses, dropout
    "_softmax", "_log_softmax", "_safe_softmax", "_softmax_backward_data", "_log_softmax_backward_data",
    "native_layer_norm", "native_layer_norm_backward", "native_group_norm", "native_group_norm_backward",
    "native_batch_norm", "native_batch_norm_backward", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional", "_fused_rms_norm",
    "_fused_rms_norm_backward", "native_dropout", "native_dropout_backward", "nll_loss_forward",
    "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward", "_weight_norm_interface",
    # pooling and resampling
    "avg_pool1d", "avg_pool2d", "avg_pool2d_backward", "avg_pool3d", "max_pool2d_with_indices",
    "max_pool2d_with_indices_backward", "max_pool3d_with_indices", "_adaptive_avg_pool2d",
    "_adaptive_avg_pool2d_backward", "adaptive_max_pool2d", "upsample_nearest1d", "upsample_nearest2d",
    "upsample_linear1d", "upsample_bilinear2d", "upsample_bicubic2d", "_upsample_nearest_exact2d",
    "upsample_nearest2d_backward", "upsample_bilinear2d_backward", "im2col", "col2im", "pixel_shuffle",
))

# Attention ops are counted by attention_ops.py, not by a formula here.
_ATTENTION_NAMES = frozenset(
    [packet._qualified_op_name for packet in (*SDPA_KERNELS, *FUSED_LAYERS)]
    + [f"higher_order::{name}" for name in (FLEX_FORWARD, FLEX_BACKWARD)]
)


def is_flop_free(func: Any) -> bool:
    """True for ops that do no products: views, copies, pointwise, reductions, normalisation ..."""
    if getattr(func, "is_view", False):
        return True
    name = op_name(func)
    if name in _FLOP_FREE_NAMES:
        return True
    return any(tag in getattr(func, "tags", ()) for tag in _FLOP_FREE_TAGS)


def is_counted(func: Any) -> bool:
    """Whether attnprof knows this op's FLOPs: a formula, an attention op, or none by definition."""
    name = op_name(func)
    return name in FORMULAS or name in _ATTENTION_NAMES or is_flop_free(func)


# --- coverage: the time spent in ops no formula counted -----------------------------------


OpCall = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]


@dataclass
class OpTime:
    calls: int = 0
    seconds: float = 0.0


class Coverage:
    """Times every op of the counting step and keeps the uncounted ones by name.

    The counting step runs each op once, unhooked by anything but the counter, so the op's own
    duration (perf_counter around the kernel; on a GPU with a synchronisation on each side) is
    cheap to take there and needs no extra pass. Shares are of the summed op time of that step,
    which leaves out the counter's own Python overhead between ops. A dry run (meta) executes
    nothing: calls are kept, time is not.
    """

    def __init__(self) -> None:
        self.total_seconds = 0.0
        self.timed = True
        self.uncounted: dict[str, OpTime] = {}

    def run(self, call: OpCall, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """`call(func, args, kwargs)`, timed."""
        device = _first_device(args)
        synchronize = device is not None and device.type == "cuda"
        if synchronize:
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        out = call(func, args, kwargs)
        if synchronize:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        if device is not None and device.type == "meta":
            self.timed, seconds = False, 0.0
        self.total_seconds += seconds
        if not is_counted(func):
            entry = self.uncounted.setdefault(op_name(func), OpTime())
            entry.calls += 1
            entry.seconds += seconds
        return out


def _first_device(args: tuple[Any, ...]) -> torch.device | None:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.device
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, torch.Tensor):
                    return item.device
    return None
