"""Layers that sleep a fixed time: per-layer timings are predictable even on a busy machine."""

import time

import torch
from torch import nn

ATTNPROF = {"batch_size": 1, "seq_len": 4, "repeats": 3, "warmup": 1}


class Sleep(nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        time.sleep(self.seconds)
        return self.proj(x)


def build_model(device, dtype):
    return nn.Sequential(Sleep(0.04), Sleep(0.08), Sleep(0.04)).to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return {"input": torch.randn(batch_size, seq_len, 4, device=device, dtype=dtype)}
