"""Step and per-layer timing.

Step times come from plain steps with no hooks installed, so the reported step time is not
distorted by instrumentation; per-layer times come from separate hooked steps interleaved with
the plain ones (so slow drift affects both alike). On CPU a layer's time is the host-clock time
between its scope opening and closing; on a GPU it is the time between CUDA events recorded on
the current stream as the scope opens and closes (kernels run asynchronously, so host time
says nothing about them). Backward scopes open and close in autograd-node prehooks, where the
engine has made the node's stream current: their events go on the stream the backward work runs
on. `self` time subtracts the time spent in child scopes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from attnprof.measure.device import synchronize
from attnprof.measure.scopes import Phase


@dataclass
class LayerTimes:
    """Per-step accumulations of one hooked step: inclusive and self seconds per (module, phase)."""

    inclusive: dict[tuple[str, Phase], float] = field(default_factory=lambda: defaultdict(float))
    self_time: dict[tuple[str, Phase], float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[tuple[str, Phase], int] = field(default_factory=lambda: defaultdict(int))

    def add(self, key: tuple[str, Phase], inclusive: float, self_time: float, calls: int = 1) -> None:
        self.inclusive[key] += inclusive
        self.self_time[key] += self_time
        self.calls[key] += calls


def host_clock(clock: str) -> Callable[[], float]:
    """Seconds by the named clock: wall (perf_counter) or cpu (CPU time of all the process's
    threads, which time slicing by other processes does not inflate)."""
    return time.process_time if clock == "cpu" else time.perf_counter


class HostClockLayerTimer:
    """A ModuleScopes listener that accumulates host-clock time per module for the current step.

    It runs inside every scope change of a hooked step, so it only appends and pops plain lists
    there; the per-module sums are made when `times` is read."""

    def __init__(self, clock: str = "wall") -> None:
        self._open: list[list[float]] = []  # [start, time in child scopes] of each open scope
        self._closed: list[tuple[str, Phase, float, float]] = []  # name, phase, inclusive, self
        self._times = LayerTimes()
        self._clock = host_clock(clock)

    def reset(self) -> None:
        self._open.clear()
        self._closed.clear()
        self._times = LayerTimes()

    def on_enter(self, name: str, phase: Phase) -> None:
        self._open.append([self._clock(), 0.0])

    def on_exit(self, name: str, phase: Phase) -> None:
        start, child_time = self._open.pop()
        elapsed = self._clock() - start
        self._closed.append((name, phase, elapsed, elapsed - child_time))
        if self._open:
            self._open[-1][1] += elapsed

    @property
    def times(self) -> LayerTimes:
        for name, phase, inclusive, self_time in self._closed:
            self._times.add((name, phase), inclusive, self_time)
        self._closed.clear()
        return self._times


@dataclass
class _EventScope:
    name: str
    phase: Phase
    start: Any  # torch.cuda.Event
    parent: _EventScope | None
    end: Any = None
    child_time: float = 0.0


class CudaEventLayerTimer:
    """A ModuleScopes listener timing each module with CUDA events on the device's stream.

    Events are only readable once the step's work has finished: `times` resolves them and must
    be read after the device is synchronised (time_call does that). Events are reused between
    steps, since creating one costs more than recording it.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool: list[Any] = []
        self._used: list[Any] = []
        self._open: list[_EventScope] = []
        self._closed: list[_EventScope] = []
        self._times = LayerTimes()

    def reset(self) -> None:
        self._pool.extend(self._used)
        self._used.clear()
        self._open.clear()
        self._closed.clear()
        self._times = LayerTimes()

    def _record(self) -> Any:
        event = self._pool.pop() if self._pool else torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        self._used.append(event)
        return event

    def on_enter(self, name: str, phase: Phase) -> None:
        parent = self._open[-1] if self._open else None
        self._open.append(_EventScope(name, phase, self._record(), parent))

    def on_exit(self, name: str, phase: Phase) -> None:
        scope = self._open.pop()
        scope.end = self._record()
        self._closed.append(scope)

    @property
    def times(self) -> LayerTimes:
        if self._closed:
            elapsed = {id(s): s.start.elapsed_time(s.end) / 1e3 for s in self._closed}  # ms -> s
            for scope in self._closed:
                if scope.parent is not None:
                    scope.parent.child_time += elapsed[id(scope)]
            for scope in self._closed:
                self._times.add((scope.name, scope.phase), elapsed[id(scope)], elapsed[id(scope)] - scope.child_time)
            self._closed.clear()
        return self._times


def layer_timer(device: torch.device, clock: str = "wall") -> HostClockLayerTimer | CudaEventLayerTimer:
    return CudaEventLayerTimer(device) if device.type == "cuda" else HostClockLayerTimer(clock)


def time_call(step: Callable[[], Any], device: torch.device, clock: str = "wall") -> float:
    """Seconds of one synchronised call of `step`: CUDA events on a GPU, the host clock otherwise."""
    synchronize(device)
    if device.type == "cuda":
        stream = torch.cuda.current_stream(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        step()
        end.record(stream)
        end.synchronize()
        synchronize(device)  # work on other streams, if the model uses any, is part of the step too
        return start.elapsed_time(end) / 1e3
    now = host_clock(clock)
    start_s = now()
    step()
    return now() - start_s
