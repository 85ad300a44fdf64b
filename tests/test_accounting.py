"""Attention accounting on every path: SDPA kernels, hand-written attention, fused layers.

Sizes are tiny; every expected number has its arithmetic beside it. Unless stated, B = 2
batches, H = 4 query heads, D = 8, so useful FLOPs are 4·D·B·H·pairs = 256·pairs when the
pairs are those of one (batch, head) slice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnprof.measure.accounting import CostCounter, ModuleCost, merge_attention
from attnprof.measure.scopes import ModuleScopes

aten = torch.ops.aten
B, H, D = 2, 4, 8


class Run(nn.Module):
    """A root module around a function, so the counter has a scope to book into."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def count(model: nn.Module, *inputs: Any, backward: bool = False) -> dict[str, ModuleCost]:
    with ModuleScopes(model) as scopes, CostCounter(scopes) as counter:
        out = model(*inputs)
        if backward:
            out.float().sum().backward()
    return dict(counter.per_module)


def qkv(q_len: int, kv_len: int, kv_heads: int = H, device: str = "cpu", grad: bool = False) -> list[torch.Tensor]:
    torch.manual_seed(0)
    shapes = [(B, H, q_len, D), (B, kv_heads, kv_len, D), (B, kv_heads, kv_len, D)]
    return [torch.randn(*s, device=device, requires_grad=grad) for s in shapes]


# --- every SDPA kernel, called through the dispatcher on meta tensors ------------------------

SQ, SKV = 5, 7
TOP_LEFT = 1 + 2 + 3 + 4 + 5  # 15 pairs: row i sees keys 0..i
BOTTOM_RIGHT = 3 + 4 + 5 + 6 + 7  # 25 pairs: offset 2, row i sees keys 0..i+2
WINDOW_2 = 2 * SQ  # 10 pairs: bottom-right with one key left of the diagonal, 2 keys per row


def _bshd(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2)


def _meta(n: int) -> torch.Tensor:
    return torch.empty(n, device="meta")


FORWARD_KERNELS: dict[str, tuple[Callable[..., Any], int]] = {
    "flash_cpu": (lambda q, k, v: aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True), TOP_LEFT),
    "flash_cpu_kwargs": (
        lambda q, k, v: aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=True, dropout_p=0.0),
        TOP_LEFT,
    ),
    "flash_cuda": (lambda q, k, v: aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True), BOTTOM_RIGHT),
    "efficient": (
        lambda q, k, v: aten._scaled_dot_product_efficient_attention(q, k, v, None, False, 0.0, True),
        TOP_LEFT,
    ),
    "cudnn": (lambda q, k, v: aten._scaled_dot_product_cudnn_attention(q, k, v, None, False, 0.0, True), TOP_LEFT),
    "overrideable": (
        lambda q, k, v: aten._scaled_dot_product_fused_attention_overrideable(q, k, v, None, 0.0, True),
        TOP_LEFT,
    ),
    "flash_forward_bshd": (
        lambda q, k, v: aten._flash_attention_forward(
            _bshd(q), _bshd(k), _bshd(v), None, None, SQ, SKV, 0.0, True, False
        ),
        BOTTOM_RIGHT,
    ),
    "flash_forward_window": (
        lambda q, k, v: aten._flash_attention_forward(
            _bshd(q), _bshd(k), _bshd(v), None, None, SQ, SKV, 0.0, True, False,
            window_size_left=1, window_size_right=0,
        ),
        WINDOW_2,
    ),
    "efficient_forward_top_left": (
        lambda q, k, v: aten._efficient_attention_forward(
            _bshd(q), _bshd(k), _bshd(v), None, None, None, SQ, SKV, 0.0, 1
        ),
        TOP_LEFT,
    ),
    "efficient_forward_bottom_right": (
        lambda q, k, v: aten._efficient_attention_forward(
            _bshd(q), _bshd(k), _bshd(v), None, None, None, SQ, SKV, 0.0, 2
        ),
        BOTTOM_RIGHT,
    ),
    "efficient_no_mask": (
        lambda q, k, v: aten._efficient_attention_forward(
            _bshd(q), _bshd(k), _bshd(v), None, None, None, SQ, SKV, 0.0, 0
        ),
        SQ * SKV,
    ),
}


