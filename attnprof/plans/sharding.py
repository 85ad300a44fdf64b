"""Sharding plans on torch.distributed: DTensor tensor parallelism, FSDP2 and DDP.

The tensor-parallel plan is generated from the detected structure: q/k/v column-wise and o
row-wise (each rank holds whole heads), the MLP's up/gate projections column-wise and its down
projection row-wise; attention modules then reshape with their local head counts. Layers an
adapter cannot split stay replicated (still correct, only not sharded) and are reported.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.plans.adapters.base import HeadLayout, Unsupported
from attnprof.plans.discover import AttentionSite, Discovery, discover, is_projection, projection_paths
from attnprof.plans.pipeline import PipelinedModel, stage_cuts
from attnprof.plans.records import NotApplied, PlanChoices


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int


def launched_ranks() -> Ranks | None:
    """This process's place among ranks started by torchrun, or None when started alone."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    return Ranks(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
    )


def init_distributed(device: torch.device) -> Ranks:
    """Join the process group torchrun set up: gloo on CPU, nccl on CUDA."""
    ranks = launched_ranks()
    if ranks is None:
        raise EnvironmentUnsupported("not started by torchrun (RANK and WORLD_SIZE are not set)")
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks


def rank_device(device: torch.device, ranks: Ranks | None) -> torch.device:
    """Each rank on its own GPU; CPU ranks share the CPU."""
    if device.type == "cuda" and ranks is not None:
        return torch.device("cuda", ranks.local_rank)
    return device


def torchrun_command(world_size: int, argv: Sequence[str]) -> str:
    """The exact command that runs `attnprof <argv>` once per rank on this machine."""
    return shlex.join(["torchrun", "--standalone", f"--nproc-per-node={world_size}", "-m", "attnprof", *argv])


def sharding_label(choices: PlanChoices) -> str | None:
    """The sharding a plan runs, as a profile records it; None for a single-rank plan."""
    parts = []
    if choices.tensor_parallel > 1:
        parts.append(f"tensor_parallel={choices.tensor_parallel}")
    if choices.pipeline_stages > 1:
        parts.append(f"pipeline_stages={choices.pipeline_stages}")
    if choices.data_parallel > 1:
        parts.append(f"data_parallel={choices.data_parallel} ({choices.data_parallel_mode})")
    return ", ".join(parts) or None


def check_shardable(choices: PlanChoices) -> None:
    """Refuse, before anything runs, sharding this module does not set up."""
    if choices.pipeline_stages > 1 and choices.world_size != choices.pipeline_stages:
        raise EnvironmentUnsupported(
            f"the plan combines {choices.pipeline_stages} pipeline stages with tensor or data parallelism, "
            "which attnprof apply does not set up (pipeline stages run alone)"
        )
    if choices.tensor_parallel > 1 and choices.data_parallel > 1 and choices.data_parallel_mode == "ddp":
        raise UsageError("tensor parallel with data parallel needs data_parallel_mode fsdp (DDP cannot wrap DTensors)")


def apply_sharding(
    model: nn.Module, found: Discovery, choices: PlanChoices, device: torch.device, args: tuple = ()
) -> tuple[nn.Module, list[str], list[NotApplied]]:
    """Shard `model` across the initialised process group as the plan says (a pipeline is traced
    on the example positional `args`)."""
    if choices.world_size == 1:
        return model, [], []
    check_shardable(choices)
    if not dist.is_initialized():
        raise EnvironmentUnsupported(
            f"the plan needs {choices.world_size} ranks; run it under torchrun "
            f"({torchrun_command(choices.world_size, ['apply', '...'])})"
        )
    if dist.get_world_size() != choices.world_size:
        raise UsageError(f"the plan needs {choices.world_size} ranks, torchrun started {dist.get_world_size()}")
    if choices.pipeline_stages > 1:
        cuts = choices.pipeline_cuts or stage_cuts(found.blocks(), choices.pipeline_stages)
        pipelined = PipelinedModel(model, cuts, choices.batch_size, device, args)
        described = f"{choices.pipeline_stages} pipeline stages (GPipe, {pipelined.micro_batches} micro-batches)"
        return pipelined, [f"{described}, stages begin at {', '.join(cuts)}"], []
    tp, dp = choices.tensor_parallel, choices.data_parallel
    if tp > 1 and dp > 1 and choices.data_parallel_mode == "ddp":
        raise UsageError("tensor parallel with data parallel needs data_parallel_mode fsdp (DDP cannot wrap DTensors)")
    if tp > 1 and dp > 1:
        mesh = init_device_mesh(device.type, (dp, tp), mesh_dim_names=("dp", "tp"))
        tp_mesh, dp_mesh = mesh["tp"], mesh["dp"]
    else:
        mesh = init_device_mesh(device.type, (tp * dp,))
        tp_mesh = dp_mesh = mesh
    applied: list[str] = []
    missed: list[NotApplied] = []
    if tp > 1:
        applied_tp, missed_tp = tensor_parallel(model, found, tp_mesh)
        applied += applied_tp
        missed += missed_tp
    if dp > 1 and choices.data_parallel_mode == "fsdp":
        units = found.blocks()
        for path in units:
            fully_shard(model.get_submodule(path), mesh=dp_mesh)
        fully_shard(model, mesh=dp_mesh)
        applied.append(f"FSDP2 fully_shard over {dp} ranks: {len(units)} blocks and the root")
    elif dp > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        applied.append(f"DistributedDataParallel over {dp} ranks")
    return model, applied, missed


