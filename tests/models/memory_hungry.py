"""A small attention model whose scratch buffer grows with batch x sequence until the CPU
allocator refuses it (a real allocation failure, not a simulated one), and whose output
turns NaN at one sequence length."""

import torch
import torch.nn.functional as F
from torch import nn

ATTNPROF = {"batch_size": 1, "seq_len": 8, "repeats": 2, "warmup": 1}

LIMIT_TOKENS = 64  # above this many tokens the buffer asks for 2**60 bytes
NAN_SEQ_LEN = 24


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(16, 48)
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, seq, 16))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention()
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))

    def forward(self, x):
        batch, seq, _ = x.shape
        scratch = torch.empty(1 << 60 if batch * seq > LIMIT_TOKENS else batch * seq, dtype=torch.uint8)
        x = x + self.attn(x)
        x = x + self.mlp(x) + scratch[:1].float() * 0
        return x * float("nan") if seq == NAN_SEQ_LEN else x


def build_model(device, dtype):
    return Model().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size, seq_len, 16, device=device, dtype=dtype),)
