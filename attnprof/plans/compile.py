"""The compile knob: the model's transformer blocks compiled by torch.compile (inductor).

Regions, not the whole model: each block's `forward` is replaced by its compiled version on the
instance. Identical blocks share one compiled graph (parameters are graph inputs), so compile
time grows with one block rather than with depth; and the module calls around a block — its own
forward hooks, the profiler's per-block times, the sdpa_kernel scope of a backend plan — stay
outside the compiled code and keep working. A model without recognised blocks is compiled whole.
"""

from __future__ import annotations

import torch
from torch import nn

from attnprof.plans.discover import Discovery
from attnprof.targets.workload import compiled_forward


def compile_blocks(model: nn.Module, found: Discovery) -> list[str]:
    """Compile each block's forward (the model's when it has no blocks); returns what was done."""
    paths = found.blocks() or [""]
    modules = dict(model.named_modules())
    compiled = 0
    for path in paths:
        module = modules[path]
        if not compiled_forward(module):
            module.forward = torch.compile(module.forward)
            compiled += 1
    where = f"{len(paths)} transformer block(s)" if paths != [""] else "the whole model (no blocks recognised)"
    return [f"torch.compile (inductor) on {where}; compiled on the first call"] if compiled else []
