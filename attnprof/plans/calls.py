"""One forward over the example inputs: what each attention module received and returned, and
which modules called `scaled_dot_product_attention` themselves (attributed to the innermost
running module by the global module hooks of ModuleScopes)."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from attnprof.measure.scopes import ModuleScopes


@dataclass
class ModuleCall:
    args: tuple
    kwargs: dict[str, Any]
    output: Any = None
    sdpa_calls: int = 0
    snapshot: tuple[tuple, dict[str, Any]] | None = None  # deep copy taken before the call ran

    def replay(self, module: nn.Module) -> Any | None:
        """Call `module` again on a fresh copy of the recorded inputs (a KV cache among them
        must not grow twice); None when the inputs could not be copied."""
        if self.snapshot is None:
            return None
        args, kwargs = copy.deepcopy(self.snapshot)
        with torch.no_grad():
            return module(*args, **kwargs)


@dataclass
class Recording:
    calls: dict[str, ModuleCall] = field(default_factory=dict)  # first call of each watched module
    sdpa_callers: Counter[str] = field(default_factory=Counter)  # module path -> SDPA calls


def _copy(inputs: tuple[tuple, dict[str, Any]]) -> tuple[tuple, dict[str, Any]] | None:
    try:
        return copy.deepcopy(inputs)
    except Exception:  # an input that cannot be copied: that module's rewrite goes unchecked
        return None


class _SdpaCounter(TorchFunctionMode):
    def __init__(self, scopes: ModuleScopes, callers: Counter[str]) -> None:
        super().__init__()
        self.scopes, self.callers = scopes, callers

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.scaled_dot_product_attention:
            self.callers[self.scopes.current()] += 1
        return func(*args, **(kwargs or {}))


def record_calls(model: nn.Module, paths: Sequence[str], run: Callable[[], Any]) -> Recording:
    """Run `run()` under no_grad, recording the modules at `paths` and every SDPA caller."""
    recording = Recording()
    handles = []
    for path in paths:
        module = model.get_submodule(path)

        def before(module: nn.Module, args: tuple, kwargs: dict, path: str = path) -> None:
            if path not in recording.calls:
                recording.calls[path] = ModuleCall(args=args, kwargs=dict(kwargs), snapshot=_copy((args, kwargs)))

        def after(module: nn.Module, args: tuple, kwargs: dict, output: Any, path: str = path) -> None:
            if recording.calls[path].output is None:
                recording.calls[path].output = output

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    try:
        with (
            torch.no_grad(),
            ModuleScopes(model, backward=False) as scopes,
            _SdpaCounter(scopes, recording.sdpa_callers),
        ):
            run()
    finally:
        for handle in handles:
            handle.remove()
    for path, call in recording.calls.items():
        call.sdpa_calls = recording.sdpa_callers[path]
    return recording
