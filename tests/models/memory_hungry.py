"""A model that runs out of memory for large configurations, with the real exception type.

Above 64 tokens per batch it raises torch.cuda.OutOfMemoryError, as the CUDA caching allocator
does; with ATTNPROF_CPU_OOM set it instead asks the CPU allocator for an impossible 1 PiB, which
fails with torch's real CPU error.
"""

import os

import torch
from torch import nn

TOKEN_LIMIT = 64


class Hungry(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        if x.shape[0] * x.shape[1] > TOKEN_LIMIT:
            if os.environ.get("ATTNPROF_CPU_OOM"):
                torch.empty(2**50, dtype=torch.uint8)
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {x.shape[0] * x.shape[1] // 8:.2f} GiB"
            )
        return self.proj(x)


def build_model(device, dtype):
    return Hungry().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size, seq_len, 8, device=device, dtype=dtype),)