def tensor_parallel_blocker(model: nn.Module) -> str | None:
    """Why tensor parallelism would leave this model's attention unsharded, or None when every
    attention layer can be split: a plan that shards nothing is no plan to offer."""
    found = discover(model)
    if found.unknown:
        path, type_name = found.unknown[0]
        return f"{path} ({type_name}): no adapter understands this attention module"
    for site in found.sites:
        try:
            site.adapter.shard_names(site.module_path, site.module)
        except Unsupported as exc:
            return f"{site.name} ({type(site.attention_module).__name__}): {exc}"
    return None if found.sites else "no attention layer was found to split"


def tensor_parallel(model: nn.Module, found: Discovery, mesh: DeviceMesh) -> tuple[list[str], list[NotApplied]]:
    degree = mesh.size()
    styles: dict[str, ParallelStyle] = {}
    missed: list[NotApplied] = []
    sharded: list[AttentionSite] = []
    mlps = 0
    for site in found.sites:
        kind = type(site.attention_module).__name__
        layout = site.layout
        try:
            names = site.adapter.shard_names(site.module_path, site.module)
        except Unsupported as exc:
            missed.append(NotApplied(site.name, kind, "tensor_parallel", f"{exc}; the layer stays replicated"))
            continue
        if layout.num_heads % degree or layout.num_kv_heads % degree:
            missed.append(
                NotApplied(
                    site.name,
                    kind,
                    "tensor_parallel",
                    f"{layout.num_heads} heads / {layout.num_kv_heads} K/V heads do not divide over "
                    f"{degree} ranks; the layer stays replicated",
                )
            )
            continue
        styles.update({path: ColwiseParallel() for path in names.colwise})
        styles.update({path: RowwiseParallel() for path in names.rowwise})
        sharded.append(site)
        mlp = mlp_projections(model, site, degree)
        if isinstance(mlp, str):
            missed.append(NotApplied(site.block_path or site.name, kind, "tensor_parallel (MLP)", mlp))
        else:
            up, down = mlp
            styles.update({path: ColwiseParallel() for path in up})
            styles[down] = RowwiseParallel()
            mlps += 1
    for path, type_name in found.unknown:
        missed.append(
            NotApplied(path, type_name, "tensor_parallel", "unrecognised attention; its weights stay replicated")
        )
    if styles:
        parallelize_module(model, mesh, styles)
    for site in sharded:
        layout = site.layout
        local = HeadLayout(layout.num_heads // degree, layout.num_kv_heads // degree, layout.head_dim)
        site.adapter.set_head_counts(site.module, local)
    applied = [f"tensor parallel over {degree} ranks: {len(sharded)} attention layers, {mlps} MLPs"]
    return applied, missed


def mlp_projections(model: nn.Module, site: AttentionSite, degree: int) -> tuple[list[str], str] | str:
    """(up/gate paths, down path) of the MLP next to this attention layer, or why there is none.

    The MLP is every other Linear of the block: those widening the model dimension d to f are
    split by output (column-wise), the single one narrowing f back to d by input (row-wise).
    """
    if site.block_path is None:
        return "no enclosing block with an MLP was found; the MLP stays replicated"
    block = model.get_submodule(site.block_path)
    inside = projection_paths(site)
    width = site.adapter.read(site.module).o_weight.shape[0]
    others = {
        f"{site.block_path}.{path}": m
        for path, m in block.named_modules()
        if path and f"{site.block_path}.{path}" not in inside and is_projection(m)
    }
    if not all(isinstance(m, nn.Linear) for m in others.values()):
        return "the MLP is not made of nn.Linear layers; it stays replicated"
    up = [p for p, m in others.items() if m.in_features == width and m.out_features != width]
    down = [p for p, m in others.items() if m.out_features == width and m.in_features != width]
    hidden = {others[p].out_features for p in up}
    if len(down) != 1 or len(up) + 1 != len(others) or hidden != {others[down[0]].in_features}:
        return "the block's Linear layers do not form one up/down MLP; it stays replicated"
    if next(iter(hidden)) % degree:
        return f"the MLP width {next(iter(hidden))} does not divide over {degree} ranks; it stays replicated"
    return up, down[0]
