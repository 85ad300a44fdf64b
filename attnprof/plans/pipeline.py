"""Pipeline-stage plans on torch.distributed.pipelining: the model is traced and split at block
boundaries into one stage per rank, and a GPipe schedule runs the micro-batches through them.

The cut points balance the stages: `balanced_stages` assigns contiguous blocks to stages so the
slowest stage is as cheap as the per-block costs allow (tune prices plans with the same
assignment). Every rank returns the last stage's output, broadcast from the last rank, so an
applied pipeline is called, compared and profiled like any other model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import ScheduleGPipe, SplitPoint, pipeline

from attnprof.errors import EnvironmentUnsupported, UsageError


def balanced_stages(costs: Sequence[float], stages: int) -> list[int]:
    """Stage index of each layer: contiguous stages minimising the slowest stage's cost.

    Exact dynamic programme over split points (O(n²·stages)), so no stage bounds throughput
    more than the measured per-layer costs force it to.
    """
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} layers into {stages} stages")
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    # best[s][i]: the smallest possible slowest stage when the first i layers form s stages.
    best = [[math.inf] * (n + 1) for _ in range(stages + 1)]
    split = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for i in range(s, n + 1):
            for j in range(s - 1, i):
                value = max(best[s - 1][j], prefix[i] - prefix[j])
                if value < best[s][i]:
                    best[s][i], split[s][i] = value, j
    assignment = [0] * n
    end = n
    for s in range(stages, 0, -1):
        start = split[s][end]
        for i in range(start, end):
            assignment[i] = s - 1
        end = start
    return assignment


def stage_cuts(blocks: Sequence[str], stages: int, costs: Sequence[float] | None = None) -> list[str]:
    """The blocks that begin stages 1..stages-1, balanced over `costs` (equal costs when None)."""
    if not 1 <= stages <= len(blocks):
        raise UsageError(f"the plan splits {len(blocks)} block(s) into {stages} pipeline stages")
    assignment = balanced_stages(list(costs) if costs is not None else [1.0] * len(blocks), stages)
    return [blocks[i] for i in range(1, len(blocks)) if assignment[i] != assignment[i - 1]]


def micro_batches(batch: int, stages: int, micro_batch: int | None) -> int:
    """Micro-batches per step: batch / the plan's micro-batch size, else one per stage, as far as
    the batch divides (the schedule splits it into equal chunks)."""
    wanted = batch // micro_batch if micro_batch and batch % micro_batch == 0 else stages
    return max(d for d in range(1, min(wanted, batch) + 1) if batch % d == 0)


class PipelinedModel(nn.Module):
    """One rank's stage of a pipeline over the whole process group, traced (torch.export) on
    example inputs of the batch it will run; only this rank's stage stays held."""

    def __init__(
        self, model: nn.Module, cuts: Sequence[str], micro_batch: int | None, device: torch.device, args: tuple
    ) -> None:
        super().__init__()
        if not args or not isinstance(args[0], torch.Tensor):
            raise UsageError("a pipeline plan needs example tensor inputs to trace its stages on")
        self.batch = args[0].shape[0]
        self.rank, self.stages = dist.get_rank(), dist.get_world_size()
        self.micro_batches = micro_batches(self.batch, self.stages, micro_batch)
        example = tuple(a.chunk(self.micro_batches)[0] if isinstance(a, torch.Tensor) else a for a in args)
        try:
            pipe = pipeline(model, mb_args=example, split_spec={cut: SplitPoint.BEGINNING for cut in cuts})
        except RuntimeError as exc:  # torch.export could not capture the forward as one graph
            first = str(exc).split(".")[0]
            raise EnvironmentUnsupported(f"the model cannot be traced into pipeline stages: {first}") from exc
        if pipe.num_stages != self.stages:
            raise UsageError(f"the model split into {pipe.num_stages} stages, the plan needs {self.stages}")
        stage = pipe.build_stage(self.rank, device)
        # The stage's modules keep their names in the model (a profile of this rank lines up with
        # the unsharded model's); the stage itself comes last, so named_modules() finds them first.
        for name, child in stage.submod.named_children():
            self.add_module(name, child)
        self.stage_index = self.rank  # profiling.ranks.PipelineStage: profiled as one stage
        self.stage = stage.submod
        self.device = device
        self.schedule = ScheduleGPipe(stage, n_microbatches=self.micro_batches)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if any(value is not None for value in kwargs.values()):
            raise UsageError("a pipeline plan runs models called with positional tensor inputs only")
        if args and isinstance(args[0], torch.Tensor) and args[0].shape[0] != self.batch:
            raise UsageError(f"the pipeline was traced for batch {self.batch}, called with {args[0].shape[0]}")
        output = self.schedule.step(*args) if self.rank == 0 else self.schedule.step()
        # The last stage holds the output; every rank returns it.
        shared = [output if self.rank == self.stages - 1 else None]
        dist.broadcast_object_list(shared, src=self.stages - 1)
        result = shared[0]
        if not isinstance(result, torch.Tensor):
            raise UsageError("a pipeline plan runs models whose output is one tensor")
        return result.to(self.device)
