"""Faults a measurement can hit, told apart so that a sweep records them and goes on.

- out of memory (CUDA's OutOfMemoryError, the CPU allocator's error, Python's MemoryError):
  the configuration is infeasible; memory is freed before the next one;
- SIGTERM: unwinds like Ctrl-C (finished work is kept, temp files are removed), exit 143.
"""

from __future__ import annotations

import gc
import signal
import sys
from types import FrameType

from attnprof.errors import AttnprofError, OutOfMemory, Terminated

# Allocator failures torch raises as a plain RuntimeError (the CPU allocator's "can't allocate
# memory", older CUDA and HIP builds' "out of memory"), matched in lower case.
_ALLOCATOR_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "failed to allocate")


def out_of_memory(exc: BaseException) -> BaseException | None:
    """The out-of-memory error `exc` is, or was raised from (e.g. inside a UserCodeError); else None."""
    # torch's exception types exist only once torch is imported; not importing it here keeps
    # processes that never touched torch (an isolated child that failed early) fast.
    torch_module = sys.modules.get("torch")
    oom_types: tuple[type[BaseException], ...] = (MemoryError,)
    if torch_module is not None:
        oom_types += (torch_module.cuda.OutOfMemoryError,)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, oom_types):
            return current
        if isinstance(current, RuntimeError) and any(m in str(current).lower() for m in _ALLOCATOR_MESSAGES):
            return current
        current = current.__cause__ or current.__context__
    return None


def out_of_memory_reason(exc: BaseException) -> str:
    """One line naming the failed allocation, e.g. 'out of memory: CUDA out of memory. Tried to ...'."""
    cause = out_of_memory(exc) or exc
    text = str(cause).strip()
    first_line = text.splitlines()[0] if text else type(cause).__name__
    return f"out of memory: {first_line[:200]}"


def known_failure(exc: Exception) -> AttnprofError | None:
    """The AttnprofError the CLI reports for `exc`: out of memory anywhere (in the user's model
    too) is OutOfMemory (exit 4), not a bug; other AttnprofErrors as they are; else None."""
    if out_of_memory(exc) is not None:
        return OutOfMemory(f"{out_of_memory_reason(exc)}; try a smaller --batch-size or --seq-len")
    return exc if isinstance(exc, AttnprofError) else None


def free_memory() -> None:
    """Give memory held by a failed attempt back: collect its tensors, empty the CUDA cache."""
    gc.collect()
    torch_module = sys.modules.get("torch")
    if torch_module is not None and torch_module.cuda.is_available():
        torch_module.cuda.empty_cache()


def raise_on_sigterm() -> None:
    """Make SIGTERM raise Terminated (a KeyboardInterrupt), so it unwinds like Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
