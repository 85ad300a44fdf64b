"""The tensor to compare in whatever a model returns (tensor, tuple, dict, transformers output)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def main_tensor(output: Any) -> torch.Tensor:
    """logits if present, else the first tensor found (last_hidden_state, output[0], ...)."""
    if isinstance(output, torch.Tensor):
        return _local(output)
    if isinstance(output, Mapping):  # dicts and transformers ModelOutputs
        if "logits" in output:
            return _local(output["logits"])
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            if isinstance(item, (torch.Tensor, list, tuple, Mapping)):
                return main_tensor(item)
    raise TypeError(f"the model returned {type(output).__name__}, which holds no tensor to compare")


def logits_of(output: Any, model: nn.Module) -> torch.Tensor | None:
    """Vocabulary logits: a `logits` field, or a tensor whose last dimension is the vocabulary."""
    if isinstance(output, Mapping) and "logits" in output:
        return _local(output["logits"])
    if not isinstance(output, torch.Tensor):
        return None
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or getattr(model, "vocab_size", None)
    if isinstance(vocab, int) and output.dim() >= 2 and output.shape[-1] == vocab:
        return _local(output)
    return None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    # tensor-parallel outputs may still be DTensors; compare their full value
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor
