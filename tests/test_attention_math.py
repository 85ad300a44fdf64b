"""Attention pair counting and FLOPs, against hand arithmetic and brute force over a shape matrix."""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch

from attnprof.measure.attention_math import (
    AttentionShape,
    CausalSpec,
    attention_info,
    backward_flops,
    bottom_right,
    causal_keep,
    causal_pairs,
    count_pairs,
    summarize_keep,
)


def shape(b: int, h: int, sq: int, skv: int, d: int = 8, hkv: int | None = None) -> AttentionShape:
    return AttentionShape(b, h, hkv or h, sq, skv, d, d)


def brute_force_pairs(s: AttentionShape, causal: CausalSpec | None, masks: tuple[torch.Tensor, ...]) -> int:
    """Visit every (b, h, i, j) and apply the definitions one by one."""
    full = [mask.expand(s.batch, s.num_heads, s.q_len, s.kv_len) if mask.dim() else mask for mask in masks]
    total = 0
    for b, h, i, j in itertools.product(range(s.batch), range(s.num_heads), range(s.q_len), range(s.kv_len)):
        if causal is not None:
            if j > i + causal.offset:
                continue
            if causal.window is not None and j <= i + causal.offset - causal.window:
                continue
        kept = True
        for mask in full:
            value = mask[b, h, i, j]
            kept &= bool(value) if mask.dtype == torch.bool else float(value) > -1e4
        total += kept
    return total


# --- hand arithmetic -------------------------------------------------------------------------


def test_full_attention_counts_every_pair() -> None:
    summary = count_pairs(shape(2, 3, 5, 7))
    assert summary.pairs == 2 * 3 * 5 * 7  # = 210
    assert summary.window is None and not summary.causal


def test_causal_square_is_triangular_number() -> None:
    # S = 6: 1 + 2 + ... + 6 = 6·7/2 = 21 pairs per (batch, head); 2 batches · 4 heads = 168
    assert count_pairs(shape(2, 4, 6, 6), CausalSpec()).pairs == 168


def test_causal_top_left_with_longer_keys() -> None:
    # q_len 3, kv_len 5, diagonal from (0, 0): rows see 1, 2, 3 keys = 6
    assert causal_pairs(3, 5, CausalSpec(offset=0)) == 6


def test_causal_bottom_right_decode_and_chunk() -> None:
    # decode: one query at the end of a 9-key cache sees all 9
    assert causal_pairs(1, 9, bottom_right(1, 9)) == 9
    # chunked prefill: 4 queries after 6 cached keys see 7, 8, 9, 10 keys = 34
    assert causal_pairs(4, 10, bottom_right(4, 10)) == 34


def test_causal_more_queries_than_keys_bottom_right() -> None:
    # q_len 5, kv_len 3, offset -2: rows see 0, 0, 1, 2, 3 keys = 6
    assert causal_pairs(5, 3, bottom_right(5, 3)) == 6


def test_sliding_window() -> None:
    # S = 6, window 3: rows see 1, 2, 3, 3, 3, 3 keys = 15
    assert causal_pairs(6, 6, CausalSpec(window=3)) == 15
    summary = count_pairs(shape(1, 2, 6, 6), CausalSpec(window=3))
    assert (summary.pairs, summary.window) == (30, 3)  # 15 · 2 heads
    # a window as wide as the keys masks nothing beyond causal, so no window is reported
    summary = count_pairs(shape(1, 1, 6, 6), CausalSpec(window=6))
    assert (summary.pairs, summary.window) == (21, None)


def test_flops_and_backward() -> None:
    info = attention_info(shape(2, 4, 6, 6, d=16), backend="flash", causal=CausalSpec())
    assert info.flops == 4 * 16 * 168  # 4·D per kept pair: 64 · 168 = 10752
    assert info.flops_dense == 4 * 2 * 4 * 6 * 6 * 16  # 4·B·H·S·S·D = 18432
    assert backward_flops(info.flops) == 26880  # 2.5 · 10752
    assert info.causal and info.window is None and info.num_heads == 4


def test_value_width_differs_from_key_width() -> None:
    s = AttentionShape(1, 1, 1, 2, 3, head_dim=8, value_dim=4)
    info = attention_info(s, backend="math")
    assert info.flops == 2 * (8 + 4) * 6  # q·k 2·8 + p·v 2·4 per pair, 6 pairs = 144


def test_gqa_counts_query_heads() -> None:
    info = attention_info(shape(1, 8, 4, 4, d=8, hkv=2), backend="flash", causal=CausalSpec())
    assert info.flops == 4 * 8 * (8 * 10)  # 8 query heads · 10 causal pairs · 4·D
    assert info.num_kv_heads == 2


def test_padding_mask_broadcast_over_heads_and_queries() -> None:
    # batch 0 keeps 3 of 5 keys, batch 1 keeps all 5; 2 heads, 4 queries:
    # (3 + 5) · 2 · 4 = 64
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    summary = count_pairs(shape(2, 2, 4, 5), masks=(keep,))
    assert (summary.pairs, summary.window, summary.causal) == (64, None, False)


