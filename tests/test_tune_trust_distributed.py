"""Every sharded plan tune's space offers for two CPU ranks runs under torchrun (gloo)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnprof.plans.records import Plan, PlanChoices
from attnprof.plans.sharding import tensor_parallel_blocker
from attnprof.profiling.run import run_profile
from attnprof.settings import resolve_settings
from attnprof.store import write_record
from attnprof.targets.load import load_workload
from attnprof.tuning.space import AttentionLayout, DeviceFacts, build_space

ROOT = Path(__file__).resolve().parent.parent
SHARDING = ["tensor_parallel", "pipeline_stages", "data_parallel", "batch_size"]


def _space_plans(target: str) -> tuple[list[Plan], list[str]]:
    """The two-rank plans the space yields for `target` on this CPU, and its exclusion reasons."""
    workload = load_workload(target)
    settings = resolve_settings(workload, {"batch_size": 2, "seq_len": 16, "repeats": 1, "warmup": 1, "threads": 1})
    baseline = run_profile(workload, settings)
    layouts = [
        AttentionLayout(layer.name, layer.attention.num_heads, layer.attention.num_kv_heads, layer.attention.head_dim)
        for layer in baseline.attention_layers()
        if layer.attention is not None
    ]
    model = workload.build_model(torch.device("cpu"), torch.float32)
    space = build_space(
        DeviceFacts.probe("cpu"),
        layouts,
        settings,
        SHARDING,
        gpus=2,
        blocks=len(layouts),
        tensor_parallel_blocker=tensor_parallel_blocker(model),
    )
    plans = []
    for choice in space.globals:
        fields = dataclasses.asdict(choice)
        choices = PlanChoices(**fields, precision="cast")
        plans.append(
            Plan(baseline.workload, settings, "cpu", "latency", choices)
        )
    return plans, [f"{e.knob} {e.value}: {e.reason}" for e in space.excluded]


def test_gpt2_tensor_parallel_is_left_out_with_the_reason() -> None:
    plans, excluded = _space_plans("hf:gpt2")
    assert plans and all(p.choices.tensor_parallel == 1 for p in plans)
    assert any("tensor_parallel 2" in e and "Conv1D" in e for e in excluded), excluded


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(1800)
def test_every_two_rank_plan_of_the_space_applies_under_torchrun(tmp_path: Path) -> None:
    plans, excluded = _space_plans("zoo:decoder")
    assert not any(e.startswith("pipeline_stages") for e in excluded), excluded  # two stages alone, inference
    shardings = {(p.choices.tensor_parallel, p.choices.pipeline_stages, p.choices.data_parallel,
                  p.choices.data_parallel_mode) for p in plans}
    assert shardings == {(2, 1, 1, "fsdp"), (1, 2, 1, "fsdp"), (1, 1, 2, "ddp"), (1, 1, 2, "fsdp")}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    for i, plan in enumerate(plans):
        path = tmp_path / f"plan{i}.json"
        write_record(path, plan)
        ranks = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
             "-m", "attnprof", "apply", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
            cwd=tmp_path,
        )
        assert ranks.returncode == 0, f"{plan.choices}\n{ranks.stdout}\n{ranks.stderr}"
        assert "not applied" not in ranks.stdout.lower(), ranks.stdout
