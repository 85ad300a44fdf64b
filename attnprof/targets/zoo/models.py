"""Reference transformer models for the built-in workloads.

Written the way typical user code is: q/k/v/o nn.Linear projections, heads reshaped with the
module's own `num_heads` / `num_kv_heads` / `head_dim` attributes (so a tensor-parallel or
pruning rewrite only has to update those), and either SDPA or hand-written
matmul-softmax-matmul attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnprof.errors import UsageError


@dataclass(frozen=True)
class ZooConfig:
    vocab_size: int = 2048
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 8
    mlp_ratio: int = 4
    max_seq_len: int = 4096
    causal: bool = True
    attention: Literal["sdpa", "manual"] = "sdpa"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise UsageError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise UsageError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")


class SelfAttention(nn.Module):
    def __init__(self, config: ZooConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.hidden_size // config.num_heads
        self.causal = config.causal
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        batch, _, seq, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._heads(x)
        mask = None
        if key_padding is not None:  # True where a key is a real token
            mask = key_padding[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=self.causal and mask is None,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self._merge(out)


class ManualSelfAttention(SelfAttention):
    """GPT-style attention: explicit scores, masked_fill with -inf, softmax, weighted sum."""

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._heads(x)
        if self.num_kv_heads != self.num_heads:
            repeats = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(repeats, dim=1)
            v = v.repeat_interleave(repeats, dim=1)
        seq = x.shape[1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        if self.causal:
            future = torch.ones(seq, seq, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        if key_padding is not None:
            scores = scores.masked_fill(~key_padding[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return self._merge(weights @ v)


class FeedForward(nn.Module):
    def __init__(self, config: ZooConfig) -> None:
        super().__init__()
        inner = config.hidden_size * config.mlp_ratio
        self.up_proj = nn.Linear(config.hidden_size, inner)
        self.act = nn.GELU()
        self.down_proj = nn.Linear(inner, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, config: ZooConfig) -> None:
        super().__init__()
        attention_class = ManualSelfAttention if config.attention == "manual" else SelfAttention
        self.attn_norm = nn.LayerNorm(config.hidden_size)
        self.attn = attention_class(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size)
        self.mlp = FeedForward(config)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), key_padding)
        return x + self.mlp(self.mlp_norm(x))


class ZooTransformer(nn.Module):
    """Token embedding + learned positions + pre-norm blocks + a head over the vocabulary."""

    def __init__(self, config: ZooConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos_embed = nn.Embedding(config.max_seq_len, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.pos_embed(positions)
        for layer in self.layers:
            x = layer(x, key_padding)
        return self.head(self.norm(x))
