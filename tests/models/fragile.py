"""A model that fails, at sequence length 16 and above, in the way ATTNPROF_TEST_FAULT names:

  hang      sleeps for an hour             segfault  reads address 0 (SIGSEGV)
  abort     calls abort() (SIGABRT)        oom       asks the CPU allocator for 1 EiB (real error)
  nan       returns NaN

Shorter sequences run normally. ATTNPROF_TEST_FAULT=slow makes every forward take 50 ms;
ATTNPROF_TEST_LOG names a file where each configuration measured appends a line. Every model
built is kept in LIVE (weakly), so a test can tell whether a failed attempt's model was freed.
"""

import ctypes
import os
import time
import weakref

import torch
from torch import nn

FAULT_FROM_SEQ_LEN = 16
LIVE = weakref.WeakSet()


class Fragile(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        LIVE.add(self)

    def forward(self, x):
        fault = os.environ.get("ATTNPROF_TEST_FAULT", "")
        if fault == "slow":
            time.sleep(0.05)
        if x.shape[1] >= FAULT_FROM_SEQ_LEN:
            if fault == "hang":
                time.sleep(3600)
            elif fault == "segfault":
                ctypes.string_at(0)
            elif fault == "abort":
                os.abort()
            elif fault == "oom":
                torch.empty(1 << 60, dtype=torch.uint8)
            elif fault == "nan":
                return self.proj(x) * float("nan")
        return self.proj(x)


def build_model(device, dtype):
    return Fragile().to(device=device, dtype=dtype)


def example_inputs(batch_size, seq_len, device, dtype):
    if os.environ.get("ATTNPROF_TEST_LOG"):
        with open(os.environ["ATTNPROF_TEST_LOG"], "a") as log:
            log.write(f"{batch_size},{seq_len},{dtype}\n")
    return (torch.randn(batch_size, seq_len, 8, device=device, dtype=dtype),)
