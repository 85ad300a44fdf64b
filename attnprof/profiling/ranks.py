"""A profile taken on one rank of a torch.distributed run: where the rank sits, and the time its
collectives take per module (measured in steps of their own, see measure/collectives.py).

A rank that runs one stage of a pipeline (`PipelineStage`, which plans/pipeline.py's model
is) is timed by whole pipeline steps like any rank, and also by its own stage's compute: the
stage module's forward over a step's micro-batches, which starts after its inputs arrived and
ends before its outputs are sent, so it holds no waiting."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from attnprof.measure.collectives import CollectiveTimer
from attnprof.measure.scopes import ModuleScopes
from attnprof.measure.sharded import global_numel
from attnprof.profiling.records import LayerStats, RankInfo


def distributed() -> bool:
    """True on a rank of an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@runtime_checkable
class PipelineStage(Protocol):
    """A model that runs one stage of a pipeline on this rank."""

    stage_index: int  # this rank's stage, 0 first
    stage: nn.Module  # the stage's own computation, called once per micro-batch


def stage_compute_ms(model: nn.Module, stage: nn.Module, layers: list[LayerStats]) -> float | None:
    """The `stage` module's forward time over a step (its calls for every micro-batch summed)."""
    name = next(name for name, module in model.named_modules() if module is stage)
    row = next((layer for layer in layers if layer.name == name), None)
    return row.time_ms.median if row is not None and row.time_ms is not None else None


def whole_pipeline_numel(model: nn.Module) -> int:
    """Parameters of every stage together (a collective: every rank calls it at the same point)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # NCCL reduces GPU tensors
    total = torch.tensor([global_numel(model)], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def mesh_of(model: nn.Module) -> tuple[list[int], list[str]]:
    """The largest device mesh the model's parameters are sharded over; the flat group if none."""
    meshes = [p.device_mesh for p in model.parameters() if isinstance(p, DTensor)]
    if not meshes:
        return [dist.get_world_size()], []
    mesh = max(meshes, key=lambda m: m.ndim)
    return list(mesh.shape), list(mesh.mesh_dim_names or ())


def rank_info(
    model: nn.Module, plan: str | None, calls: dict[str, int], stage_compute_ms: float | None = None
) -> RankInfo:
    mesh, dims = mesh_of(model)
    return RankInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        backend=str(dist.get_backend()),
        mesh=mesh,
        mesh_dims=dims,
        plan=plan,
        global_params=whole_pipeline_numel(model) if isinstance(model, PipelineStage) else global_numel(model),
        collective_calls=calls,
        pipeline_stage=model.stage_index if isinstance(model, PipelineStage) else None,
        stage_compute_ms=stage_compute_ms,
    )


@dataclass
class CollectiveResult:
    per_module_ms: dict[str, float]  # own collectives, forward + backward, median over steps
    step_ms: float  # all collectives of a step, median
    calls: dict[str, int]  # per collective, in one step


def collective_pass(model: nn.Module, step: Callable[[], Any], steps: int, train: bool) -> CollectiveResult:
    """`steps` steps with every collective timed and booked on the module that issued it.

    Every rank runs the same number of steps, so the collectives pair up across ranks."""
    samples: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    calls: dict[str, int] = {}
    for _ in range(steps):
        with ModuleScopes(model, backward=train) as scopes, CollectiveTimer(scopes.site) as timer:
            step()
        per_module: dict[str, float] = defaultdict(float)
        for (name, _phase), seconds in timer.seconds.items():
            per_module[name] += 1e3 * seconds
        for name, ms in per_module.items():
            samples[name].append(ms)
        totals.append(1e3 * timer.total_seconds())
        calls = dict(timer.by_kind)
    # A module with collectives in only some steps had none (0 ms) in the others.
    return CollectiveResult(
        per_module_ms={name: statistics.median(ms + [0.0] * (steps - len(ms))) for name, ms in samples.items()},
        step_ms=statistics.median(totals) if totals else 0.0,
        calls=calls,
    )
