"""Functions the isolation tests run in a child process, one per way a measurement can end."""

from __future__ import annotations

import ctypes
import os
import time


def square(x: int) -> dict[str, int]:
    return {"square": x * x}


def hang(seconds: float, pid_file: str = "") -> None:
    if pid_file:
        with open(pid_file, "w") as handle:
            handle.write(str(os.getpid()))
    time.sleep(seconds)


def segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def abort() -> None:
    os.abort()


def exit_without_result() -> None:
    os._exit(3)


def allocate_cpu(bytes_: int) -> int:
    import torch

    return torch.empty(bytes_, dtype=torch.uint8).numel()


def cuda_out_of_memory() -> None:
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def python_out_of_memory() -> None:
    bytearray(2**62)


def user_bug() -> None:
    raise ValueError("shapes do not match\nsecond line")
