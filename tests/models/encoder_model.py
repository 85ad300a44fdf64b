"""A user model file built on torch.nn.TransformerEncoder (code attnprof has never seen)."""

import torch
from torch import nn

ATTNPROF = {"batch_size": 2, "seq_len": 16, "repeats": 2, "warmup": 1}


def build_model(device, dtype):
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True, dropout=0.0)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size, seq_len, 32, device=device, dtype=dtype),)


def make_small(device, dtype):
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU()).to(device=device, dtype=dtype)


def loss_fn(output, inputs):
    return output.pow(2).mean()
