"""The source of a small model file, two blocks, whose first block does `extra` wasted (but real)
matrix products: for tests that run attnprof on model files of their own."""


def slowable_model(extra: str) -> str:
    """`extra` is the Python expression for the number of extra products, e.g. "3" or
    'int(os.environ.get("KNOB", "0"))'."""
    return SOURCE.replace("EXTRA", extra)


SOURCE = '''
import os
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x):
        y = self.lin(x)
        for _ in range(EXTRA):
            y = y + 1e-6 * (y @ self.lin.weight)
        return y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = Block()
        self.second = nn.Linear(16, 16)

    def forward(self, x):
        return self.second(self.first(x))


def build_model(device, dtype):
    torch.manual_seed(0)
    return Net().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size, 16, device=device, dtype=dtype),)
'''
