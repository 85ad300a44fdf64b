"""The check demo model with a known amount of extra work: workload B of benchmarks/check_gate.py.

CHECK_GATE_EXTRA_UNITS=N in the environment adds N 64x64 matrix products in a forward hook on
`layers.1.attn`; 0 or unset leaves examples/check_demo_model.py as it is (workload A). One file
for both, so that interleaved workers differ only in that variable.
"""

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

ENV = "CHECK_GATE_EXTRA_UNITS"
UNIT_SIZE = 64  # one unit of extra work: a 64x64 by 64x64 matrix product

_spec = importlib.util.spec_from_file_location(
    "check_demo_model", Path(__file__).parents[1] / "examples" / "check_demo_model.py"
)
assert _spec is not None and _spec.loader is not None
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)

ATTNPROF = _demo.ATTNPROF
example_inputs = _demo.example_inputs


def extra_work_hook(units: int) -> Any:
    block = torch.randn(UNIT_SIZE, UNIT_SIZE, generator=torch.Generator().manual_seed(0))

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        for _ in range(units):
            torch.mm(block, block)

    return hook


def add_extra_work(model: nn.Module, units: int) -> nn.Module:
    """`model` with `units` of extra work after `layers.1.attn`'s forward (none for 0)."""
    if units:
        model.get_submodule("layers.1.attn").register_forward_hook(extra_work_hook(units))
    return model


def build_model(device: torch.device, dtype: torch.dtype) -> nn.Module:
    return add_extra_work(_demo.build_model(device, dtype), int(os.environ.get(ENV, "0")))
