"""Step and per-layer timing.

Step times come from plain steps with no hooks installed, so the reported step time is not
distorted by instrumentation; per-layer times come from separate hooked steps interleaved with
the plain ones (so slow drift affects both alike). On CPU a layer's time is the wall time
between its scope opening and closing; `self` time subtracts the time spent in child scopes.
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
class _OpenScope:
    start: float
    child_time: float = 0.0


@dataclass
class LayerTimes:
    """Per-step accumulations of one hooked step: inclusive and self seconds per (module, phase)."""

    inclusive: dict[tuple[str, Phase], float] = field(default_factory=lambda: defaultdict(float))
    self_time: dict[tuple[str, Phase], float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[tuple[str, Phase], int] = field(default_factory=lambda: defaultdict(int))


class WallClockLayerTimer:
    """A ModuleScopes listener that accumulates wall time per module for the current step."""

    def __init__(self) -> None:
        self._open: list[_OpenScope] = []
        self.times = LayerTimes()
        self._clock = time.perf_counter

    def reset(self) -> None:
        self._open.clear()
        self.times = LayerTimes()

    def on_enter(self, name: str, phase: Phase) -> None:
        self._open.append(_OpenScope(self._clock()))

    def on_exit(self, name: str, phase: Phase) -> None:
        scope = self._open.pop()
        elapsed = self._clock() - scope.start
        key = (name, phase)
        self.times.inclusive[key] += elapsed
        self.times.self_time[key] += elapsed - scope.child_time
        self.times.calls[key] += 1
        if self._open:
            self._open[-1].child_time += elapsed


def time_call(step: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of one synchronised call of `step`."""
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start
