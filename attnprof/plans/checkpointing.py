"""Activation checkpointing on chosen modules: their activations are recomputed in backward."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from attnprof.errors import UsageError


def checkpoint_modules(model: nn.Module, paths: Sequence[str]) -> list[str]:
    """Wrap each module's forward in non-reentrant `torch.utils.checkpoint`."""
    modules = []
    for path in paths:
        try:
            modules.append(model.get_submodule(path))
        except AttributeError:
            raise UsageError(f"the plan checkpoints {path!r}, which the model does not have") from None
    for module in modules:
        original = module.forward

        @functools.wraps(original)
        def forward(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)  # nothing to save, nothing to recompute
            return checkpoint(_original, *args, use_reentrant=False, **kwargs)

        module.forward = forward
    return [f"activation checkpointing on {len(modules)} modules"] if modules else []
