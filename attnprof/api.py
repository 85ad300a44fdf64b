"""Apply a saved plan to an unmodified model: `model = apply(model, load_plan("plan.json"), inputs)`.

Torch is imported when a function is called, so `import attnprof` stays light.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnprof.errors import PlanRejected

if TYPE_CHECKING:
    from torch import nn

    from attnprof.plans.records import Plan


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON written by `attnprof tune` (exit 2 on a missing, corrupt or newer file)."""
    from attnprof.plans.records import Plan
    from attnprof.store import read_record

    return read_record(Path(path), Plan)


def apply(
    model: nn.Module,
    plan: Plan | str | Path,
    example_inputs: Any = None,
    *,
    loss_fn: Any = None,
    strict: bool = False,
) -> nn.Module:
    """Apply `plan` to `model` and return the model to use (sharding may wrap it).

    `example_inputs` (a tensor, a tuple or list of args, a dict of kwargs, or (args, kwargs); any
    other value is a UsageError) are needed to score heads for pruning and to verify hand-written
    attention before replacing it. What could not be applied is a warning naming each module, or
    with strict=True an error.
    """
    from attnprof.plans.engine import Example, apply_plan

    if isinstance(plan, (str, Path)):
        plan = load_plan(plan)
    example = Example.of(example_inputs) if example_inputs is not None else None
    model, report = apply_plan(model, plan.choices, example, loss_fn)
    if report.not_applied:
        lines = "; ".join(f"{n.module} ({n.type}): {n.what}: {n.reason}" for n in report.not_applied)
        if strict:
            raise PlanRejected(f"parts of the plan could not be applied: {lines}")
        warnings.warn(f"attnprof: parts of the plan could not be applied: {lines}", stacklevel=2)
    return model


def from_pretrained_pruned(model_class: Any, folder: str | Path) -> nn.Module:
    """Load a transformers model that a plan pruned per layer and `save_pretrained` wrote:
    `from_pretrained` alone fails on it (size mismatch), since transformers builds every layer
    from one head count. The heads recorded in `config.pruned_heads` are removed first."""
    from attnprof.plans.reload import from_pretrained_pruned as load

    return load(model_class, folder)
