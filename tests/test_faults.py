"""Telling faults apart: out of memory, non-finite outputs, SIGTERM."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from attnprof.errors import Terminated, UserCodeError
from attnprof.profiling.faults import free_memory, out_of_memory, out_of_memory_reason, raise_on_sigterm


def _raised(function: object) -> BaseException:
    try:
        function()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("nothing raised")


def test_real_cpu_allocation_failure_is_out_of_memory() -> None:
    exc = _raised(lambda: torch.empty(2**50, dtype=torch.uint8))
    assert type(exc) is RuntimeError  # torch's CPU allocator raises a plain RuntimeError
    assert out_of_memory(exc) is exc
    assert out_of_memory_reason(exc).startswith("out of memory: [enforce fail")


def test_cuda_out_of_memory_and_memory_error() -> None:
    assert out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert isinstance(out_of_memory(_raised(lambda: bytearray(2**62))), MemoryError)
    assert out_of_memory_reason(MemoryError()) == "out of memory: MemoryError"


def test_out_of_memory_wrapped_as_a_user_code_error_is_still_found() -> None:
    def user_forward() -> None:
        try:
            torch.empty(2**50, dtype=torch.uint8)
        except RuntimeError as exc:
            raise UserCodeError("the model's forward raised RuntimeError") from exc

    wrapped = _raised(user_forward)
    assert isinstance(wrapped, UserCodeError) and type(out_of_memory(wrapped)) is RuntimeError
    assert out_of_memory_reason(wrapped).startswith("out of memory: [enforce fail at alloc_cpu.cpp")


def test_other_errors_are_not_out_of_memory() -> None:
    assert out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))  # torch < 1.13
    assert out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert out_of_memory(ValueError("memory")) is None


def test_free_memory_releases_what_a_failed_attempt_held() -> None:
    import gc
    import weakref

    class Holder:
        pass

    holder = Holder()
    holder.cycle = holder  # only the cycle collector frees it
    alive = weakref.ref(holder)
    del holder
    gc.disable()
    try:
        assert alive() is not None
        free_memory()
        assert alive() is None
    finally:
        gc.enable()


def test_sigterm_unwinds_like_ctrl_c_with_exit_code_143() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    raise_on_sigterm()
    cleaned_up = False
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            finally:
                cleaned_up = True
        assert isinstance(caught.value, Terminated) and caught.value.exit_code == 143
        assert cleaned_up
    finally:
        signal.signal(signal.SIGTERM, previous)
