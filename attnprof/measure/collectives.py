"""Time spent in torch.distributed collectives, per module and phase.

While a `CollectiveTimer` is active, the collectives torch.distributed exposes in Python (the
c10d calls FSDP2 and pipelining issue, the functional collectives DTensor redistribution
issues) are wrapped: each call is timed until its result is complete (an async call is waited
for inside the timer, so what is booked is the whole transfer, not its launch) and booked on the
module and phase `site()` names. Nested calls (a collective built from another) count once.
DDP's gradient all-reduce runs inside its C++ reducer and is not seen.

Waiting at once removes any overlap of communication with compute, so the timer runs in its
own step, never in the steps whose time the profile reports.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any

import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.distributed.distributed_c10d as c10d

from attnprof.measure.scopes import Site

# The collectives, by the module they are called through (DTensor calls `funcol.<name>`, FSDP2
# and pipelining `dist.<name>`; torch.distributed re-exports c10d's functions). FSDP2 in torch
# 2.13 all-gathers and reduce-scatters with the `*_single` functions; a name this torch lacks is skipped.
C10D_CALLS = (
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "reduce_scatter",
    "reduce_scatter_tensor", "reduce_scatter_single", "all_gather_coalesced", "all_reduce_coalesced",
    "all_to_all_single", "broadcast", "scatter", "gather", "send", "recv", "isend", "irecv",
    "batch_isend_irecv",
)
FUNCTIONAL_CALLS = (
    "all_reduce", "all_gather_tensor", "all_gather_single", "all_gather_inplace", "reduce_scatter_tensor",
    "reduce_scatter_single", "all_to_all_single", "broadcast", "all_gather_tensor_autograd",
    "reduce_scatter_tensor_autograd", "all_reduce_coalesced", "all_gather_into_tensor_coalesced",
    "reduce_scatter_tensor_coalesced", "permute_tensor",
)
PATCHED: tuple[tuple[ModuleType, tuple[str, ...]], ...] = (
    (c10d, C10D_CALLS), (dist, C10D_CALLS), (funcol, FUNCTIONAL_CALLS),
)


def _complete(result: Any) -> None:
    """Wait for whatever a collective returned: a Work, a list of them, an async tensor."""
    if isinstance(result, dist.Work | funcol.AsyncCollectiveTensor):
        result.wait()
    elif isinstance(result, list | tuple):
        for item in result:
            _complete(item)


class CollectiveTimer(AbstractContextManager["CollectiveTimer"]):
    """Seconds and calls of collectives per (module, phase) while active."""

    def __init__(self, site: Callable[[], Site]) -> None:
        self.site = site
        self.seconds: dict[Site, float] = defaultdict(float)
        self.calls: dict[Site, int] = defaultdict(int)
        self.by_kind: dict[str, int] = defaultdict(int)
        self._saved: list[tuple[ModuleType, str, Any]] = []
        self._depth = 0

    def __enter__(self) -> CollectiveTimer:
        wrapped: dict[int, Any] = {}  # one wrapper per function, whichever module it is reached through
        for module, names in PATCHED:
            for name in names:
                original = getattr(module, name, None)
                if original is None:
                    continue
                if id(original) not in wrapped:
                    wrapped[id(original)] = self._wrap(name, original)
                self._saved.append((module, name, original))
                setattr(module, name, wrapped[id(original)])
        return self

    def __exit__(self, *exc: object) -> None:
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return original(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                result = original(*args, **kwargs)
                _complete(result)
            finally:
                self._depth -= 1
            site = self.site()
            self.seconds[site] += time.perf_counter() - start
            self.calls[site] += 1
            self.by_kind[name] += 1
            return result

        return timed

    def total_seconds(self) -> float:
        return sum(self.seconds.values())
