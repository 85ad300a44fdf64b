"""Predicted cost of a sharded step: an α-β model of the collectives and a balanced pipeline.

A message of n bytes over a link costs α + n/β (α: per-message latency, β: bandwidth per
direction). Ring collectives over p ranks (Thakur, Rabenseifner & Gropp, "Optimization of
Collective Communication Operations in MPICH", IJHPCA 2005): all-reduce 2(p-1)α + 2(p-1)/p·n/β,
all-gather and reduce-scatter (p-1)α + (p-1)/p·n/β each. Tensor parallelism (Megatron-LM) costs
two all-reduces of the block's activations per block in forward and two more in backward;
pipeline stages exchange the boundary activations point to point and idle for (p-1) of
(m+p-1) micro-batch slots (the GPipe bubble); data parallelism all-reduces gradients (DDP) or
all-gathers parameters and reduce-scatters gradients (FSDP).

Every rank's compute is the unsharded block's share, times how much slower a rank computes when
all ranks compute at once (`compute_slowdown`, measured with the link; 1 without a measurement):
CPU ranks on one host take turns on its cores. What tensor parallelism leaves whole on every
rank (embeddings, the head: `other_ms`) is computed whole on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from attnprof.measure.records import LinkCalibration
from attnprof.plans.pipeline import balanced_stages


class LinkLike(Protocol):
    name: str
    alpha_us: float
    beta_gbps: float
    source: str


@dataclass(frozen=True)
class MeasuredLink:
    """A link `attnprof doctor --calibrate --link` measured: α-β per collective; point-to-point
    transfers use the all-reduce's figures."""

    name: str
    alpha_us: float
    beta_gbps: float
    source: str
    collectives: Mapping[str, tuple[float, float]]  # collective -> (α µs, β GB/s)
    compute_slowdown: float = 1.0  # a rank's compute with every rank computing, over alone

    @classmethod
    def from_calibration(cls, measured: LinkCalibration) -> MeasuredLink:
        figures = {name: (fit.alpha_us, fit.beta_gbps) for name, fit in measured.collectives.items()}
        alpha, beta = figures["all_reduce"]
        return cls(
            f"{measured.backend} between {measured.world_size} ranks on {measured.device}",
            alpha,
            beta,
            f"measured by doctor --calibrate --link, {measured.created}; ranks computing at once "
            f"{measured.compute_slowdown:.2f}× slower than alone",
            figures,
            measured.compute_slowdown,
        )


def compute_slowdown(link: LinkLike) -> float:
    return link.compute_slowdown if isinstance(link, MeasuredLink) else 1.0


def _figures(link: LinkLike, collective: str) -> tuple[float, float]:
    if isinstance(link, MeasuredLink) and collective in link.collectives:
        return link.collectives[collective]
    return link.alpha_us, link.beta_gbps


@dataclass(frozen=True)
class CpuLink:
    """The link between CPU ranks on one host: torch.distributed's gloo backend over loopback TCP."""

    name: str
    alpha_us: float
    beta_gbps: float
    source: str


# Measured with gloo all-reduces between two local ranks (1 KiB and 16 MiB tensors, one thread
# each) on a shared 2-core host: 2.1 ms and 19 ms, so α ≈ 1 ms, β ≈ 1 GB/s. Loopback TCP shares
# the cores with compute; on a quiet many-core host it is faster, still far from any GPU link.
GLOO_LOOPBACK = CpuLink(
    "gloo over loopback (CPU ranks on one host)",
    1000.0,
    1.0,
    "built-in figure (gloo all-reduces timed once on a shared 2-core host); measure this machine's with "
    "`torchrun --nproc-per-node=N -m attnprof doctor --calibrate --link`",
)


def _seconds(link: LinkLike, collective: str, messages: float, nbytes: float) -> float:
    alpha_us, beta_gbps = _figures(link, collective)
    return messages * alpha_us * 1e-6 + nbytes / (beta_gbps * 1e9)


def all_reduce_s(nbytes: float, ranks: int, link: LinkLike) -> float:
    if ranks <= 1:
        return 0.0
    return _seconds(link, "all_reduce", 2 * (ranks - 1), 2 * (ranks - 1) / ranks * nbytes)


def all_gather_s(nbytes: float, ranks: int, link: LinkLike, collective: str = "all_gather") -> float:
    """Also the cost of a reduce-scatter of the same total size (collective="reduce_scatter")."""
    if ranks <= 1:
        return 0.0
    return _seconds(link, collective, ranks - 1, (ranks - 1) / ranks * nbytes)


