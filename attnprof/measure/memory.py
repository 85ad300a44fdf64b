"""Exact activation memory per module, from the tensors the step allocates.

A TorchDispatchMode sees every op's outputs; each new storage is counted as live until its
Python storage object is finalised (PyTorch keeps one Python object per storage, so the
finaliser fires when the memory is released). The live total is exact for tensors created
during the step, on any device; parameters and buffers that existed before are counted once
at the start. For each module the peak of the live total above its level at entry is kept:
the activation memory the module needs, children included.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnprof.measure.scopes import Phase
from attnprof.measure.sharded import defers_to_shards, is_propagation, local


class LiveMemoryTracker(TorchDispatchMode):
    """Tracks live bytes of step-allocated storages; doubles as a ModuleScopes listener."""

    supports_higher_order_operators = True  # flex_attention runs as one op; its outputs are tracked alike

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: dict[int, int] = {}
        self._open: list[tuple[str, int]] = []  # (module path, live bytes at entry)
        self._open_peaks: list[int] = []
        self.module_peak: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if defers_to_shards(types):
            return NotImplemented  # tracked on this rank's shards (measure/sharded.py)
        out = func(*args, **(kwargs or {}))
        if is_propagation(args, kwargs):
            return out
        # Views and in-place ops return storages of their inputs: those are not new memory.
        inputs = {id(s) for s in map(_storage_of, tree_flatten((args, kwargs))[0]) if s is not None}
        for value in tree_flatten(out)[0]:
            storage = _storage_of(value)
            if storage is not None and id(storage) not in inputs:
                self._track(storage)
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        size = storage.nbytes()
        key = id(storage)
        if size == 0 or key in self._live:
            return
        self._live[key] = size
        weakref.finalize(storage, self._release, key)
        self.live_bytes += size
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
        for index, peak in enumerate(self._open_peaks):
            if self.live_bytes > peak:
                self._open_peaks[index] = self.live_bytes

    def _release(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key, 0)

    def on_enter(self, name: str, phase: Phase) -> None:
        self._open.append((name, self.live_bytes))
        self._open_peaks.append(self.live_bytes)

    def on_exit(self, name: str, phase: Phase) -> None:
        opened_name, at_entry = self._open.pop()
        peak = self._open_peaks.pop()
        if phase == "forward":
            self.module_peak[opened_name] = max(self.module_peak[opened_name], peak - at_entry)


def _storage_of(value: Any) -> torch.UntypedStorage | None:
    if not isinstance(value, torch.Tensor):
        return None
    try:
        return value.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None  # tensor subclasses without a storage


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes this rank holds of a module's parameters and buffers (each storage counted once; a
    DTensor by its local shard)."""
    seen: set[int] = set()
    total = 0
    for tensor in map(local, [*module.parameters(), *module.buffers()]):
        if tensor.device.type == "meta":
            total += tensor.numel() * tensor.element_size()
            continue
        storage = tensor.untyped_storage()
        if id(storage) not in seen:
            seen.add(id(storage))
            total += storage.nbytes()
    return total


@dataclass
class _AllocatorFrame:
    name: str
    phase: Phase
    at_entry: int
    peak: int


class CudaAllocatorTracker:
    """Per-module peak of the CUDA caching allocator above its level at entry (a ScopeListener).

    The allocator keeps one peak counter per device. At every scope boundary the counter is
    folded into every open scope and then reset, so each nested scope gets the exact peak of
    its own lifetime. This sees what the device really held: workspaces and kernel-internal
    buffers that never appear as op outputs included. All host-side calls: no synchronisation.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._open: list[_AllocatorFrame] = []
        self.module_peak: dict[str, int] = defaultdict(int)
        self.step_peak = 0  # bytes allocated at the step's high-water mark, everything included

    def start(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step_peak = torch.cuda.memory_allocated(self.device)

    def _fold(self) -> None:
        peak = torch.cuda.max_memory_allocated(self.device)
        for frame in self._open:
            frame.peak = max(frame.peak, peak)
        self.step_peak = max(self.step_peak, peak)
        torch.cuda.reset_peak_memory_stats(self.device)

    def finish(self) -> int:
        self._fold()
        return self.step_peak

    def on_enter(self, name: str, phase: Phase) -> None:
        self._fold()
        level = torch.cuda.memory_allocated(self.device)
        self._open.append(_AllocatorFrame(name, phase, level, level))

    def on_exit(self, name: str, phase: Phase) -> None:
        self._fold()
        frame = self._open.pop()
        if phase == "forward":
            self.module_peak[name] = max(self.module_peak[name], frame.peak - frame.at_entry)
