"""Hand-built Profiles with seeded synthetic timings, for the check statistics and renderers."""

from __future__ import annotations

import dataclasses

import numpy as np

from attnprof.machine import MachineInfo
from attnprof.measure.records import AttentionInfo
from attnprof.profiling.records import LayerStats, Profile, TimeStats, Totals
from attnprof.settings import Settings
from attnprof.targets.records import WorkloadInfo

MACHINE = MachineInfo(
    cpu="Test CPU 3000",
    gpu_name=None,
    gpu_uuid=None,
    driver=None,
    cuda=None,
    torch="2.13.0",
    python="3.11.9",
    threads=1,
)


def timings(rng: np.random.Generator, median_ms: float, noise: float, n: int) -> TimeStats:
    """n log-normal samples around `median_ms` with relative spread `noise`."""
    return TimeStats.from_samples([float(x) for x in median_ms * np.exp(rng.normal(0, noise, n))])


def make_profile(
    seed: int = 0,
    noise: float = 0.02,
    repeats: int = 30,
    attn_slowdown: float = 1.0,
    attn_flops: int = 4 * 2 * 4 * 64 * 64 * 16,
    num_kv_heads: int = 2,
    backend: str = "flash",
    peak_memory: int = 10_000_000,
    extra_layer: bool = False,
    machine: MachineInfo = MACHINE,
    dry_run: bool = False,
) -> Profile:
    """A two-block decoder-like profile: step 10 ms, attention 3 ms of it in block 0."""
    rng = np.random.default_rng(seed)

    def stats(median_ms: float) -> TimeStats | None:
        return None if dry_run else timings(rng, median_ms, noise, repeats)

    attention = AttentionInfo(
        num_heads=4,
        num_kv_heads=num_kv_heads,
        head_dim=16,
        q_len=64,
        kv_len=64,
        causal=True,
        window=None,
        backend=backend,
        flops=attn_flops,
        flops_dense=attn_flops,
    )
    layers = [
        LayerStats("blocks.0", "Block", "other", 1, stats(5.0 + 3.0 * (attn_slowdown - 1)), 0.5, None,
                   0, 0, 4_000_000, 1000, None, None),
        LayerStats("blocks.0.attn", "Attention", "attention", 2, stats(3.0 * attn_slowdown), 1.0, None,
                   attn_flops + 1_000_000, 2_000_000, 3_000_000, 600, None, "compute", attention),
        LayerStats("blocks.0.attn.q_proj", "Linear", "other", 3, stats(0.5), 0.5, None,
                   1_000_000, 100_000, 100_000, 300, None, "memory"),
        LayerStats("blocks.0.mlp", "MLP", "mlp", 2, stats(1.5), 1.5, None,
                   2_000_000, 300_000, 1_000_000, 400, None, "compute"),
        LayerStats("blocks.1", "Block", "other", 1, stats(5.0), 5.0, None,
                   3_000_000, 300_000, 4_000_000, 1000, None, "compute"),
    ]
    if extra_layer:
        layers.append(LayerStats("blocks.2", "Block", "other", 1, stats(1.0), 1.0, None,
                                 1_000, 10, 100, 10, None, "memory"))
    step = 10.0 + 3.0 * (attn_slowdown - 1)
    return Profile(
        attnprof_version="0.1.0",
        created="2026-01-01T00:00:00Z",
        machine=machine,
        commit="abc123",
        workload=WorkloadInfo(target="zoo:decoder", fingerprint="f" * 12, parameter_count=2000),
        settings=Settings(repeats=repeats),
        totals=Totals(
            time_ms=stats(step),
            flops=sum(layer.flops for layer in layers),
            attention_flops=attn_flops,
            peak_memory_bytes=peak_memory,
        ),
        layers=layers,
        timing_source="none" if dry_run else "wall",
    )


def other_machine() -> MachineInfo:
    return dataclasses.replace(MACHINE, cpu="Other CPU 9000")
