"""Pipeline-stage plans for real: `attnprof apply --verify` under torchrun (gloo, two CPU ranks),
stages traced and split by torch.distributed.pipelining, a GPipe schedule over micro-batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnprof.plans.pipeline import micro_batches, stage_cuts
from attnprof.plans.records import Plan, PlanChoices
from attnprof.settings import resolve_settings
from attnprof.store import write_record
from attnprof.targets.load import load_workload
from attnprof.targets.records import WorkloadInfo
from tests.test_profile_distributed import torchrun


def pipeline_plan(path: Path, cuts: list[str]) -> None:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {"batch_size": 4, "seq_len": 32, "threads": 1, "repeats": 2, "warmup": 1})
    info = WorkloadInfo(target="zoo:decoder", fingerprint=workload.fingerprint(settings), parameter_count=0)
    write_record(path, Plan(info, settings, "cpu", "latency", PlanChoices(pipeline_stages=2, pipeline_cuts=cuts)))


def test_stage_cuts_balance_the_block_costs() -> None:
    blocks = ["layers.0", "layers.1", "layers.2", "layers.3"]
    assert stage_cuts(blocks, 2) == ["layers.2"]
    assert stage_cuts(blocks, 2, [3.0, 1.0, 1.0, 1.0]) == ["layers.1"]
    assert micro_batches(4, 2, None) == 2 and micro_batches(6, 4, None) == 3 and micro_batches(8, 2, 2) == 4


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("cuts", [[], ["layers.1"]])
def test_a_two_stage_pipeline_matches_the_unsharded_model(cuts: list[str], tmp_path: Path) -> None:
    pipeline_plan(tmp_path / "pp.json", cuts)
    run = torchrun(["apply", "pp.json", "--verify"], tmp_path)
    assert run.returncode == 0, run.stderr
    begins = cuts[0] if cuts else "layers.2"  # four equal blocks: two per stage
    assert f"2 pipeline stages (GPipe, 2 micro-batches), stages begin at {begins}" in run.stdout
    assert "max abs error 0," in run.stdout and "PASS" in run.stdout, run.stdout


def test_profile_refuses_a_pipeline_plan_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    pipeline_plan(tmp_path / "pp.json", [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "NO_COLOR": "1"}
    run = subprocess.run([sys.executable, "-m", "attnprof", "profile", "zoo:decoder", "--plan", "pp.json"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert run.returncode == 4 and "does not run pipeline-stage plans" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
