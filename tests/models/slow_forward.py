"""Each forward takes a quarter of a second and leaves a file `started` in the working
directory, so a test knows when to interrupt the run."""

import pathlib
import time

import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        pathlib.Path("started").touch()
        time.sleep(0.25)
        return self.proj(x)


def build_model(device, dtype):
    return Slow().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size, seq_len, 4, device=device, dtype=dtype),)
