"""A step that gets much faster as it gets larger: it sleeps 6.4 s / (batch × seq)², 400 ms at 4
tokens, 2 ms at 52 (sleeps, so the pattern holds on a busy machine). A cost model, whose costs
grow with the work, cannot predict it: its cross-validated error is far above 50%."""

import time

import torch
from torch import nn


class Erratic(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        time.sleep(6.4 / (x.shape[0] * x.shape[1]) ** 2)
        return self.proj(x)


def build_model(device, dtype):
    return Erratic().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size, seq_len, 4, device=device, dtype=dtype),)
