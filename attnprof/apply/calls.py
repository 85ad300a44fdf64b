"""One forward over the example inputs, recording what each attention module received and
returned and whether it called `scaled_dot_product_attention` itself."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


@dataclass
class ModuleCall:
    args: tuple
    kwargs: dict[str, Any]
    output: Any
    sdpa_calls: int = 0


class _SdpaCounter(TorchFunctionMode):
    def __init__(self, stack: list[str], calls: dict[str, ModuleCall]) -> None:
        super().__init__()
        self.stack, self.calls = stack, calls

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.scaled_dot_product_attention and self.stack and self.stack[-1] in self.calls:
            self.calls[self.stack[-1]].sdpa_calls += 1
        return func(*args, **(kwargs or {}))


def record_calls(model: nn.Module, paths: Sequence[str], run: Callable[[], Any]) -> dict[str, ModuleCall]:
    """The first call of each module in `paths` during `run()`, under no_grad."""
    calls: dict[str, ModuleCall] = {}
    stack: list[str] = []
    handles = []
    for path in paths:
        module = model.get_submodule(path)

        def before(module: nn.Module, args: tuple, kwargs: dict, path: str = path) -> None:
            stack.append(path)
            if path not in calls:
                calls[path] = ModuleCall(args=args, kwargs=dict(kwargs), output=None)

        def after(module: nn.Module, args: tuple, kwargs: dict, output: Any, path: str = path) -> None:
            stack.pop()
            if calls[path].output is None:
                calls[path].output = output

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        with torch.no_grad(), _SdpaCounter(stack, calls):
            run()
    finally:
        for handle in handles:
            handle.remove()
    return calls
