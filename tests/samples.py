"""Hand-built records with known numbers: profiles (seeded synthetic timings for the check
statistics, evenly spread ones for the renderers), plans, check results and cost models."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from attnprof.costmodel.fit import summarise_validation
from attnprof.costmodel.knobs import latency_group, memory_group
from attnprof.costmodel.records import COST_KINDS, CostModel, GroupInfo, InfeasiblePoint, LinearFit, ValidationPoint
from attnprof.gate.compare import compare_profiles
from attnprof.gate.records import CheckResult
from attnprof.machine import MachineInfo
from attnprof.measure.records import AttentionInfo, Bound
from attnprof.plans.records import Budget, ParetoPoint, Plan, PlanChoices, PlanFigures
from attnprof.profiling.records import DistributedProfile, LayerKind, LayerStats, Profile, RankInfo, TimeStats, Totals
from attnprof.settings import Settings
from attnprof.targets.records import WorkloadInfo

MIB = 2**20

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


def other_machine() -> MachineInfo:
    return dataclasses.replace(MACHINE, cpu="Other CPU 9000")


def attention_info(**fields: Any) -> AttentionInfo:
    """Causal flash attention, 4 heads (2 K/V) of 16 over 64 tokens; `fields` replace any of it."""
    flops = 4 * 4 * 16 * 64 * 64
    defaults: dict[str, Any] = dict(
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        q_len=64,
        kv_len=64,
        causal=True,
        window=None,
        backend="flash",
        flops=flops,
        flops_dense=flops,
    )
    return AttentionInfo(**(defaults | fields))


def lognormal(rng: np.random.Generator | int, median: float, noise: float, n: int) -> list[float]:
    """n log-normal samples around `median` with relative spread `noise`; a seed starts a new generator."""
    return [float(x) for x in median * np.exp(np.random.default_rng(rng).normal(0, noise, n))]


def timings(rng: np.random.Generator, median_ms: float, noise: float, n: int) -> TimeStats:
    return TimeStats.from_samples(lognormal(rng, median_ms, noise, n))


def layer(
    name: str,
    kind: LayerKind,
    depth: int,
    time_ms: TimeStats | None,
    *,
    module_type: str = "",
    self_ms: float = 0.0,
    backward_ms: TimeStats | None = None,
    flops: int = 0,
    nbytes: int = 0,
    memory: int = 0,
    params: int = 0,
    achieved_tflops: float | None = None,
    bound: Bound | None = None,
    attention: AttentionInfo | None = None,
) -> LayerStats:
    """One module; its type follows from its kind unless given."""
    kind_type = {"attention": "Attention", "mlp": "MLP", "norm": "LayerNorm", "embedding": "Embedding"}
    return LayerStats(
        name=name,
        type=module_type or kind_type.get(kind, "Linear" if flops else "Module"),
        kind=kind,
        depth=depth,
        time_ms=time_ms,
        self_time_ms=self_ms,
        backward_time_ms=backward_ms,
        flops=flops,
        bytes=nbytes,
        memory_bytes=memory,
        params=params,
        achieved_tflops=achieved_tflops,
        bound=bound,
        attention=attention,
    )


def profile_of(layers: list[LayerStats], step: TimeStats | None, peak_memory: int, **fields: Any) -> Profile:
    """A profile of the layers on MACHINE, its totals' FLOPs added up from them; `fields` replace
    any other part."""
    profile = Profile(
        attnprof_version="0.1.0",
        created="2026-11-21T09:00:00+00:00",
        machine=MACHINE,
        commit="0123456789abcdef",
        workload=WorkloadInfo(target="zoo:decoder", fingerprint="abc123def456", parameter_count=12345, name="decoder"),
        settings=Settings(),
        totals=Totals(
            time_ms=step,
            flops=sum(layer.flops for layer in layers),
            attention_flops=sum(layer.attention.flops for layer in layers if layer.attention),
            peak_memory_bytes=peak_memory,
        ),
        layers=layers,
    )
    return dataclasses.replace(profile, **fields)


# --- seeded synthetic timings, for the check statistics ------------------------------------------


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

    attention = attention_info(num_kv_heads=num_kv_heads, backend=backend, flops=attn_flops, flops_dense=attn_flops)
    layers = [
        layer("blocks.0", "other", 1, stats(5.0 + 3.0 * (attn_slowdown - 1)), module_type="Block", self_ms=0.5,
              memory=4_000_000, params=1000),
        layer("blocks.0.attn", "attention", 2, stats(3.0 * attn_slowdown), self_ms=1.0,
              flops=attn_flops + 1_000_000, nbytes=2_000_000, memory=3_000_000, params=600, bound="compute",
              attention=attention),
        layer("blocks.0.attn.q_proj", "other", 3, stats(0.5), self_ms=0.5, flops=1_000_000, nbytes=100_000,
              memory=100_000, params=300, bound="memory"),
        layer("blocks.0.mlp", "mlp", 2, stats(1.5), self_ms=1.5, flops=2_000_000, nbytes=300_000,
              memory=1_000_000, params=400, bound="compute"),
        layer("blocks.1", "other", 1, stats(5.0), module_type="Block", self_ms=5.0, flops=3_000_000,
              nbytes=300_000, memory=4_000_000, params=1000, bound="compute"),
    ]  # fmt: skip
    if extra_layer:
        layers.append(layer("blocks.2", "other", 1, stats(1.0), module_type="Block", self_ms=1.0, flops=1_000,
                            nbytes=10, memory=100, params=10, bound="memory"))  # fmt: skip
    return profile_of(
        layers,
        stats(10.0 + 3.0 * (attn_slowdown - 1)),
        peak_memory,
        machine=machine,
        settings=Settings(repeats=repeats),
        timing_source="none" if dry_run else "wall",
    )


# --- evenly spread timings, for the renderers ----------------------------------------------------


REPEATS = 3


def _stats(median: float) -> TimeStats:
    """REPEATS samples spread evenly over ±5% of the median."""
    n = REPEATS
    return TimeStats.from_samples([median * (0.95 + 0.1 * i / max(n - 1, 1)) for i in range(n)])


def _decoder_layer(
    name: str,
    kind: LayerKind,
    depth: int,
    time_ms: float,
    *,
    self_ms: float = 0.0,
    flops: int = 0,
    nbytes: int = 0,
    memory: int = 0,
    train: bool = False,
    attention: AttentionInfo | None = None,
) -> LayerStats:
    return layer(
        name,
        kind,
        depth,
        _stats(time_ms),
        self_ms=self_ms,
        backward_ms=_stats(2 * time_ms) if train else None,
        flops=flops,
        nbytes=nbytes,
        memory=memory,
        achieved_tflops=flops / (self_ms * 1e-3) / 1e12 if flops and self_ms else None,
        attention=attention,
    )


def sample_profile(blocks: int = 3, mode: str = "infer") -> Profile:
    """A decoder with `blocks` blocks; block i's attention takes 1 + i ms and its MLP 2 ms.

    Every computing layer has a distinct arithmetic intensity and speed, spread over decades,
    so the roofline points never overlap.
    """
    train = mode == "train"
    layers = [_decoder_layer("", "other", 0, 0.0, train=train)]
    layers.append(_decoder_layer("embed", "embedding", 1, 0.5, self_ms=0.5, memory=1 * MIB, train=train))
    for i in range(blocks):
        attn_ms, mlp_ms = 1.0 + i, 2.0
        info = attention_info(flops=4 * 4 * 16 * 64 * 65 // 2)
        scale = 10 ** (i % 3)
        layers += [
            _decoder_layer(f"layers.{i}", "other", 1, attn_ms + mlp_ms, memory=(4 + i) * MIB, train=train),
            _decoder_layer(
                f"layers.{i}.attn",
                "attention",
                2,
                attn_ms,
                self_ms=attn_ms / 2,
                flops=info.flops * scale,
                nbytes=10_000 * (i + 1),
                memory=(3 + i) * MIB,
                train=train,
                attention=info,
            ),
            _decoder_layer(
                f"layers.{i}.attn.qkv",
                "other",
                3,
                attn_ms / 2,
                self_ms=attn_ms / 2,
                flops=3_000_000 * scale,
                nbytes=2_000_000,
                memory=MIB // 2,
                train=train,
            ),
            _decoder_layer(
                f"layers.{i}.mlp",
                "mlp",
                2,
                mlp_ms,
                self_ms=mlp_ms,
                flops=50_000_000 * (i + 1) * scale,
                nbytes=100_000,
                memory=2 * MIB,
                train=train,
            ),
        ]
    layers.append(
        _decoder_layer(
            "lm_head", "other", 1, 0.7, self_ms=0.7, flops=900_000, nbytes=3_000_000, memory=MIB, train=train
        )
    )
    step = 0.5 + sum(3.0 + i for i in range(blocks)) + 0.7 + 0.3  # 0.3 ms outside any module
    layers[0] = _decoder_layer("", "other", 0, step - 0.3, train=train)
    if train:
        step *= 3  # backward takes twice the forward time in every layer
    settings = Settings(mode=mode, batch_size=2, seq_len=64)  # type: ignore[arg-type]
    return profile_of(layers, _stats(step), 32 * MIB, settings=settings)


def sample_distributed(pipeline: bool = False) -> DistributedProfile:
    """Two ranks of sample_profile: tensor parallel (their attention's all-reduce 0.25 ms, rank 1's
    step 10% slower), or a pipeline whose stage 0 computes three times as long as stage 1."""
    ranks = []
    for index in range(2):
        profile = sample_profile()
        if pipeline:
            profile.rank = RankInfo(index, 2, "gloo", [2], [], "pipeline_stages=2", global_params=12345,
                                    pipeline_stage=index, stage_compute_ms=12.0 if index == 0 else 4.0)
            profile.layers = [layer for layer in profile.layers if layer.name.startswith(f"layers.{index}") or
                              not layer.name]
        else:
            profile.rank = RankInfo(index, 2, "gloo", [2], ["tp"], "tensor_parallel=2", global_params=12345,
                                    collective_calls={"all_reduce": 6})
            profile.totals.collective_ms = 0.75
            for layer in profile.layers:
                layer.collective_ms = 0.25 if layer.name.endswith(".attn") else 0.0
            if index == 1 and profile.totals.time_ms is not None:
                profile.totals.time_ms = _stats(profile.totals.time_ms.median * 1.1)
        ranks.append(profile)
    return DistributedProfile(attnprof_version="0.1.0", created="2026-11-21T09:00:00+00:00", ranks=ranks)


def sample_plan() -> Plan:
    """bf16 + flash: predicted 40% faster (± 1 ms) and measured 35% faster than 10 ms."""
    profile = sample_profile()
    return Plan(
        workload=profile.workload,
        settings=profile.settings,
        device="cpu",
        objective="latency",
        choices=PlanChoices(dtype="bf16", backend="flash", kv_heads={"layers.0.attn": 1}),
        budgets=Budget(memory_bytes=64 * MIB, latency_ms=8.0),
        predicted=PlanFigures(latency_ms=6.0, memory_bytes=20 * MIB, latency_sigma_ms=1.0, memory_sigma_bytes=MIB),
        measured=PlanFigures(latency_ms=6.5, memory_bytes=21 * MIB, max_error=1e-3, finite=True),
        baseline=PlanFigures(latency_ms=10.0, memory_bytes=32 * MIB),
        verified=True,
        knobs=["dtype", "backend", "kv_heads"],
        solver="enumeration",
        created="2026-11-21T09:30:00+00:00",
        frontier=[
            # latency falls as memory grows; fp32 misses the 8 ms budget, b4 needs more than 64 MiB
            ParetoPoint("fp32", {"latency_ms": 10.0, "memory_bytes": 32 * MIB}, feasible=False),
            ParetoPoint("bf16", {"latency_ms": 7.0, "memory_bytes": 40 * MIB}, feasible=True),
            ParetoPoint("bf16 flash", {"latency_ms": 6.0, "memory_bytes": 48 * MIB}, feasible=True, chosen=True),
            ParetoPoint("bf16 flash b4", {"latency_ms": 4.0, "memory_bytes": 80 * MIB}, feasible=False),
        ],
    )


def sample_check() -> CheckResult:
    """A real comparison: the current run's layers.1.attn is 30% slower, with 12 repeats each."""
    global REPEATS
    REPEATS = 12
    try:
        baseline, current = sample_profile(), sample_profile()
    finally:
        REPEATS = 3
    slow = current.layer("layers.1.attn")
    assert slow.time_ms is not None
    slow.time_ms = TimeStats.from_samples([t * 1.3 for t in slow.time_ms.samples])
    current.totals.flops += 1000  # a deterministic change: always a failure
    return compare_profiles(baseline, current, baseline_label="base.json", current_label="this run")


