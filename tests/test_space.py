"""Plan-space rules and the sharding cost model."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pytest

from attnprof.errors import UsageError
from attnprof.plans.pipeline import balanced_stages
from attnprof.settings import Settings
from attnprof.tuning.sharding import (
    StepShape,
    all_gather_s,
    all_reduce_s,
    point_to_point_s,
    sharded_step,
)
from attnprof.tuning.space import AttentionLayout, DeviceFacts, build_space, micro_batch_values, parse_plan_knobs

CPU = DeviceFacts("cpu", "cpu", None, 2)
H100 = DeviceFacts("cuda", "NVIDIA H100 80GB HBM3", (9, 0), 16)
V100 = DeviceFacts("cuda", "Tesla V100", (7, 0), 16)
GQA = AttentionLayout("layers.0.attn", num_heads=8, num_kv_heads=2, head_dim=16)
MHA = AttentionLayout("layers.1.attn", num_heads=6, num_kv_heads=6, head_dim=16)


@dataclass(frozen=True)
class Link:
    alpha_us: float
    beta_gbps: float


NVLINK = Link(5.0, 450.0)


def reasons(space, knob: str) -> dict[str, str]:
    return {e.value: e.reason for e in space.excluded if e.knob == knob}


def test_cpu_space_has_only_math_and_flash_and_no_tf32_or_fp8_each_with_a_reason() -> None:
    space = build_space(CPU, [GQA], Settings(batch_size=4), ["backend", "dtype", "batch_size", "threads"])
    assert {g.backend for g in space.globals} == {"math", "flash"}
    assert {g.dtype for g in space.globals} == {"fp32", "bf16", "fp16"}
    assert {g.batch_size for g in space.globals} == {1, 2, 4}
    assert {g.threads for g in space.globals} == {1, 2}
    backend_reasons = reasons(space, "backend")
    assert "only the math and flash SDPA kernels run on CPU" in backend_reasons["efficient with fp32"]
    dtype_reasons = reasons(space, "dtype")
    assert "TF32" in dtype_reasons["tf32"] and "fp8" in dtype_reasons["fp8"]
    # 2 backends x 3 dtypes x 3 micro-batches x 2 thread counts
    assert len(space.globals) == 36


def test_gpu_rules_follow_compute_capability() -> None:
    settings = Settings(device="cuda", batch_size=1)
    h100 = build_space(H100, [GQA], settings, ["backend", "dtype"])
    assert ("flash", "bf16") in {(g.backend, g.dtype) for g in h100.globals}
    assert ("flash", "fp32") not in {(g.backend, g.dtype) for g in h100.globals}
    assert "tf32" in {g.dtype for g in h100.globals}
    assert "fp8 matmuls" in reasons(h100, "dtype")["fp8"]
    v100 = build_space(V100, [GQA], settings, ["backend", "dtype"])
    assert "flash" not in {g.backend for g in v100.globals}
    assert "bf16" not in {g.dtype for g in v100.globals}


def test_head_options_respect_gqa_groups_and_kv_divisors() -> None:
    space = build_space(CPU, [GQA, MHA], Settings(), ["heads", "kv_heads"])
    gqa = space.layer_options[GQA.name]
    # 8 query heads over 2 K/V heads: kept heads must be multiples of 2.
    assert sorted({8 - o.prune for o in gqa}) == [2, 4, 6, 8]
    assert {o.kv_heads for o in gqa} == {None, 1}
    assert "multiple of the 2 K/V heads" in reasons(space, "heads")[f"{GQA.name} prune 1"]
    mha = space.layer_options[MHA.name]
    assert sorted({6 - o.prune for o in mha}) == [1, 2, 3, 4, 5, 6]
    # MHA prunes K/V heads with their query heads; with 4 kept, GQA may go to 1 or 2 K/V heads.
    assert {o.kv_heads for o in mha if o.prune == 2} == {None, 1, 2}
    assert {o.kv_heads for o in mha if o.prune == 1} == {None, 1}  # 5 K/V heads: only 1 divides
    # At tensor-parallel degree 2, K/V heads must split over the ranks too.
    at_tp2 = space.options_for(MHA, 2)
    assert all(o.kv_heads is None or o.kv_heads % 2 == 0 for o in at_tp2)
    assert "tensor-parallel degree 2" in reasons(space, "heads")[f"{MHA.name} heads 6->4 kv 4->1 at tp=2"]


def test_architecture_knobs_are_off_by_default_and_knobs_are_validated() -> None:
    assert "heads" not in parse_plan_knobs(None, "infer", 1)
    assert "checkpoint" in parse_plan_knobs(None, "train", 1)
    assert "tensor_parallel" in parse_plan_knobs(None, "infer", 8)
    assert parse_plan_knobs("dtype, heads", "infer", 1) == ["dtype", "heads"]
    with pytest.raises(UsageError, match=r"e\.g\. --knobs"):
        parse_plan_knobs("dtype,colour", "infer", 1)
    space = build_space(CPU, [GQA], Settings(), ["dtype"])
    assert space.layer_options[GQA.name] == [space.layer_options[GQA.name][0]]
    assert space.layer_options[GQA.name][0].prune == 0


def test_checkpointing_is_a_train_mode_choice() -> None:
    infer = build_space(CPU, [GQA], Settings(mode="infer"), ["checkpoint"])
    assert not any(o.checkpoint for o in infer.layer_options[GQA.name])
    assert "train mode only" in reasons(infer, "checkpoint")["*"]
    train = build_space(CPU, [GQA], Settings(mode="train"), ["checkpoint"])
    assert {o.checkpoint for o in train.layer_options[GQA.name]} == {"", GQA.name}


def test_sharding_degrees_divide_gpus_and_heads() -> None:
    knobs = ["tensor_parallel", "pipeline_stages", "data_parallel"]
    space = build_space(H100, [GQA], Settings(device="cuda", dtype="bf16", batch_size=8), knobs, gpus=8, blocks=4)
    triples = {(g.tensor_parallel, g.pipeline_stages, g.data_parallel) for g in space.globals}
    assert all(tp * pp * dp == 8 for tp, pp, dp in triples)
    assert {tp for tp, _, _ in triples} == {1, 2}  # 2 K/V heads: tp 4 and 8 split a head
    assert "not divisible by 4" in reasons(space, "tensor_parallel")["4"]
    assert "4 block(s)" in reasons(space, "pipeline_stages")["8"]
    options = space.options_for(GQA, 2)
    assert all((8 - o.prune) % 2 == 0 for o in options)


def test_pipeline_stages_run_alone_and_only_in_inference() -> None:
    knobs = ["pipeline_stages", "data_parallel"]
    infer = build_space(CPU, [GQA], Settings(batch_size=4), knobs, gpus=4, blocks=4)
    assert {(g.pipeline_stages, g.data_parallel) for g in infer.globals} == {(1, 4), (4, 1)}
    assert "run alone" in reasons(infer, "pipeline_stages")["2 with tp=1 dp=2"]
    train = build_space(CPU, [GQA], Settings(batch_size=4, mode="train"), knobs, gpus=2, blocks=4)
    assert {g.pipeline_stages for g in train.globals} == {1}
    assert "inference only" in reasons(train, "pipeline_stages")["2 with tp=1 dp=1"]


def test_micro_batches_divide_the_batch() -> None:
    assert micro_batch_values(12) == [1, 2, 4, 12]
    assert micro_batch_values(1) == [1]


def test_ring_collectives_follow_the_alpha_beta_formulas() -> None:
    # all-reduce of 1 GB over 8 ranks: 2*7 messages * 5 us + 2*7/8 * 1e9 B / 450e9 B/s
    assert all_reduce_s(1e9, 8, NVLINK) == pytest.approx(14 * 5e-6 + 1.75e9 / 450e9)
    assert all_gather_s(1e9, 8, NVLINK) == pytest.approx(7 * 5e-6 + 0.875e9 / 450e9)
    assert point_to_point_s(450e6, NVLINK) == pytest.approx(5e-6 + 1e-3)
    assert all_reduce_s(1e9, 1, NVLINK) == 0.0


def test_balanced_stages_match_brute_force() -> None:
    costs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for stages in (1, 2, 3, 4):
        assignment = balanced_stages(costs, stages)
        assert assignment == sorted(assignment) and set(assignment) == set(range(stages))
        worst = max(sum(c for c, s in zip(costs, assignment, strict=True) if s == k) for k in range(stages))
        best = min(
            max(sum(costs[a:b]) for a, b in itertools.pairwise((0, *cuts, len(costs))))
            for cuts in itertools.combinations(range(1, len(costs)), stages - 1)
        )
        assert worst == pytest.approx(best)


def test_sharded_step_trades_compute_for_communication() -> None:
    shape = StepShape(
        block_ms=(10.0,) * 4,
        other_ms=2.0,
        param_bytes=8e9,
        activation_bytes=4e9,
        boundary_bytes=64e6,
        micro_batches=4,
        train=True,
    )
    single = sharded_step(shape, 1, 1, 1, "fsdp", NVLINK)
    assert single.latency_ms == pytest.approx(4 * 42.0) and single.communication_ms == 0.0
    assert single.memory_bytes == pytest.approx(8e9 + 4e9)
    tp2 = sharded_step(shape, 2, 1, 1, "fsdp", NVLINK)
    assert tp2.communication_ms > 0 and tp2.latency_ms < single.latency_ms
    assert tp2.memory_bytes == pytest.approx(4e9 + 2e9)
    pp2 = sharded_step(shape, 1, 2, 1, "fsdp", NVLINK)
    assert pp2.bubble == pytest.approx(1 / 5)
    assert pp2.stage_ms == pytest.approx((22.0, 20.0))
    fsdp = sharded_step(shape, 1, 1, 4, "fsdp", NVLINK)
    ddp = sharded_step(shape, 1, 1, 4, "ddp", NVLINK)
    assert fsdp.memory_bytes < ddp.memory_bytes
    assert ddp.communication_ms == pytest.approx(1e3 * all_reduce_s(8e9, 4, NVLINK))


def test_fsdp2_gathers_each_block_every_pass_and_its_root_once_a_train_step() -> None:
    shape = StepShape(block_ms=(10.0,) * 4, other_ms=2.0, param_bytes=8e9, activation_bytes=4e9,
                      boundary_bytes=64e6, micro_batches=1, train=False, root_param_bytes=2e9)
    infer = sharded_step(shape, 1, 1, 4, "fsdp", NVLINK)
    # In inference the root (embeddings, head) stays gathered: only the blocks' 6 GB are gathered.
    assert infer.communication_ms == pytest.approx(1e3 * all_gather_s(6e9, 4, NVLINK))
    assert infer.memory_bytes == pytest.approx(6e9 / 4 + 2e9 + 6e9 / 4 + 4e9)  # shards, root, one block
    train = sharded_step(replace(shape, train=True), 1, 1, 4, "fsdp", NVLINK)
    gathers = 2 * all_gather_s(6e9, 4, NVLINK) + all_gather_s(2e9, 4, NVLINK)
    assert train.communication_ms == pytest.approx(1e3 * (gathers + all_gather_s(8e9, 4, NVLINK, "reduce_scatter")))


def test_data_parallel_replicas_split_the_batch() -> None:
    knobs = ["tensor_parallel", "data_parallel", "batch_size"]
    space = build_space(H100, [GQA], Settings(device="cuda", dtype="bf16", batch_size=6), knobs, gpus=4)
    # tp 4 would split the 2 K/V heads, dp 4 the batch of 6: only tp 2 x dp 2 remains, 3 samples per replica.
    assert {(g.tensor_parallel, g.data_parallel, g.batch_size) for g in space.globals} == {(2, 2, 1), (2, 2, 3)}
    assert "does not split over 4 replicas" in reasons(space, "data_parallel")["4"]
