"""Precision plans: autocast around forward, or weights cast with normalisation kept in fp32.

autocast already keeps its numerically sensitive ops (softmax, norms, reductions, losses) in
fp32. A cast model has no such list, so normalisation layers keep fp32 weights and compute in
fp32 on upcast inputs, the way mixed-precision checkpoints are loaded ("keep_in_fp32_modules").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from attnprof.plans.scope import add_forward_scope

LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def apply_precision(model: nn.Module, dtype: str, mode: str, device: torch.device) -> list[str]:
    """Apply a plan's dtype ("fp32", "tf32", "bf16", "fp16") in `mode` ("autocast" or "cast")."""
    if dtype == "fp32":
        return []
    if dtype == "tf32":
        add_forward_scope(model, _high_matmul_precision)
        note = "" if device.type == "cuda" else " (takes effect on NVIDIA GPUs only)"
        return [f"precision tf32: float32 matmuls may use TF32 inside forward{note}"]
    low = LOW_PRECISION[dtype]
    if mode == "autocast":
        add_forward_scope(model, lambda: torch.autocast(device_type=device.type, dtype=low))
        return [f"precision {dtype}: torch.autocast around forward (softmax, norms, reductions stay fp32)"]
    kept = cast_keeping_norms(model, low)
    return [f"precision {dtype}: weights and inputs cast; {kept} normalisation layers kept in fp32"]


def cast_keeping_norms(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast floating parameters and buffers to `dtype`, except in normalisation layers."""
    norms = [m for m in model.modules() if is_norm(m)]
    norm_ids = {id(m) for m in norms}
    for module in model.modules():
        if id(module) in norm_ids:
            continue
        for param in module.parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(dtype)
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                module._buffers[name] = buffer.to(dtype)
    for norm in norms:
        norm.register_forward_pre_hook(_upcast_inputs, with_kwargs=True)
        norm.register_forward_hook(_cast_output_to(dtype))
    model.register_forward_pre_hook(_cast_inputs_to(dtype), with_kwargs=True)
    return len(norms)


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, GroupNorm, BatchNorm and the RMSNorm classes models define for themselves."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)):
        return True
    return type(module).__name__.endswith(("LayerNorm", "RMSNorm", "GroupNorm"))


@contextlib.contextmanager
def _high_matmul_precision() -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _convert(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_convert(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _convert(v, dtype) for k, v in value.items()}
    return value


def _upcast_inputs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    return _convert(args, torch.float32), _convert(kwargs, torch.float32)


def _cast_inputs_to(dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _convert(args, dtype), _convert(kwargs, dtype)

    return hook


def _cast_output_to(dtype: torch.dtype) -> Any:
    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        return _convert(output, dtype)

    return hook
