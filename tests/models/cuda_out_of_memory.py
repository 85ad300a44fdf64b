"""A model that runs out of GPU memory for large configurations: above 64 tokens per batch it
raises torch.cuda.OutOfMemoryError, the exception the CUDA caching allocator raises."""

import torch
from torch import nn

TOKEN_LIMIT = 64


class Hungry(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        if x.shape[0] * x.shape[1] > TOKEN_LIMIT:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {x.shape[0] * x.shape[1] // 8:.2f} GiB"
            )
        return self.proj(x)


def build_model(device, dtype):
    return Hungry().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size, seq_len, 8, device=device, dtype=dtype),)
