"""What one rank holds and runs when a model is sharded with DTensor (tensor parallel, FSDP2).

A DTensor reports its global (logical) shape; the rank computes and stores only its local
shard. Counters and trackers see each rank's own work: a dispatch mode returns NotImplemented
for an op on DTensors, so torch hands the op to DTensor, whose local ops then reach the mode
again; the ops DTensor's sharding propagation runs on fake tensors (global shapes, nothing
computed) are run without being counted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.distributed.tensor import DTensor
from torch.utils._pytree import tree_flatten


def defers_to_shards(types: Any) -> bool:
    """True for an op on DTensors: the mode should return NotImplemented and see the local ops."""
    return any(issubclass(kind, DTensor) for kind in types)


def is_propagation(args: Any, kwargs: Any) -> bool:
    """True for an op DTensor runs on fake tensors to infer output shardings (no real work)."""
    return any(isinstance(value, FakeTensor) for value in tree_flatten((args, kwargs))[0])


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; any other tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_numel(module: torch.nn.Module) -> int:
    """Parameters this rank holds (a DTensor counts its local shard)."""
    return sum(local(p).numel() for p in module.parameters())


def global_numel(module: torch.nn.Module) -> int:
    """Parameters of the whole model (a DTensor counts its global shape)."""
    return sum(p.numel() for p in module.parameters())
