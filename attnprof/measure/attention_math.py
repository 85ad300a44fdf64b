"""Exact attention arithmetic: which (query, key) pairs a mask keeps, and the FLOPs they cost.

docs/architecture.md ("Definitions"): useful attention FLOPs are 2·(head_dim + value_dim) per unmasked
(query, key) pair — 4·head_dim when the value width equals the key width — summed over batch
and query heads; dense FLOPs count every pair; backward is 2.5× forward.

Everything here is a plain function of shapes and mask tensors. Masks are never expanded to
the full (batch, heads, q_len, kv_len) size: broadcast and stride-0 dimensions are counted by
multiplication, so a mask costs one pass over the elements it really holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnprof.measure.records import AttentionInfo

# An additive mask value at or below this hides its key: softmax weights exp(-1e4) ≈ 0 in
# every float dtype, and the values used in practice (-inf, finfo.min, -1e4, -1e9) all qualify.
MASKED_AT_OR_BELOW = -1.0e4

# Backward attention costs 2.5x forward: the FlashAttention benchmark convention.
BACKWARD_NUMERATOR, BACKWARD_DENOMINATOR = 5, 2


@dataclass(frozen=True)
class AttentionShape:
    """Sizes of one attention call; heads are query heads, kv heads may be fewer (GQA/MQA)."""

    batch: int
    num_heads: int
    num_kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    value_dim: int

    @property
    def dense_pairs(self) -> int:
        return self.batch * self.num_heads * self.q_len * self.kv_len


@dataclass(frozen=True)
class CausalSpec:
    """A causal (optionally sliding-window) mask given by parameters rather than a tensor.

    Key j is visible to query i when i + offset - window < j <= i + offset. `offset` is 0 for a
    top-left aligned diagonal (SDPA's `is_causal` on CPU and the math path) and kv_len - q_len
    for a bottom-right one (the CUDA flash kernel, KV-cache decoding).
    """

    offset: int = 0
    window: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 1:
            raise ValueError(f"a sliding window must hold at least one key, got {self.window}")


def bottom_right(q_len: int, kv_len: int, window: int | None = None) -> CausalSpec:
    """The diagonal that lets the last query see the last key (KV-cache decoding, CUDA flash)."""
    return CausalSpec(offset=kv_len - q_len, window=window)


def _sum_clamped(first: int, last: int, upper: int) -> int:
    """sum(min(max(x, 0), upper) for x in range(first, last + 1)), in O(1)."""
    if last < first:
        return 0
    total = 0
    lo, hi = max(first, 0), min(last, upper)
    if lo <= hi:
        total += (lo + hi) * (hi - lo + 1) // 2
    above = max(first, upper + 1)
    if above <= last:
        total += upper * (last - above + 1)
    return total


def causal_pairs(q_len: int, kv_len: int, spec: CausalSpec) -> int:
    """Visible (query, key) pairs of one (batch, head) slice under a causal/window spec.

    Row i sees clamp(i + offset + 1, 0, kv_len) keys at or before its diagonal, minus the
    clamp(i + offset - window + 1, 0, kv_len) that fell out of the window.
    """
    seen = _sum_clamped(spec.offset + 1, spec.offset + q_len, kv_len)
    if spec.window is None:
        return seen
    dropped = _sum_clamped(spec.offset - spec.window + 1, spec.offset - spec.window + q_len, kv_len)
    return seen - dropped


def causal_keep(
    q_len: int, kv_len: int, spec: CausalSpec, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The boolean (q_len, kv_len) matrix of a causal spec: True where the pair takes part."""
    rows = torch.arange(q_len, device=device).unsqueeze(1) + spec.offset
    cols = torch.arange(kv_len, device=device).unsqueeze(0)
    keep = cols <= rows
    if spec.window is not None:
        keep &= cols > rows - spec.window
    return keep


def keep_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """SDPA mask semantics: a boolean mask keeps True; an additive one keeps values above the cut."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        return mask > MASKED_AT_OR_BELOW
    raise ValueError(f"an attention mask must be boolean or floating point, got {mask.dtype}")


def _compact(keep: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Drop stride-0 (expanded) dimensions, returning the slice and how many times it repeats."""
    repeats = 1
    for dim in range(keep.dim()):
        if keep.size(dim) > 1 and keep.stride(dim) == 0:
            repeats *= keep.size(dim)
            keep = keep.narrow(dim, 0, 1)
    return keep, repeats


def _broadcast_factor(mask_shape: tuple[int, ...], target: tuple[int, ...]) -> int:
    """How many times a mask of `mask_shape` repeats when broadcast to `target`."""
    if len(mask_shape) > len(target):
        raise ValueError(f"mask of shape {list(mask_shape)} has more dimensions than {list(target)}")
    padded = (1,) * (len(target) - len(mask_shape)) + tuple(mask_shape)
    factor = 1
    for have, want in zip(padded, target, strict=True):
        if have == want:
            continue
        if have != 1:
            raise ValueError(f"mask of shape {list(mask_shape)} does not broadcast to {list(target)}")
        factor *= want
    return factor


def combine_keeps(keeps: list[torch.Tensor]) -> torch.Tensor:
    """Pairs kept by every mask (logical and, with broadcasting over compacted slices)."""
    result = _compact(keeps[0])[0]
    for keep in keeps[1:]:
        result = result & _compact(keep)[0]
    return result


@dataclass(frozen=True)
class KeepSummary:
    """What a keep mask means for one attention call."""

    pairs: int  # kept (query, key) pairs over batch and query heads
    window: int | None  # the sliding window it encodes, if any
    causal: bool  # no query sees a key past its diagonal (top-left or bottom-right aligned)


def summarize_keep(keep: torch.Tensor, target: tuple[int, ...]) -> KeepSummary:
    """Summarise `keep` broadcast to `target` (..., q_len, kv_len) without materialising the broadcast.

    One pass gives each row's kept count and first and last kept key; pairs, window and
    causality all follow from those, so a (q_len, kv_len) mask costs a few passes whatever
    the batch and head counts.
    """
    factor = _broadcast_factor(tuple(keep.shape), target)
    compact, repeats = _compact(keep)
    compact = compact.reshape((1,) * max(0, 2 - compact.dim()) + tuple(compact.shape))
    rows = compact.reshape(-1, compact.size(-2), compact.size(-1))
    counts = rows.sum(-1)
    pairs = int(counts.sum()) * repeats * factor
    q_len, kv_len = target[-2:]
    if tuple(rows.shape[-2:]) != (q_len, kv_len):  # rows or keys broadcast: no window, not causal
        return KeepSummary(pairs, None, False)
    positions = torch.arange(kv_len, dtype=torch.int32, device=rows.device)
    first = torch.where(rows, positions, kv_len).amin(-1)
    last = torch.where(rows, positions, -1).amax(-1)
    return KeepSummary(pairs, _window(counts, first, last), _causal(counts, last, q_len, kv_len))


def _window(counts: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> int | None:
    """A window shows as rows whose kept keys form one contiguous run whose start moves down the
    rows; padding and plain causal masks start every row at the same key and give None."""
    has_any = counts > 0
    if not bool(((last - first + 1 == counts) | ~has_any).all()):
        return None  # some row keeps scattered keys: an arbitrary mask, not a window
    lowest = torch.where(has_any, first, first.new_full((), torch.iinfo(torch.int32).max)).amin(-1)
    highest = torch.where(has_any, first, first.new_full((), -1)).amax(-1)
    if not bool((highest > lowest).any()):
        return None
    return int(counts.max())


def _causal(counts: torch.Tensor, last: torch.Tensor, q_len: int, kv_len: int) -> bool:
    """True when, for the top-left or the bottom-right diagonal, some key lies past it and no
    query keeps such a key."""
    if not bool((counts > 0).any()):
        return False
    queries = torch.arange(q_len, device=last.device)
    for offset in sorted({0, kv_len - q_len}):
        diagonal = queries + offset  # the last key query i may see
        if bool((diagonal < kv_len - 1).any()) and bool((last <= diagonal).all()):
            return True
    return False


def useful_flops(pairs: int, head_dim: int, value_dim: int) -> int:
    """2·head_dim for q·k plus 2·value_dim for p·v per kept pair (4·D when value_dim == D)."""
    return 2 * (head_dim + value_dim) * pairs


def backward_flops(forward_flops: int) -> int:
    """2.5x forward; forward attention FLOPs are always even, so this is an exact integer."""
    return forward_flops * BACKWARD_NUMERATOR // BACKWARD_DENOMINATOR


def count_pairs(
    shape: AttentionShape,
    causal: CausalSpec | None = None,
    masks: tuple[torch.Tensor, ...] = (),
) -> KeepSummary:
    """Kept pairs over batch and query heads, the sliding window in force and causality.

    `masks` are boolean "keep" masks or SDPA-style additive masks, each broadcastable to
    (batch, num_heads, q_len, kv_len); a pair counts when the causal spec and every mask keep it.
    """
    target = (shape.batch, shape.num_heads, shape.q_len, shape.kv_len)
    keeps = [keep_from_mask(mask) for mask in masks]
    if not keeps:
        if causal is None:
            return KeepSummary(shape.dense_pairs, None, False)
        per_slice = causal_pairs(shape.q_len, shape.kv_len, causal)
        window = causal.window if causal.window is not None and causal.window < shape.kv_len else None
        return KeepSummary(per_slice * shape.batch * shape.num_heads, window, True)
    if causal is not None:
        keeps.append(causal_keep(shape.q_len, shape.kv_len, causal, device=keeps[0].device))
    summary = summarize_keep(combine_keeps(keeps), target)
    return KeepSummary(summary.pairs, summary.window, summary.causal or causal is not None)


def attention_info(
    shape: AttentionShape,
    backend: str,
    causal: CausalSpec | None = None,
    masks: tuple[torch.Tensor, ...] = (),
) -> AttentionInfo:
    """The AttentionInfo record of one forward attention call."""
    summary = count_pairs(shape, causal, masks)
    return AttentionInfo(
        num_heads=shape.num_heads,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        q_len=shape.q_len,
        kv_len=shape.kv_len,
        causal=summary.causal,
        window=summary.window,
        backend=backend,
        flops=useful_flops(summary.pairs, shape.head_dim, shape.value_dim),
        flops_dense=useful_flops(shape.dense_pairs, shape.head_dim, shape.value_dim),
        batch_size=shape.batch,
    )