def test_additive_mask_with_finfo_min_and_inf() -> None:
    mask = torch.zeros(3, 3)
    mask[0, 1:] = float("-inf")
    mask[1, 2] = torch.finfo(torch.float32).min
    mask[2, 0] = -0.5  # a bias, not a mask
    summary = count_pairs(shape(1, 1, 3, 3), masks=(mask,))
    assert summary.pairs == 6  # 1 + 2 + 3
    assert summary.causal


def test_expanded_mask_is_counted_without_materialising() -> None:
    base = torch.tensor([[True, False], [True, True]])
    expanded = base.expand(1000, 64, 2, 2)  # stride 0 over batch and heads
    assert summarize_keep(expanded, (1000, 64, 2, 2)).pairs == 3 * 1000 * 64


def test_bad_mask_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="does not broadcast"):
        summarize_keep(torch.ones(3, 4, dtype=torch.bool), (1, 1, 5, 4))
    with pytest.raises(ValueError, match="boolean or floating"):
        count_pairs(shape(1, 1, 2, 2), masks=(torch.ones(2, 2, dtype=torch.int64),))
    with pytest.raises(ValueError, match="at least one key"):
        CausalSpec(window=0)


def window_of(keep: torch.Tensor) -> int | None:
    return summarize_keep(keep, tuple(keep.shape)).window


def test_window_detection() -> None:
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert window_of(causal) is None
    assert window_of(causal & ~torch.ones(6, 6, dtype=torch.bool).tril(-3)) == 3
    left_padded = torch.ones(2, 1, 4, 6, dtype=torch.bool)
    left_padded[0, ..., :2] = False
    assert window_of(left_padded) is None
    checkerboard = (torch.arange(6)[:, None] + torch.arange(6)[None, :]) % 2 == 0
    assert window_of(checkerboard) is None


def test_causal_flag_read_from_masks() -> None:
    tril = torch.ones(4, 4, dtype=torch.bool).tril()
    assert attention_info(shape(1, 1, 4, 4), "math", masks=(tril,)).causal
    assert not attention_info(shape(1, 1, 4, 4), "math", masks=(torch.ones(4, 4, dtype=torch.bool),)).causal
    decode = torch.ones(3, 7, dtype=torch.bool).tril(4)  # bottom-right causal
    assert attention_info(shape(1, 1, 3, 7), "math", masks=(decode,)).causal


# --- the shape matrix against brute force ----------------------------------------------------


def _padding(batch: int, kv_len: int, left: bool) -> torch.Tensor:
    lengths = [kv_len - (b % 3) for b in range(batch)]
    keep = torch.zeros(batch, 1, 1, kv_len, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if left:
            keep[b, ..., kv_len - n :] = True
        else:
            keep[b, ..., :n] = True
    return keep


def _additive(keep: torch.Tensor) -> torch.Tensor:
    return torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)


SHAPES = [
    (2, 4, 4, 8, 8),  # B, H, Hkv, Sq, Skv: square
    (1, 8, 2, 5, 5),  # GQA
    (3, 2, 1, 1, 9),  # MQA decode
    (2, 2, 2, 4, 11),  # chunked prefill
    (1, 3, 3, 7, 4),  # more queries than keys
]


def _cases() -> list[tuple[str, tuple[int, ...], CausalSpec | None, str]]:
    cases = []
    for dims in SHAPES:
        _, _, _, sq, skv = dims
        cases += [
            ("full", dims, None, ""),
            ("causal-top-left", dims, CausalSpec(), ""),
            ("causal-bottom-right", dims, bottom_right(sq, skv), ""),
            ("window-2", dims, bottom_right(sq, skv, window=2), ""),
            ("right-padding", dims, None, "right"),
            ("left-padding+causal", dims, bottom_right(sq, skv), "left"),
            ("left-padding+window-3-additive", dims, bottom_right(sq, skv, window=3), "left-additive"),
            ("random-bool", dims, None, "random"),
            ("random-additive+causal", dims, CausalSpec(), "random-additive"),
        ]
    return cases


@pytest.mark.parametrize(("name", "dims", "causal", "mask_kind"), _cases(), ids=lambda v: str(v))
def test_shape_matrix_matches_brute_force(
    name: str, dims: tuple[int, ...], causal: CausalSpec | None, mask_kind: str
) -> None:
    b, h, hkv, sq, skv = dims
    s = shape(b, h, sq, skv, d=4, hkv=hkv)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode() + bytes(dims)))
    masks: tuple[torch.Tensor, ...] = ()
    if mask_kind.startswith("random"):
        keep = torch.rand(b, h, sq, skv, generator=generator) > 0.4
        masks = (_additive(keep) if mask_kind.endswith("additive") else keep,)
    elif mask_kind:
        keep = _padding(b, skv, left=mask_kind.startswith("left"))
        masks = (_additive(keep) if mask_kind.endswith("additive") else keep,)
    pairs = count_pairs(s, causal, masks).pairs
    assert pairs == brute_force_pairs(s, causal, masks)
    # the same mask given as a tensor instead of parameters counts the same
    if causal is not None and not masks:
        assert count_pairs(s, None, (causal_keep(sq, skv, causal),)).pairs == pairs
