"""Values of small meta tensors whose contents are determined, for exact dry runs.

A model run on the meta device has shapes but no data, yet the attention masks it builds
(`ones(...).tril()`, `arange` comparisons, `masked_fill(-inf)` ...) follow from sizes and
constants alone. While a dry run is counted, every op that produces a small meta tensor from
known inputs (factories with fixed contents, or ops whose tensor inputs all have known values)
is replayed on CPU copies, so mask-aware attention counting works on meta exactly as on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakTensorKeyDictionary

aten = torch.ops.aten

# Factories whose contents are fixed by their arguments (random and `empty` ones are not).
_FIXED_FACTORIES = {
    aten.arange,
    aten.ones,
    aten.zeros,
    aten.full,
    aten.scalar_tensor,
    aten.eye,
    aten.ones_like,
    aten.zeros_like,
    aten.full_like,
    aten.new_ones,
    aten.new_zeros,
    aten.new_full,
}

# Keeps replays cheap: masks are (q_len, kv_len)-sized, activations are far larger.
DEFAULT_MAX_ELEMENTS = 1 << 24


def _to_cpu_device(value: Any) -> Any:
    if isinstance(value, torch.device) and value.type == "meta":
        return torch.device("cpu")
    return value


class MetaValues:
    """CPU copies of meta tensors with known contents, keyed weakly by the meta tensor."""

    def __init__(self, max_elements: int = DEFAULT_MAX_ELEMENTS) -> None:
        self.max_elements = max_elements
        self._values: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def value(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The tensor's contents: itself off meta, its replayed copy on meta, None when unknown."""
        if tensor.device.type != "meta":
            return tensor
        return self._values.get(tensor)

    def observe(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """Replay `func` on CPU when its meta output is small and its inputs are known."""
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.device.type == "meta"]
        written = _written_tensors(func, args, kwargs)
        if not outputs and not written:
            return
        replayed = self._replay(func, args, kwargs, outputs + written)
        if replayed is None:
            for tensor in written:  # an in-place op with an unknown input: contents now unknown
                self._values.pop(tensor, None)
            return
        if not _schema_mutates(func):
            for meta, value in zip(tree_flatten(out)[0], tree_flatten(replayed)[0], strict=False):
                if _same_shaped_meta(meta, value):
                    self._values[meta] = value

    def _replay(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], produced: list[torch.Tensor]
    ) -> Any | None:
        if any(t.numel() > self.max_elements for t in produced):
            return None
        missing = False

        def known(value: Any) -> Any:
            nonlocal missing
            if isinstance(value, torch.Tensor):
                if value.device.type != "meta":
                    return value
                found = self._values.get(value)
                if found is None:
                    missing = True
                return found
            return _to_cpu_device(value)

        if func.overloadpacket in _FIXED_FACTORIES:
            cpu_args, cpu_kwargs = tree_map(known, args), tree_map(known, kwargs)
            if func.overloadpacket in {aten.ones_like, aten.zeros_like, aten.full_like}:
                missing = False  # only the template's shape matters
                cpu_args = (torch.empty(args[0].shape, dtype=args[0].dtype), *cpu_args[1:])
            elif func.overloadpacket in {aten.new_ones, aten.new_zeros, aten.new_full}:
                missing = False
                cpu_args = (torch.empty(0, dtype=args[0].dtype), *cpu_args[1:])
        else:
            tensor_inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            if not tensor_inputs:
                return None  # a factory we do not know to be deterministic
            cpu_args, cpu_kwargs = tree_map(known, args), tree_map(known, kwargs)
        if missing:
            return None
        try:
            return func(*cpu_args, **cpu_kwargs)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            return None  # an op with no CPU kernel for these arguments: its value stays unknown


class ValueRecorder(TorchDispatchMode):
    """Records known meta values while a model or its inputs are built (before any counting)."""

    def __init__(self, values: MetaValues) -> None:
        super().__init__()
        self.values = values

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.values.observe(func, args, kwargs, out)
        return out


def _same_shaped_meta(meta: Any, value: Any) -> bool:
    return (
        isinstance(meta, torch.Tensor)
        and isinstance(value, torch.Tensor)
        and meta.device.type == "meta"
        and tuple(meta.shape) == tuple(value.shape)
    )


def _schema_mutates(func: Any) -> bool:
    return any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments)


def _written_tensors(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    written = []
    for position, argument in enumerate(func._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = kwargs.get(argument.name, args[position] if position < len(args) else None)
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            written.append(value)
    return written
