import torch
from torch import nn


class Broken(nn.Module):
    def forward(self, x):
        return self.compute(x)

    def compute(self, x):
        raise ValueError("user bug in forward")


def build_model(device, dtype):
    return Broken()


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.zeros(batch_size, seq_len),)
