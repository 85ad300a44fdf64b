"""Run a model's forward inside context managers (autocast, sdpa_kernel, matmul precision)
without touching its class: the instance's `forward` is wrapped once, and the scopes stack."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

from torch import nn

ScopeFactory = Callable[[], contextlib.AbstractContextManager[Any]]

_SCOPES_ATTRIBUTE = "_attnprof_forward_scopes"


def add_forward_scope(module: nn.Module, factory: ScopeFactory) -> None:
    """Enter `factory()` around every call of `module.forward` (hooks keep running outside it)."""
    scopes: list[ScopeFactory] | None = module.__dict__.get(_SCOPES_ATTRIBUTE)
    if scopes is None:
        scopes = []
        original = module.forward

        @functools.wraps(original)
        def forward(*args: Any, **kwargs: Any) -> Any:
            with contextlib.ExitStack() as stack:
                for make in scopes:
                    stack.enter_context(make())
                return original(*args, **kwargs)

        module.forward = forward
        module.__dict__[_SCOPES_ATTRIBUTE] = scopes
    scopes.append(factory)
