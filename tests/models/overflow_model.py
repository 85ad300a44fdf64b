"""A tiny attention model whose outputs exceed fp16's range (65504) but not bf16's or fp32's."""

import torch
import torch.nn.functional as F
from torch import nn

ATTNPROF = {"batch_size": 2, "seq_len": 8, "repeats": 2, "warmup": 1}


class Attention(nn.Module):
    def __init__(self, width: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = self.num_kv_heads = heads
        self.head_dim = width // heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.o_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, width)) * 1e6


def build_model(device, dtype):
    torch.manual_seed(0)
    return Attention().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(batch_size, seq_len, 16, generator=generator).to(device=device, dtype=dtype),)
