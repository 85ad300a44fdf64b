"""Values of small meta tensors whose contents are determined, for exact dry runs.

A model run on the meta device has shapes but no data, yet the attention masks it builds
(`ones(...).tril()`, `arange` comparisons, `masked_fill(-inf)` ...) follow from sizes and
constants alone. While a dry run is counted, every op that produces a small meta tensor from
known inputs (factories with fixed contents, or ops whose tensor inputs all have known values)
is replayed on CPU copies, so mask-aware attention counting works on meta exactly as on CPU.

Models also *read* such values: transformers checks `attention_mask.all()`, turns a padding
mask into lengths with `.tolist()`, slices by `cache_position[-1]`. A meta tensor has no data
to read, so `MetaValues.call` answers those reads (`aten._local_scalar_dense`) from the
replayed copy, and runs ops whose meta kernel cannot know its output's shape (`nonzero`,
boolean indexing) on the CPU copies, returning meta tensors of the shapes they produced. A
read of a value that is truly unknown (computed from weights or activations) is one clear
error, not the meta kernel's.

Some masks mix known structure with unknown values: T5 and DeBERTa add a learned position bias
to a padding or causal mask (`bias + mask`, `where(causal, bias, finfo.min)`). Which pairs such
a mask hides is still known, on the one assumption that values computed from weights or
activations are never at or below the masking cut (-1e4). For those tensors the pattern of
hidden pairs is kept, and `value` returns a stand-in mask (0 kept, -inf hidden) that the
attention counters read as they read a real one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakTensorKeyDictionary

from attnprof.errors import UsageError
from attnprof.measure.attention_math import MASKED_AT_OR_BELOW

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
        self._keeps: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # meta tensor -> CPU bool "not hidden"

    def value(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The tensor's contents: itself off meta, its replayed copy on meta, a stand-in mask when
        only its hidden pairs are known, None when unknown."""
        if tensor.device.type != "meta":
            return tensor
        known = self._values.get(tensor)
        if known is not None:
            return known
        keep = self._keeps.get(tensor)
        if keep is None or not tensor.is_floating_point():
            return None
        standin = torch.zeros((), dtype=tensor.dtype).masked_fill(~keep, float("-inf")) if keep.dim() == 0 else \
            torch.where(keep, 0.0, float("-inf")).to(tensor.dtype)
        return standin.expand(tensor.shape)

    def adopt(self, tree: Any) -> Any:
        """`tree` with its CPU tensors moved to meta, their values known: inputs given as CPU
        tensors (a padding mask, position ids) to a model on the meta device."""

        def to_meta(value: Any) -> Any:
            if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
                return value
            meta = value.to("meta")
            if value.numel() <= self.max_elements:
                self._values[meta] = value
            return meta

        return tree_map(to_meta, tree)

    def call(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run `func`, answering from known values what a meta kernel cannot: scalar reads of meta
        tensors, and ops whose output shape depends on the data."""
        if func is aten._local_scalar_dense.default and _is_meta(args[0]):
            known = self._values.get(args[0])
            if known is None:
                raise UsageError(
                    "--device meta: the model reads a value it computed from weights or activations "
                    "(Tensor.item(), .tolist() or bool()), which a dry run does not have; profile on cpu"
                )
            return known.item()
        try:
            return func(*args, **kwargs)
        except (NotImplementedError, RuntimeError):
            if not any(_is_meta(t) for t in tree_flatten((args, kwargs))[0]):
                raise
            replayed = self._replay_any(func, args, kwargs)
            if replayed is None:
                raise
        # The meta kernel could not size the output: the CPU result gives its shapes and values.
        out = tree_map(lambda v: torch.empty_like(v, device="meta") if isinstance(v, torch.Tensor) else v, replayed)
        for meta, value in zip(tree_flatten(out)[0], tree_flatten(replayed)[0], strict=True):
            if isinstance(meta, torch.Tensor):
                self._values[meta] = value
        return out

    # --- masks whose hidden pairs are known, their values not ---------------------------------

    def _keep_of(self, value: Any) -> torch.Tensor | None:
        """Where `value` does not hide pairs: from its value, its known pattern, or (a tensor
        computed from data) everywhere — None then, meaning "hides nothing known"."""
        if isinstance(value, torch.Tensor):
            known = self._values.get(value) if _is_meta(value) else value
            if known is not None:
                return known > MASKED_AT_OR_BELOW if known.is_floating_point() else None
            return self._keeps.get(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return torch.tensor(float(value) > MASKED_AT_OR_BELOW)
        return None

    def _keep_after(self, func: Any, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        """The keep pattern of an op's output from the patterns and values of its inputs."""
        if not out.is_floating_point() or out.numel() > self.max_elements:
            return None
        packet = func.overloadpacket
        if packet in _KEEP_UNCHANGED or (packet in _KEEP_POSITIVE_SCALE and _positive_scalar(args[1])):
            return self._keeps.get(args[0]) if isinstance(args[0], torch.Tensor) else None
        if func.is_view and isinstance(args[0], torch.Tensor) and args[0] in self._keeps:
            try:
                return func(self._keeps[args[0]].expand(args[0].shape), *tree_map(_to_cpu_device, args[1:]))
            except (RuntimeError, TypeError, ValueError):
                return None
        if packet in _KEEP_BOTH and len(args) >= 2:
            keeps = [self._keep_of(value) for value in args[:2]]
            if all(keep is None for keep in keeps):
                return None
            present = [keep for keep in keeps if keep is not None]
            return present[0] & present[1] if len(present) == 2 else present[0]
        if packet is aten.where and len(args) == 3:
            condition = self._values.get(args[0]) if _is_meta(args[0]) else args[0]
            if not isinstance(condition, torch.Tensor):
                return None
            kept = [self._keep_of(value) for value in args[1:]]
            if all(keep is None for keep in kept):
                return None
            yes, no = (torch.tensor(True) if keep is None else keep for keep in kept)
            return torch.where(condition.to(torch.bool), yes, no)
        if packet in _MASKED_FILL and len(args) == 3:
            mask = self._values.get(args[1]) if _is_meta(args[1]) else args[1]
            fill = self._keep_of(args[2])
            if not isinstance(mask, torch.Tensor) or fill is None:
                return None
            base = self._keep_of(args[0])
            return torch.where(mask.to(torch.bool), fill, torch.tensor(True) if base is None else base)
        return None

    def _replay_any(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any | None:
        """`func` on the CPU copies of its inputs, whatever its output size; None when an input is unknown."""
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(_is_meta(t) and self._values.get(t) is None for t in inputs):
            return None
        cpu_args, cpu_kwargs = tree_map(self._cpu_value, (args, kwargs))
        try:
            return func(*cpu_args, **cpu_kwargs)
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            return None

    def _cpu_value(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self._values.get(value) if _is_meta(value) else value
        return _to_cpu_device(value)

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
                self._keeps.pop(tensor, None)
            if len(outputs) == 1 and not written:
                keep = self._keep_after(func, args, outputs[0])
                if keep is not None:
                    self._keeps[outputs[0]] = keep
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


class MetaConstants(TorchFunctionMode):
    """`torch.tensor(data, device="meta")` and its kin copy Python data into a tensor without an
    aten op the dispatcher sees: they are built on CPU here and moved to meta, values recorded."""

    def __init__(self, values: MetaValues | None = None) -> None:
        super().__init__()
        self.values = values

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if (self.values is not None and func in _CONSTRUCTORS and device is not None
                and torch.device(device).type == "meta"):
            value = func(*args, **{**kwargs, "device": "cpu"})
            return self.values.adopt(value)
        return func(*args, **kwargs)


_CONSTRUCTORS = {torch.tensor, torch.as_tensor, torch.asarray}


class ValueRecorder(TorchDispatchMode):
    """Records known meta values while a model or its inputs are built (before any counting)."""

    def __init__(self, values: MetaValues) -> None:
        super().__init__()
        self.values = values
        self._constants = MetaConstants(values)

    def __enter__(self) -> ValueRecorder:
        self._constants.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._constants.__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = self.values.call(func, args, kwargs)
        self.values.observe(func, args, kwargs, out)
        return out


# How ops carry a keep pattern: copies keep it, sums hide what either side hides, scaling by a
# positive number keeps very negative values very negative.
_KEEP_UNCHANGED = {aten._to_copy, aten.clone, aten.contiguous, aten.detach, aten.alias, aten.lift_fresh}
_KEEP_POSITIVE_SCALE = {aten.mul, aten.div}
_KEEP_BOTH = {aten.add, aten.sub}
_MASKED_FILL = {aten.masked_fill}


def _positive_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _is_meta(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "meta"


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
