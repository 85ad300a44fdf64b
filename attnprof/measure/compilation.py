"""What torch.compile does while a profile runs: compiles, recompiles and their time.

Dynamo calls back at the start and the end of every compile with its compile id ("frame/attempt",
e.g. "0/1": frame 0's second compile, a recompile). `CompileWatch` counts them and times each
from start to end, so that compile time is reported apart from step time and a step that paid
for a compile can be timed again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from attnprof.measure.records import CompileStats

T = TypeVar("T")
RETIMES = 3  # a step is timed again at most this often when compiles keep landing in it


def _frame_and_attempt(compile_id: object) -> tuple[str, int]:
    """("0", 1) from compile id "0/1" (a nested id such as "[0/1]" or "0/1_1" reads alike)."""
    text = str(compile_id).strip("[]").split("_")[0]
    frame, _, attempt = text.rpartition("/")
    try:
        return frame, int(attempt)
    except ValueError:
        return text, 0


class CompileWatch:
    """A context that counts and times the compiles dynamo runs inside it."""

    def __init__(self) -> None:
        self.frames: set[str] = set()
        self.compiles = 0
        self.recompiles = 0
        self.seconds = 0.0
        self.timed_compiles = 0
        self.retimed_steps = 0
        self._started: dict[str, float] = {}

    def _start(self, args: Any) -> None:
        self._started[str(args.compile_id)] = time.perf_counter()

    def _end(self, args: Any) -> None:
        key = str(args.compile_id)
        started = self._started.pop(key, None)
        if started is None:
            return
        self.seconds += time.perf_counter() - started
        frame, attempt = _frame_and_attempt(key)
        self.frames.add(frame)
        self.compiles += 1
        self.recompiles += attempt > 0

    def without_compiles(self, timed: Callable[[], T]) -> T:
        """`timed()`, run again (up to RETIMES times) while a compile lands in it: its result
        never includes compile time."""
        for _ in range(RETIMES):
            before = self.compiles
            result = timed()
            if self.compiles == before:
                return result
            self.timed_compiles += self.compiles - before
            self.retimed_steps += 1
        return timed()

    def __enter__(self) -> CompileWatch:
        import torch._dynamo

        torch._dynamo.callback_handler.register_start_callback(self._start)
        torch._dynamo.callback_handler.register_end_callback(self._end)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        import torch._dynamo

        torch._dynamo.callback_handler.remove_start_callback(self._start)
        torch._dynamo.callback_handler.remove_end_callback(self._end)

    def stats(self) -> CompileStats | None:
        """The record, or None when nothing was compiled."""
        if not self.compiles:
            return None
        return CompileStats(
            frames=len(self.frames),
            compiles=self.compiles,
            recompiles=self.recompiles,
            compile_time_s=self.seconds,
            timed_compiles=self.timed_compiles,
            retimed_steps=self.retimed_steps,
        )
