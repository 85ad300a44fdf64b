"""Which module is running right now, in forward and in backward.

A stack of module paths kept by PyTorch's *global* module hooks (forward pre/post and full
backward pre/post). Unlike torch.utils.module_tracker.ModuleTracker, which attributes backward
ops wrongly when sibling modules share an input (q/k/v projections get each other's
gradients), the full-backward hooks fire per module around exactly that module's gradient
computation, so attribution is exact.

Listeners are told when a scope opens and closes; timing and memory tracking hang off them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils.hooks import RemovableHandle

Phase = Literal["forward", "backward"]

# Expected with global backward hooks on real models (modules whose inputs need no gradient,
# transformers' dict-like outputs): attribution handles both, so these warnings are noise.
_HOOK_WARNINGS = ("Full backward hook is firing", "For backward hooks to be called")
ROOT = ""  # named_modules() calls the root module ""
# record_function label of a scope: the prefix + the module path, exactly (the root's is the bare
# prefix), so a trace maps labels back to paths without clashing with a child named "model".
LABEL_PREFIX = "attnprof::"


class ScopeListener(Protocol):
    def on_enter(self, name: str, phase: Phase) -> None: ...

    def on_exit(self, name: str, phase: Phase) -> None: ...


@dataclass
class _Frame:
    name: str
    phase: Phase
    label: Any = None  # an open record_function, when labels are on


class ModuleScopes(AbstractContextManager["ModuleScopes"]):
    """Context manager: while active, `current()` names the innermost running module of `model`.

    Modules that do not belong to `model` are ignored. With `record_labels=True` each scope
    is also a `record_function("attnprof::<path>")` range, so torch.profiler events carry the
    module path in their parent chain.
    """

    def __init__(self, model: nn.Module, record_labels: bool = False, backward: bool = True) -> None:
        self._names: dict[int, str] = {id(m): name for name, m in model.named_modules()}
        self._record_labels = record_labels
        self._backward = backward
        self._stack: list[_Frame] = []
        self._listeners: list[ScopeListener] = []
        self._handles: list[RemovableHandle] = []
        self._warnings = warnings.catch_warnings()
        self.order: list[str] = []  # module paths in order of first forward entry
        self._seen: set[str] = set()

    def add_listener(self, listener: ScopeListener) -> None:
        self._listeners.append(listener)

    def current(self) -> str:
        return self._stack[-1].name if self._stack else ROOT

    @property
    def phase(self) -> Phase:
        return self._stack[-1].phase if self._stack else "forward"

    def depth_of(self, name: str) -> int:
        return 0 if name == ROOT else name.count(".") + 1

    def __enter__(self) -> ModuleScopes:
        hooks: list[tuple[Callable[..., RemovableHandle], Callable[..., Any]]] = [
            (module_hooks.register_module_forward_pre_hook, self._forward_pre),
            (module_hooks.register_module_forward_hook, self._forward_post),
        ]
        if self._backward:
            hooks += [
                (module_hooks.register_module_full_backward_pre_hook, self._backward_pre),
                (module_hooks.register_module_full_backward_hook, self._backward_post),
            ]
        self._handles = [register(hook) for register, hook in hooks]
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        for message in _HOOK_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        while self._stack:  # an exception can leave scopes open; close them for the listeners
            self._pop(self._stack[-1].name, self._stack[-1].phase)
        self._warnings.__exit__(None, None, None)

    # The hooks return None: a forward hook returning a value would replace the module's output.
    def _forward_pre(self, module: nn.Module, args: Any) -> None:
        name = self._names.get(id(module))
        if name is not None:
            if name not in self._seen:
                self._seen.add(name)
                self.order.append(name)
            self._push(name, "forward")

    def _forward_post(self, module: nn.Module, args: Any, output: Any) -> None:
        name = self._names.get(id(module))
        if name is not None:
            self._pop(name, "forward")

    def _backward_pre(self, module: nn.Module, grad_output: Any) -> None:
        name = self._names.get(id(module))
        if name is not None:
            self._push(name, "backward")

    def _backward_post(self, module: nn.Module, grad_input: Any, grad_output: Any) -> None:
        name = self._names.get(id(module))
        if name is not None:
            self._pop(name, "backward")

    def _push(self, name: str, phase: Phase) -> None:
        label = None
        if self._record_labels:
            label = torch.autograd.profiler.record_function(LABEL_PREFIX + name)
            label.__enter__()
        self._stack.append(_Frame(name, phase, label))
        for listener in self._listeners:
            listener.on_enter(name, phase)

    def _pop(self, name: str, phase: Phase) -> None:
        # Normally the top frame. A module whose inputs need no gradient gets its backward
        # post-hook straight after its pre-hook, so frames are matched by name, not position.
        for index in range(len(self._stack) - 1, -1, -1):
            frame = self._stack[index]
            if frame.name == name and frame.phase == phase:
                break
        else:
            return
        while len(self._stack) > index:
            frame = self._stack.pop()
            for listener in self._listeners:
                listener.on_exit(frame.name, frame.phase)
            if frame.label is not None:
                frame.label.__exit__(None, None, None)
