"""Attention written by hand, found by following tensors through the ops that build it.

Any code that computes softmax(q·kᵀ + mask)·v — transformers' eager attention, GPT-style
blocks with `masked_fill(-inf)`, SDPA's math fallback, einsum variants — reaches the
dispatcher as: a batched matmul, then scale / mask ops, a softmax over the last dimension,
maybe dropout, and a second batched matmul that contracts the key dimension. The tracker tags
the output of every batched matmul as candidate scores, carries the tag (and every mask
applied to it) through views, casts, scaling, masking, softmax and dropout, and recognises
the second matmul. Any other elementwise op on the scores between the two matmuls carries
the tag too (a tanh soft-cap, a temperature, a multiplicative mask): what matters is that one
tagged tensor flows from QKᵀ into a softmax over keys and on into ·V. The first matmul was
counted as a plain matmul when it ran; the tracker tells the counter to take those FLOPs back,
so nothing is counted twice.

It also remembers K/V tensors repeated for grouped-query attention (an `expand` of a 5-D
(batch, kv_heads, 1, seq, dim) tensor, as `repeat_kv` and `enable_gqa` do) so the kv head
count survives the repeat, and the tensors of each found attention so the backward matmuls
of the math path are folded into the 2.5x-forward convention. Only the four backward products
of an attention's own two matmuls are folded — recognised by their sizes — so another product
that shares the query (DeBERTa's relative-position scores) keeps its backward FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

from attnprof.measure.attention_math import (
    MASKED_AT_OR_BELOW,
    AttentionShape,
    attention_info,
    backward_flops,
    keep_from_mask,
)
from attnprof.measure.attention_ops import ValueOf
from attnprof.measure.records import AttentionInfo

aten = torch.ops.aten

# Ops that move or re-type a tensor without changing what it means.
_PASS_THROUGH = {
    aten.view,
    aten._unsafe_view,
    aten.reshape,
    aten._reshape_alias,
    aten.expand,
    aten.clone,
    aten.contiguous,
    aten.detach,
    aten.alias,
    aten._to_copy,
    aten.to,
    aten.lift_fresh,
    aten.transpose,
    aten.t,
    aten.permute,
    aten.unsqueeze,
    aten.squeeze,
}
_SCALE = {aten.mul, aten.mul_, aten.div, aten.div_}
_ADD = {aten.add, aten.add_}
_SUB = {aten.sub, aten.sub_}
_MASKED_FILL = {aten.masked_fill, aten.masked_fill_}
_SOFTMAX = {aten._softmax, aten._safe_softmax, aten.softmax}
_MATMUL = {aten.bmm, aten.baddbmm}

Site = tuple[str, str]  # (module path, phase) where FLOPs were booked


@dataclass
class _Scores:
    """A (query, key) score tensor between the first matmul and the second."""

    shape: tuple[int, ...]
    head_dim: int
    first_matmul: tuple[Site, int]  # where its plain-matmul FLOPs were booked, and how many
    operands: tuple[torch.Tensor, torch.Tensor]
    split: tuple[int, int] | None = None  # (batch, heads) when the operands were flattened 4-D tensors
    kv_heads: int | None = None
    keeps: list[torch.Tensor] = field(default_factory=list)  # boolean "keep" masks, broadcastable
    softmax: str | None = None  # the softmax op seen: _safe_softmax means SDPA's math path
    exact: bool = True


# The backward of the two attention matmuls is four batched products: dS·K and Qᵀ·dS (or
# dSᵀ·Q) for the scores, dO·Vᵀ and Pᵀ·dO for the output.
_BACKWARD_PRODUCTS = 4


@dataclass
class _Found:
    """A recognised attention; its backward is booked once, at the first backward matmul.

    `products` are the (batch, sorted (m, k, n)) sizes of its two forward matmuls: each
    backward product of those matmuls has the same sizes in some order."""

    backward_flops: int
    products: frozenset[tuple[int, tuple[int, ...]]]
    remaining: int = _BACKWARD_PRODUCTS
    backward_booked: bool = False


@dataclass
class TrackerVerdict:
    """What the counter should do with the op it just booked."""

    attention: AttentionInfo | None = None  # a forward attention completed by this op
    absorb: bool = False  # this op's FLOPs are attention FLOPs, not plain matmul FLOPs
    release: tuple[Site, int] | None = None  # earlier plain-matmul FLOPs to take back
    backward_flops: int = 0  # attention backward FLOPs to book now
    exact: bool = True


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def _reshape_keep(keep: torch.Tensor, old: tuple[int, ...], new: tuple[int, ...]) -> torch.Tensor:
    """Carry a keep mask (broadcastable to scores of shape `old`) to a view of shape `new` with
    the same last two sizes and the same number of (query, key) slices."""
    if old == new:
        return keep
    keep = keep.reshape((1,) * (len(old) - keep.dim()) + tuple(keep.shape))
    if all(size == 1 for size in keep.shape[:-2]):
        return keep.reshape((1,) * (len(new) - 2) + tuple(keep.shape[-2:]))
    return keep.expand(*old[:-2], *keep.shape[-2:]).reshape(*new[:-2], *keep.shape[-2:])


def _product(left: torch.Tensor, right: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """A batched matmul's batch and its (m, k, n) sizes in sorted order."""
    return left.size(0), tuple(sorted((left.size(-2), left.size(-1), right.size(-1))))


