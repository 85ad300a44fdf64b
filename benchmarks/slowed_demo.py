"""The check demo model with a planted slowdown in one block: workload B of benchmarks/check_gate.py.

`SPIN` (or CHECK_GATE_SPIN=N in the environment) adds N iterations of a pure-Python loop at the
end of `layers.1.attn`'s forward: extra time that changes no FLOP count, parameter or tensor, so
only the timing gate can see it (a slower kernel, a stray Python loop). 0 leaves
examples/check_demo_model.py as it is (workload A). `model_file(spin)` is this model as a file of
its own, for a git repository of `check --against-ref` runs.
"""

import importlib.util
import os
from pathlib import Path
from typing import Any

from torch import nn

ENV = "CHECK_GATE_SPIN"
SPIN = 0
SLOWED_LAYER = "layers.1.attn"

_spec = importlib.util.spec_from_file_location(
    "check_demo_model", Path(__file__).parents[1] / "examples" / "check_demo_model.py"
)
assert _spec is not None and _spec.loader is not None
_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_demo)

ATTNPROF = _demo.ATTNPROF
example_inputs = _demo.example_inputs


def spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i
    return total


def add_spin(model: nn.Module, iterations: int) -> nn.Module:
    """`model` with `iterations` of spinning inside SLOWED_LAYER's forward (none for 0)."""
    if iterations:
        layer = model.get_submodule(SLOWED_LAYER)
        forward = layer.forward

        def slower(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            spin(iterations)
            return out

        layer.forward = slower
    return model


def build_model(device: Any, dtype: Any, iterations: int | None = None) -> nn.Module:
    spun = int(os.environ.get(ENV, SPIN)) if iterations is None else iterations
    return add_spin(_demo.build_model(device, dtype), spun)


def model_file(iterations: int) -> str:
    """A model file that is this model with `iterations` of spin, wherever it is written."""
    return (
        '"""The check demo model with a planted slowdown (benchmarks/check_gate.py)."""\n'
        "import importlib.util\n\n"
        f"SPIN = {iterations}\n"
        f"_spec = importlib.util.spec_from_file_location('slowed_demo', {str(Path(__file__).resolve())!r})\n"
        "_slowed = importlib.util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_slowed)\n"
        "ATTNPROF = _slowed.ATTNPROF\n"
        "example_inputs = _slowed.example_inputs\n\n\n"
        "def build_model(device, dtype):\n"
        "    return _slowed.build_model(device, dtype, SPIN)\n"
    )