def sample_fit() -> CostModel:
    """Six held-out configurations, each predicted within 10%, and one out-of-memory point."""
    details = [
        ValidationPoint(
            f"b{b}-s{s}",
            {"batch_size": b, "seq_len": s},
            measured_ms=b * s / 10,
            predicted_ms=b * s / 10 * (1.1 if i % 2 else 0.95),
            measured_memory_bytes=b * s * 1000.0,
            predicted_memory_bytes=b * s * 1000.0 * 1.02,
        )
        for i, (b, s) in enumerate([(1, 64), (1, 256), (2, 512), (4, 32), (4, 1024), (8, 256)])
    ]
    config: dict[str, int | str] = {"backend": "flash", "dtype": "fp32"}
    fit = LinearFit(["flops", "bytes"], [1e-9, 2e-10], [[0.0, 0.0], [0.0, 0.0]], relative_std=0.04, points=12)
    return CostModel(
        created="2026-11-21T10:00:00+00:00",
        target="zoo:decoder",
        workload_fingerprint="abc123def456",
        machine=MACHINE,
        latency={kind: {latency_group(kind, config): fit} for kind in COST_KINDS},
        memory={memory_group(config): fit},
        groups={memory_group(config): GroupInfo(config, 12, {"batch_size": [1, 8], "seq_len": [64, 512]})},
        measurements=13,
        infeasible=[InfeasiblePoint({"batch_size": 64, "seq_len": 4096}, "oom", "out of memory")],
        validation=summarise_validation(details, "k-fold", 3),
    )


# One sample per report adapter kind; test_report_formats checks every adapter has one.
SAMPLES = {
    "profile": sample_profile,
    "plan": sample_plan,
    "check": sample_check,
    "fit": sample_fit,
    "distributed": sample_distributed,
}
