"""The α-β figures of the real link between ranks: collectives timed on the process group.

Each collective runs at several sizes on the backend the ranks were started with (gloo on CPU,
NCCL on GPUs); every size is timed `repeats` times between barriers, each rank keeps its median
and the slowest rank's median stands (a collective ends when its last rank does). The ring
formulas of tuning/sharding.py are linear in the size n: all-reduce 2(p-1)α + 2(p-1)/p·n/β,
all-gather and reduce-scatter (p-1)α + (p-1)/p·n/β; a least-squares line through the points
gives α (intercept over the message count) and β (one over the slope). The line is weighted by
1/t², so that it fits every size to the same relative error (the sizes span three decades).

The ranks' compute is measured too: a fixed set of matrix products timed on each rank alone
(the others wait at a barrier) and on every rank at once. CPU ranks on one host share its cores
(and whatever else runs there): their ratio is how much slower a rank computes when all of them
compute, which tune prices every sharded step's compute with.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from attnprof.errors import EnvironmentUnsupported
from attnprof.machine import MachineInfo
from attnprof.measure.hardware import device_key, load_calibration, update_calibration
from attnprof.measure.records import LinkCalibration, LinkFit
from attnprof.store import timestamp

SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20)  # bytes of the whole tensor
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter")
MAX_BETA_GBPS = 1e4  # a slope the noise made flat or negative would be infinite bandwidth: cap it


def link_key(backend: str, device: str, world_size: int) -> str:
    return f"{backend}:{device}:{world_size}"


def ring_terms(collective: str, ranks: int) -> tuple[float, float]:
    """(messages, share of n on the wire) of one ring collective over `ranks` ranks."""
    if collective == "all_reduce":
        return 2 * (ranks - 1), 2 * (ranks - 1) / ranks
    return ranks - 1, (ranks - 1) / ranks


def _runner(collective: str, nbytes: int, device: torch.device, ranks: int) -> Callable[[], None]:
    elements = max(nbytes // 4 // ranks * ranks, ranks)  # float32, divisible by the ranks
    whole = torch.ones(elements, device=device)
    shard = torch.ones(elements // ranks, device=device)
    if collective == "all_reduce":
        return lambda: dist.all_reduce(whole)
    if collective == "all_gather":
        return lambda: dist.all_gather_into_tensor(whole, shard)
    return lambda: dist.reduce_scatter_tensor(shard, whole)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_collective(collective: str, nbytes: int, device: torch.device, repeats: int) -> float:
    """Seconds of one collective of `nbytes`: the slowest rank's median over `repeats`."""
    run = _runner(collective, nbytes, device, dist.get_world_size())
    run()  # the first call sets up the connections' buffers
    samples = []
    for _ in range(repeats):
        dist.barrier()
        _synchronize(device)
        start = time.perf_counter()
        run()
        _synchronize(device)
        samples.append(time.perf_counter() - start)
    slowest = torch.tensor([statistics.median(samples)], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return float(slowest.item())


# Square fp32 matrix products, about 50 ms of them on one core: longer than the scheduler's time
# slices, so that ranks taking turns on a core are seen taking turns (short samples each fall
# inside one slice and look as fast as alone).
COMPUTE_SIZE = 512
COMPUTE_PRODUCTS = 32


def _time_compute(device: torch.device) -> float:
    a = torch.ones(COMPUTE_SIZE, COMPUTE_SIZE, device=device)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(COMPUTE_PRODUCTS):
        a = torch.mm(a, a) * (1.0 / COMPUTE_SIZE)  # rescaled: the values stay ones
    _synchronize(device)
    return time.perf_counter() - start


def compute_slowdown(device: torch.device, repeats: int) -> float:
    """Each rank's compute with every rank computing at once over its compute alone: the slowest
    rank's ratio of medians (all ranks call it)."""
    _time_compute(device)  # warm
    rank, ranks = dist.get_rank(), dist.get_world_size()
    alone: list[float] = []
    for turn in range(ranks):  # each rank in its turn, the others waiting at the barrier
        for _ in range(repeats):
            dist.barrier()
            if rank == turn:
                alone.append(_time_compute(device))
            dist.barrier()
    together = []
    for _ in range(repeats):
        dist.barrier()
        together.append(_time_compute(device))
    ratio = statistics.median(together) / statistics.median(alone)
    slowest = torch.tensor([ratio], dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return max(float(slowest.item()), 1.0)


def fit_link(collective: str, ranks: int, sizes: list[int], seconds: list[float]) -> LinkFit:
    """Weighted least-squares α and β of the ring formula through the measured points."""
    messages, share = ring_terms(collective, ranks)
    xs = [share * n for n in sizes]
    weights = [1 / max(t, 1e-9) ** 2 for t in seconds]
    total = sum(weights)
    mean_x = sum(w * x for w, x in zip(weights, xs, strict=True)) / total
    mean_y = sum(w * y for w, y in zip(weights, seconds, strict=True)) / total
    spread = sum(w * (x - mean_x) ** 2 for w, x in zip(weights, xs, strict=True))
    covariance = sum(w * (x - mean_x) * (y - mean_y) for w, x, y in zip(weights, xs, seconds, strict=True))
    slope = max(covariance / spread, 1 / (MAX_BETA_GBPS * 1e9))
    intercept = max(mean_y - slope * mean_x, 0.0)
    return LinkFit(
        alpha_us=1e6 * intercept / messages, beta_gbps=1 / slope / 1e9, sizes=list(sizes), seconds=list(seconds)
    )


def calibrate_links(device: torch.device, repeats: int = 10, sizes: tuple[int, ...] = SIZES) -> LinkCalibration:
    """Time every collective at every size on the initialised process group (all ranks call it)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        raise EnvironmentUnsupported("link calibration needs several ranks: run it under torchrun")
    ranks = dist.get_world_size()
    fits = {}
    for collective in COLLECTIVES:
        seconds = [time_collective(collective, n, device, repeats) for n in sizes]
        fits[collective] = fit_link(collective, ranks, list(sizes), seconds)
    return LinkCalibration(
        backend=str(dist.get_backend()),
        device=device_key(device),
        world_size=ranks,
        collectives=fits,
        threads=torch.get_num_threads(),
        created=timestamp(),
        compute_slowdown=compute_slowdown(device, repeats),
    )


def save_link_calibration(measured: LinkCalibration, machine: MachineInfo) -> Path:
    """Merge one link's figures into this machine's calibration file."""
    key = link_key(measured.backend, measured.device, measured.world_size)
    return update_calibration(machine, lambda calibration: calibration.links.__setitem__(key, measured))


def calibrated_link(machine: MachineInfo, backend: str, device: str, world_size: int) -> LinkCalibration | None:
    """This machine's measured link for `world_size` ranks of `backend` on `device`, if calibrated."""
    calibration = load_calibration(machine)
    return calibration.links.get(link_key(backend, device, world_size)) if calibration is not None else None