def _significant(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(size for size in shape if size != 1)


def _follows(scores: _Scores, out: Any) -> _Scores | None:
    """The scores as `out` carries them (a view, cast, copy or scaling of them), or None.

    Views may add, drop or move size-1 dimensions (einsum does) and flatten or split the
    leading ones; the (q_len, kv_len) sizes must stay last. Masks stay relative to one
    canonical shape, which becomes the first 4-D (batch, heads, q_len, kv_len) view seen.
    """
    if not _is_tensor(out) or out.numel() != math.prod(scores.shape):
        return None
    tail = _significant(scores.shape[-2:])
    if tail and _significant(tuple(out.shape))[-len(tail):] != tail:
        return None
    new_shape = tuple(out.shape)
    if len(new_shape) == 4 and len(scores.shape) != 4 and new_shape[-2:] == scores.shape[-2:]:
        keeps = [_reshape_keep(keep, scores.shape, new_shape) for keep in scores.keeps]
        return replace(scores, shape=new_shape, keeps=keeps)
    return scores


class AttentionTracker:
    def __init__(self, value_of: ValueOf) -> None:
        self._value_of = value_of
        self._scores: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._kv_heads: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._splits: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self._found: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def kv_heads_of(self, tensor: torch.Tensor) -> int | None:
        return self._kv_heads.get(tensor)

    def observe(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, site: Site, flops: int
    ) -> TrackerVerdict:
        packet = func.overloadpacket
        backward = site[1] == "backward"
        if packet in _MATMUL:
            return self._matmul(packet, args, out, site, flops, backward)
        if packet is aten._softmax_backward_data:
            self._carry(self._found, args[1], out)
        elif packet is aten.native_dropout:
            self._pass(args[0], out[0])
        elif packet in _PASS_THROUGH or (packet in _SCALE and not self._is_scores(args[1])):
            self._pass(args[0], out)
            if packet is aten.expand:
                self._note_repeat(args[0], out)
            self._note_split(args[0], out)
        elif not backward and packet in _SOFTMAX:
            self._softmax(packet, args, out)
        elif not backward and packet in _ADD | _SUB:
            self._additive(packet, args, kwargs, out)
        elif not backward and packet in _MASKED_FILL:
            self._masked_fill(args, out)
        elif not backward and packet is aten.where and len(args) == 3:
            self._where(args, out)
        elif not backward and torch.Tag.pointwise in func.tags:
            self._pointwise(args, out)
        return TrackerVerdict()

    # --- tags carried along ---------------------------------------------------------------

    def _is_scores(self, value: Any) -> bool:
        return _is_tensor(value) and value in self._scores

    @staticmethod
    def _carry(tags: WeakTensorKeyDictionary, source: Any, out: Any) -> None:
        if _is_tensor(source) and _is_tensor(out) and source in tags:
            tags[out] = tags[source]

    def _pass(self, source: Any, out: Any) -> None:
        if not (_is_tensor(source) and _is_tensor(out)):
            return
        self._carry(self._kv_heads, source, out)
        self._carry(self._found, source, out)
        if source in self._splits and out.dim() == 3:
            self._splits[out] = self._splits[source]
        scores = self._scores.get(source)
        if scores is not None:
            followed = _follows(scores, out)
            if followed is not None:
                self._scores[out] = followed

    def _pointwise(self, args: tuple[Any, ...], out: Any) -> None:
        """Soft-caps (tanh), scales, multiplicative masks: the scores go on, their pairs unchanged."""
        tagged = [value for value in args if self._is_scores(value)]
        if len(tagged) == 1:
            self._pass(tagged[0], out)

    def _note_repeat(self, source: torch.Tensor, out: torch.Tensor) -> None:
        # repeat_kv: (batch, kv_heads, 1, seq, dim) expanded to (batch, kv_heads, n_rep, seq, dim)
        if source.dim() == 5 and source.size(2) == 1 and out.size(2) > 1:
            self._kv_heads[out] = source.size(1)

    def _note_split(self, source: Any, out: Any) -> None:
        if not (_is_tensor(source) and _is_tensor(out)) or source.dim() != 4 or out.dim() != 3:
            return
        batch, heads = source.shape[:2]
        if out.size(0) == batch * heads and tuple(out.shape[1:]) == tuple(source.shape[2:]):
            self._splits[out] = (batch, heads)

    # --- masks ----------------------------------------------------------------------------

    def _add_keep(self, scores: _Scores, out: Any, term: torch.Tensor | None) -> None:
        """Tag `out` as the scores with one more mask (None: the mask's values are unknown)."""
        followed = _follows(scores, out)
        if followed is None:
            return
        keeps = list(followed.keeps)
        exact = followed.exact
        placed = tuple(out.shape)
        if term is None:
            exact = False
        elif placed != followed.shape and not (
            placed[-2:] == followed.shape[-2:] and math.prod(placed[:-2]) == math.prod(followed.shape[:-2])
        ):
            exact = False  # a mask applied to an unusual view of the scores: not placed, pairs kept
        else:
            keep = keep_from_mask(term)
            if not bool(keep.all()):
                keeps.append(_reshape_keep(keep, placed, followed.shape))
        self._scores[out] = replace(followed, keeps=keeps, exact=exact)

    def _known(self, tensor: torch.Tensor) -> torch.Tensor | None:
        return self._value_of(tensor)

    def _additive(self, packet: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        this, other = args[0], args[1]
        if packet in _ADD and not self._is_scores(this) and self._is_scores(other):
            this, other = other, this
        scores = self._scores.get(this) if _is_tensor(this) else None
        if scores is None or scores.softmax is not None:
            return
        if not _is_tensor(other) or other.numel() == 1:
            self._pass(this, out)
            return
        known = self._known(other)
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 else 1)
        sign = -1 if packet in _SUB else 1
        term = None if known is None else known.to(torch.float32) * (sign * alpha)
        self._add_keep(scores, out, term)

    def _fill_hides(self, value: Any, after_softmax: bool) -> torch.Tensor | None:
        """Where a fill value removes pairs: very negative before softmax, zero after it.
        None when the value is unknown (a meta tensor without a known value)."""
        known = self._known(value) if _is_tensor(value) else torch.tensor(float(value))
        if known is None:
            return None
        known = known.to(torch.float32)
        return known == 0.0 if after_softmax else known <= MASKED_AT_OR_BELOW

    def _masked_fill(self, args: tuple[Any, ...], out: Any) -> None:
        scores = self._scores.get(args[0]) if _is_tensor(args[0]) else None
        if scores is None:
            return
        hides = self._fill_hides(args[2], after_softmax=scores.softmax is not None)
        if hides is not None and not bool(hides.any()):
            self._pass(args[0], out)
            return
        mask = self._known(args[1])
        self._add_keep(scores, out, None if mask is None or hides is None else ~(mask.to(torch.bool) & hides))

    def _where(self, args: tuple[Any, ...], out: Any) -> None:
        condition, this, other = args[0], args[1], args[2]
        for scores_side, fill_side, scores_where in ((this, other, True), (other, this, False)):
            scores = self._scores.get(scores_side) if _is_tensor(scores_side) else None
            if scores is None or scores.softmax is not None:
                continue
            hides = self._fill_hides(fill_side, after_softmax=False)
            known = self._known(condition)
            if hides is None or known is None:
                self._add_keep(scores, out, None)
                return
            fill_taken = ~known.to(torch.bool) if scores_where else known.to(torch.bool)
            self._add_keep(scores, out, ~(fill_taken & hides))
            return

    def _softmax(self, packet: Any, args: tuple[Any, ...], out: Any) -> None:
        scores = self._scores.get(args[0]) if _is_tensor(args[0]) else None
        if scores is None or scores.softmax is not None or not _is_tensor(out):
            return
        if args[1] not in (-1, args[0].dim() - 1) or args[0].size(-1) != scores.shape[-1]:
            return  # a softmax over queries or heads is not attention over keys
        self._scores[out] = replace(scores, softmax=packet.__name__)

    # --- matmuls --------------------------------------------------------------------------

    def _matmul(
        self, packet: Any, args: tuple[Any, ...], out: Any, site: Site, flops: int, backward: bool
    ) -> TrackerVerdict:
        left, right = (args[1], args[2]) if packet is aten.baddbmm else (args[0], args[1])
        if backward:
            found = self._found.get(left) or self._found.get(right)
            if found is None or found.remaining == 0 or _product(left, right) not in found.products:
                return TrackerVerdict()
            found.remaining -= 1
            booked = 0 if found.backward_booked else found.backward_flops
            found.backward_booked = True
            return TrackerVerdict(absorb=True, backward_flops=booked)
        probabilities = self._scores.get(left)
        if probabilities is not None and probabilities.softmax is not None and left.dim() == 3:
            return self._finish(probabilities, left, right)
        if left.dim() == 3 and _is_tensor(out):
            scores = _Scores(
                shape=tuple(out.shape),
                head_dim=left.size(-1),
                first_matmul=(site, flops),
                operands=(left, right),
                split=self._splits.get(left),
                kv_heads=self._kv_heads.get(right),
            )
            self._scores[out] = scores
            if packet is aten.baddbmm and _is_tensor(args[0]) and args[0].numel() > 1:
                known = self._known(args[0])
                self._add_keep(scores, out, None if known is None else known.to(torch.float32))
        return TrackerVerdict()

    def _finish(self, scores: _Scores, probabilities: torch.Tensor, value: torch.Tensor) -> TrackerVerdict:
        *lead, q_len, kv_len = scores.shape
        if len(lead) == 2:
            batch, heads = lead
        elif scores.split is not None:
            batch, heads = scores.split
        else:
            batch, heads = 1, math.prod(lead)
        kv_heads = scores.kv_heads or self._kv_heads.get(value) or heads
        shape = AttentionShape(batch, heads, kv_heads, q_len, kv_len, scores.head_dim, value.size(-1))
        backend = "math" if scores.softmax == "_safe_softmax" else "eager"
        full = (batch, heads, q_len, kv_len)
        keeps = tuple(_reshape_keep(keep, scores.shape, full) for keep in scores.keeps)
        info = attention_info(shape, backend, None, keeps)
        scores_product = _product(*scores.operands)
        found = _Found(backward_flops(info.flops), frozenset({scores_product, _product(probabilities, value)}))
        for tensor in (probabilities, value, *scores.operands):
            self._found[tensor] = found
        return TrackerVerdict(attention=info, absorb=True, release=scores.first_matmul, exact=scores.exact)
