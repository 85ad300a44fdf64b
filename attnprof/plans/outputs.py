"""The tensor to compare in whatever a model returns (tensor, tuple, dict, transformers output),
and how far one output is from a reference output."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
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


def floating_tensors(output: Any) -> list[torch.Tensor]:
    """Every floating-point tensor in a model's output (nested tuples, lists, dicts, ModelOutputs)."""
    if isinstance(output, torch.Tensor):
        return [_local(output)] if output.is_floating_point() else []
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (list, tuple)) else ()
    return [tensor for value in values for tensor in floating_tensors(value)]


@dataclass(frozen=True)
class OutputDifference:
    """How far an output's main tensor is from the reference's (see `output_difference`)."""

    finite: bool  # no floating tensor of the output holds inf or nan, the main one or any other
    max_abs: float  # max|output - reference|
    max_rel: float  # max|output - reference| / max|reference|
    mismatch: str = ""  # why the two cannot be compared (shapes differ); the errors are inf then


def output_difference(reference: Any, output: Any) -> OutputDifference:
    """The main tensors compared in float64. Relative error is max|output - reference| / max|reference|
    (elementwise ratios blow up near zero); a reference of zeros has no scale, so its relative
    error is the absolute one. An output with inf or nan anywhere is infinitely far."""
    ref, out = main_tensor(reference).detach().double(), main_tensor(output).detach().double()
    finite = all(bool(torch.isfinite(tensor.detach()).all()) for tensor in floating_tensors(output))
    if ref.shape != out.shape:
        mismatch = f"output shape {tuple(out.shape)} differs from the reference {tuple(ref.shape)}"
        return OutputDifference(finite, math.inf, math.inf, mismatch)
    if not finite:
        return OutputDifference(False, math.inf, math.inf)
    if not ref.numel():
        return OutputDifference(True, 0.0, 0.0)
    max_abs = float((out - ref).abs().max())
    scale = float(ref.abs().max())
    return OutputDifference(True, max_abs, max_abs / scale if scale > 0 else max_abs)


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