def point_to_point_s(nbytes: float, link: LinkLike) -> float:
    return _seconds(link, "point_to_point", 1, nbytes)


@dataclass(frozen=True)
class StepShape:
    """What one data-parallel replica does in a step, unsharded, measured or predicted."""

    block_ms: tuple[float, ...]  # per repeated block, one micro-batch, forward (+ backward in train)
    other_ms: float  # embedding, head and everything outside the blocks, one micro-batch
    param_bytes: float
    activation_bytes: float  # peak memory above the parameters, one micro-batch
    boundary_bytes: float  # one block's output activations for one micro-batch
    micro_batches: int  # micro-batches per replica per step
    train: bool
    # Of param_bytes, what tensor parallelism leaves whole on every rank: apply splits only the
    # blocks' attention and MLP projections (embeddings, the head and norms stay replicated).
    replicated_param_bytes: float = 0.0
    # Of param_bytes, what lies outside the blocks: FSDP2's root unit, which stays gathered from
    # forward through backward (and, in inference, from the first step on).
    root_param_bytes: float = 0.0


@dataclass(frozen=True)
class ShardedCost:
    latency_ms: float
    memory_bytes: float
    communication_ms: float
    stage_ms: tuple[float, ...]  # compute per micro-batch, in stage order
    bubble: float  # share of pipeline slots idle


def sharded_step(
    shape: StepShape,
    tensor_parallel: int,
    pipeline_stages: int,
    data_parallel: int,
    data_parallel_mode: str,
    link: LinkLike,
) -> ShardedCost:
    """Per-rank latency and peak memory of one step under (tp, pp, dp) on `link`."""
    tp, pp, dp, m = tensor_parallel, pipeline_stages, data_parallel, shape.micro_batches
    passes = 2 if shape.train else 1  # forward, and backward in train mode
    stages = balanced_stages(list(shape.block_ms), pp) if pp > 1 else [0] * len(shape.block_ms)
    slowdown = compute_slowdown(link)
    stage_ms = [0.0] * pp
    for cost, stage in zip(shape.block_ms, stages, strict=True):
        stage_ms[stage] += cost / tp * slowdown
    stage_ms[0] += shape.other_ms * slowdown  # left whole by tensor parallelism
    tp_comm_s = 2 * passes * all_reduce_s(shape.boundary_bytes, tp, link)  # per block, per micro-batch
    blocks_per_stage = [stages.count(s) for s in range(pp)]
    slot_ms = max(stage_ms[s] + 1e3 * tp_comm_s * blocks_per_stage[s] for s in range(pp))
    p2p_ms = 1e3 * passes * point_to_point_s(shape.boundary_bytes / tp, link) if pp > 1 else 0.0
    pipeline_ms = (m + pp - 1) * (slot_ms + p2p_ms)
    replicated = min(shape.replicated_param_bytes, shape.param_bytes)
    shard_params = (shape.param_bytes - replicated) / (tp * pp) + replicated
    if dp > 1 and data_parallel_mode == "fsdp":
        # Each block all-gathered before forward (and again before backward); the root once a
        # train step, never again in inference; the gradients reduce-scattered.
        root = min(shape.root_param_bytes, shard_params)
        blocks = shard_params - root
        dp_ms = 1e3 * passes * all_gather_s(blocks, dp, link)
        if shape.train:
            dp_ms += 1e3 * (all_gather_s(root, dp, link) + all_gather_s(shard_params, dp, link, "reduce_scatter"))
        params_held = blocks / dp + root + blocks / max(len(shape.block_ms), 1)  # one block gathered
    elif dp > 1 and shape.train:
        dp_ms = 1e3 * all_reduce_s(shard_params, dp, link)
        params_held = shard_params
    else:
        dp_ms = 0.0
        params_held = shard_params
    in_flight = min(m, pp) if shape.train else 1  # 1F1B keeps at most pp micro-batches alive per stage
    activations = shape.activation_bytes / (tp * pp) * in_flight
    communication_ms = 1e3 * tp_comm_s * len(shape.block_ms) * m + (m + pp - 1) * p2p_ms + dp_ms
    return ShardedCost(
        latency_ms=pipeline_ms + dp_ms,
        memory_bytes=params_held + activations,
        communication_ms=communication_ms,
        stage_ms=tuple(stage_ms),
        bubble=(pp - 1) / (m + pp - 1),
    )