@pytest.mark.parametrize("name", sorted(FORWARD_KERNELS))
def test_every_sdpa_kernel_forward(name: str) -> None:
    call, pairs = FORWARD_KERNELS[name]
    cost = count(Run(call), *qkv(SQ, SKV, device="meta"))[""]
    (info,) = cost.attention
    assert info.flops == 256 * pairs  # 4·D·B·H = 4·8·2·4 = 256 per slice pair
    assert info.flops_dense == 256 * SQ * SKV  # 256 · 35 = 8960
    assert (info.num_heads, info.num_kv_heads, info.head_dim, info.q_len, info.kv_len) == (H, H, D, SQ, SKV)
    assert info.causal == (pairs != SQ * SKV)
    assert cost.flops == info.flops  # nothing else ran


def _backward_kernels(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict[str, Callable[[], Any]]:
    o, lse = torch.empty_like(q), torch.empty(B, H, SQ, device="meta")
    return {
        "flash_cpu": lambda: aten._scaled_dot_product_flash_attention_for_cpu_backward(
            o, q, k, v, o, lse, 0.0, True
        ),
        "flash_cuda": lambda: aten._scaled_dot_product_flash_attention_backward(
            o, q, k, v, o, lse, None, None, SQ, SKV, 0.0, True, _meta(2), _meta(2)
        ),
        "efficient": lambda: aten._scaled_dot_product_efficient_attention_backward(
            o, q, k, v, None, o, lse, _meta(2), _meta(2), 0.0, [True, True, True, False], True
        ),
        "cudnn": lambda: aten._scaled_dot_product_cudnn_attention_backward(
            o, q, k, v, o, lse, _meta(2), _meta(2), None, None, None, SQ, SKV, 0.0, True
        ),
    }


@pytest.mark.parametrize(
    ("name", "pairs"),
    [("flash_cpu", TOP_LEFT), ("flash_cuda", BOTTOM_RIGHT), ("efficient", TOP_LEFT), ("cudnn", TOP_LEFT)],
)
def test_every_sdpa_kernel_backward_is_two_and_a_half_forward(name: str, pairs: int) -> None:
    q, k, v = qkv(SQ, SKV, device="meta")
    cost = count(Run(_backward_kernels(q, k, v)[name]))[""]
    assert cost.backward_attention_flops == 256 * pairs * 5 // 2  # 2.5 · forward
    assert cost.attention == []  # a backward call is not a forward attention call


# --- F.scaled_dot_product_attention on CPU, both backends that run here ----------------------

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def _sdpa(backend: str, **options: Any) -> Run:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(BACKENDS[backend]):
            return F.scaled_dot_product_attention(q, k, v, **options)

    return Run(attend)


def _padding_keep(kv_len: int, lengths: list[int]) -> torch.Tensor:
    return (torch.arange(kv_len)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sdpa_causal_gqa_forward_and_backward(backend: str) -> None:
    model = _sdpa(backend, is_causal=True, enable_gqa=True)
    cost = count(model, *qkv(6, 6, kv_heads=2, grad=True), backward=True)[""]
    (info,) = cost.attention
    assert info.flops == 256 * 21  # 6·7/2 = 21 causal pairs per slice → 5376
    assert (info.num_heads, info.num_kv_heads, info.causal) == (4, 2, True)
    assert info.backend == backend
    assert cost.flops == 5376  # the math path's matmuls are not counted a second time
    assert cost.backward_attention_flops == 13440  # 2.5 · 5376
    assert cost.backward_flops == 13440  # and its backward matmuls are folded in, not added
    merged = merge_attention(cost.attention, cost.backward_attention_flops)
    assert (merged.flops, merged.backward_flops, merged.calls) == (5376, 13440, 1)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("additive", [False, True])
def test_sdpa_padding_mask(backend: str, additive: bool) -> None:
    keep = _padding_keep(6, [6, 4])  # batch 0 keeps 6 keys, batch 1 keeps 4
    mask = torch.zeros(keep.shape).masked_fill(~keep, float("-inf")) if additive else keep
    cost = count(_sdpa(backend, attn_mask=mask), *qkv(5, 6))[""]
    (info,) = cost.attention
    # per head: 5 queries · (6 + 4) keys = 50 pairs over the batch; 4 heads · 4·D → 50 · 4 · 32 = 6400
    assert info.flops == 6400
    assert not info.causal and info.window is None


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sdpa_sliding_window_mask(backend: str) -> None:
    rows, cols = torch.arange(6)[:, None], torch.arange(6)[None, :]
    keep = (cols <= rows) & (cols > rows - 3)  # causal, 3 keys per row
    (info,) = count(_sdpa(backend, attn_mask=keep), *qkv(6, 6))[""].attention
    assert info.flops == 256 * 15  # rows see 1, 2, 3, 3, 3, 3 keys = 15 → 3840
    assert (info.causal, info.window) == (True, 3)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_sdpa_decode_with_cache_mask(backend: str) -> None:
    keep = torch.ones(1, 9, dtype=torch.bool)  # one new query sees the 9 cached keys
    (info,) = count(_sdpa(backend, attn_mask=keep), *qkv(1, 9))[""].attention
    assert info.flops == 256 * 9  # 2304
    assert (info.q_len, info.kv_len) == (1, 9)


def test_sdpa_on_cpu_top_left_causal_when_queries_are_fewer() -> None:
    # SDPA's is_causal aligns the diagonal top-left on CPU: 3 queries, 5 keys → 1 + 2 + 3 = 6 pairs
    for backend in BACKENDS:
        (info,) = count(_sdpa(backend, is_causal=True), *qkv(3, 5))[""].attention
        assert info.flops == 256 * 6


# --- attention written by hand ----------------------------------------------------------------


def _gpt_style(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    seq = q.shape[-2]
    bias = torch.tril(torch.ones(seq, seq, device=q.device)).view(1, 1, seq, seq)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = scores.masked_fill(bias == 0, float("-inf"))
    return F.dropout(F.softmax(scores, dim=-1), p=0.1, training=q.requires_grad) @ v


def _where_finfo_min(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    seq = q.shape[-2]
    keep = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    scores = torch.where(keep, scores, torch.full((), torch.finfo(scores.dtype).min, device=q.device))
    return torch.matmul(scores.softmax(-1), v)


def _bias_trick(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    seq = q.shape[-2]
    b = torch.tril(torch.ones(seq, seq, device=q.device))
    w = q @ k.transpose(-1, -2)
    w = w * b - 1e4 * (1 - b)  # the original GPT-2 code
    return torch.softmax(w, -1) @ v


def _einsum(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    seq = q.shape[-2]
    mask = torch.full((seq, seq), float("-inf"), device=q.device).triu(1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) + mask
    return torch.einsum("bhqk,bhkd->bhqd", torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


def _flattened_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # (B·H, S, D) tensors and bmm, the layout of nn.MultiheadAttention's math path
    flat = [t.reshape(-1, *t.shape[2:]) for t in (q, k, v)]
    seq = q.shape[-2]
    mask = torch.zeros(seq, seq, device=q.device).masked_fill(
        torch.ones(seq, seq, dtype=torch.bool, device=q.device).triu(1), float("-inf")
    )
    scores = torch.baddbmm(mask, flat[0], flat[1].transpose(1, 2))
    return torch.bmm(torch.softmax(scores, -1), flat[2])


HAND_WRITTEN = {
    "gpt_masked_fill": _gpt_style,
    "where_finfo_min": _where_finfo_min,
    "bias_trick": _bias_trick,
    "einsum": _einsum,
    "flattened_heads": _flattened_heads,
}


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN))
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_hand_written_causal_attention(name: str, device: str) -> None:
    cost = count(Run(HAND_WRITTEN[name]), *qkv(6, 6, device=device))[""]
    (info,) = cost.attention
    assert info.flops == 256 * 21  # 21 causal pairs per slice → 5376
    assert info.flops_dense == 256 * 36  # 9216
    assert info.causal and info.backend == "eager"
    assert cost.flops == 5376  # the two matmuls are the attention, not plain matmul FLOPs besides
    if name == "flattened_heads":  # (B·H) slices from reshaped 4-D tensors
        assert (info.batch_size, info.num_heads) == (B, H)


def test_hand_written_backward_follows_the_convention() -> None:
    cost = count(Run(_gpt_style), *qkv(6, 6, grad=True), backward=True)[""]
    assert cost.flops == 5376
    assert cost.backward_attention_flops == cost.backward_flops == 13440  # 2.5 · 5376


def test_unknown_fill_value_on_meta_counts_dense_and_says_so() -> None:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(6, 6, dtype=torch.bool, device=q.device).tril()
        fill = torch.tensor(float("-inf"), device=q.device)  # made outside the dispatcher: no value
        return torch.where(keep, q @ k.transpose(-1, -2), fill).softmax(-1) @ v

    model = Run(attend)
    with ModuleScopes(model) as scopes, CostCounter(scopes) as counter:
        model(*qkv(6, 6, device="meta"))
    (info,) = counter.per_module[""].attention
    assert info.flops == info.flops_dense == 256 * 36  # 9216: every pair, as the mask is unknown
    assert counter.unknown_masks == 1


def test_batched_matmul_without_softmax_stays_a_matmul() -> None:
    cost = count(Run(lambda a, b: torch.relu(torch.bmm(a, b))), torch.randn(3, 4, 5), torch.randn(3, 5, 6))[""]
    assert cost.attention == []
    assert cost.flops == 2 * 3 * 4 * 5 * 6  # 720


def test_softmax_over_queries_is_not_attention() -> None:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2), dim=-2) @ v

    cost = count(Run(attend), *qkv(6, 6))[""]
    assert cost.attention == []
    assert cost.flops == 2 * 2 * B * H * 6 * 6 * D  # two plain batched matmuls: 9216


# --- nn.MultiheadAttention and nn.TransformerEncoderLayer ------------------------------------

E, HEADS, FFN, S = 16, 4, 32, 5


def _encoder(layers: int = 1) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, HEADS, FFN, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=True)


LAYER_MATMULS = 2 * B * S * E * (3 * E + E + 2 * FFN)  # qkv, out-projection, feed-forward: 25600
LAYER_ATTENTION = 4 * (E // HEADS) * B * HEADS * S * S  # 4·D·B·H·S² = 3200


def test_transformer_encoder_fast_path_in_eval() -> None:
    model = _encoder().eval()
    with torch.no_grad():
        costs = count(model, torch.randn(B, S, E))
    layer = costs["layers.0"]
    (info,) = layer.attention
    assert (info.backend, info.num_heads, info.head_dim, info.causal) == ("fused", HEADS, E // HEADS, False)
    assert info.flops == LAYER_ATTENTION
    assert layer.flops == LAYER_MATMULS + LAYER_ATTENTION  # the fused op holds the whole layer: 28800


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_transformer_encoder_fast_path_with_padding() -> None:
    model = _encoder().eval()
    padding = torch.tensor([[False] * S, [False] * 3 + [True] * 2])  # True marks padding
    with torch.no_grad():
        costs = count(model, torch.randn(B, S, E), None, padding)
    (info,) = costs["layers.0"].attention
    # sequences of 5 and 3 tokens, 4 heads, D = 4: 4·4·4·(25 + 9) = 2176
    assert info.flops == 4 * 4 * HEADS * (25 + 9)


def test_transformer_encoder_in_train_mode_goes_through_sdpa() -> None:
    model = _encoder().train()
    costs = count(model, torch.randn(B, S, E, requires_grad=True), backward=True)
    attention = costs["layers.0.self_attn"]
    (info,) = attention.attention
    assert info.flops == LAYER_ATTENTION
    assert attention.backward_attention_flops == LAYER_ATTENTION * 5 // 2  # 8000


def test_native_multi_head_attention_fast_path() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, HEADS, batch_first=True).eval()
    x = torch.randn(B, S, E)
    with torch.no_grad():
        costs = count(mha, x, x, x)
    (info,) = costs[""].attention
    assert info.backend == "fused" and info.flops == LAYER_ATTENTION
    assert costs[""].flops == LAYER_ATTENTION + 2 * B * S * E * 4 * E  # + q, k, v, out projections: 13440


def test_multi_head_attention_with_weights_in_train_mode() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, HEADS, batch_first=True).train()
    x = torch.randn(B, S, E, requires_grad=True)
    causal = torch.ones(S, S, dtype=torch.bool).triu(1)  # True marks hidden keys
    with ModuleScopes(mha) as scopes, CostCounter(scopes) as counter:
        mha(x, x, x, attn_mask=causal, need_weights=True)
    (info,) = counter.per_module[""].attention
    assert info.flops == 4 * (E // HEADS) * B * HEADS * 15  # 15 causal pairs per slice: 1920
    assert info.causal and info.num_heads * info.batch_size == B * HEADS
