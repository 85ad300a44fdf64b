"""Pipeline-stage plans for real: `attnprof apply --verify` and `attnprof profile --plan` under
torchrun (gloo, two CPU ranks), stages traced and split by torch.distributed.pipelining, a GPipe
schedule over micro-batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.plans.pipeline import micro_batches, stage_cuts
from attnprof.plans.records import Plan, PlanChoices
from attnprof.profiling.records import DistributedProfile
from attnprof.settings import resolve_settings
from attnprof.store import read_record, write_record
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


PROFILE = ["--batch-size", "4", "--seq-len", "32", "--repeats", "5", "--warmup", "1", "--threads", "1"]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_pipeline_with_three_of_four_blocks_on_one_stage_is_reported_imbalanced(tmp_path: Path) -> None:
    pipeline_plan(tmp_path / "pp.json", ["layers.3"])
    run = torchrun(["profile", "zoo:decoder", "--plan", "pp.json", "-o", "merged.json", *PROFILE], tmp_path)
    assert run.returncode == 0, run.stderr
    merged = read_record(tmp_path / "merged.json", DistributedProfile)
    assert merged.pipelined() and merged.slowest_rank() == 0 and merged.imbalanced()
    assert "slowest rank 0; imbalance (max/mean stage compute)" in run.stdout and ": imbalanced" in run.stdout
    # `attnprof report` reads the merged file back into the view rank 0 printed.
    report = CliRunner().invoke(app, ["report", str(tmp_path / "merged.json")], env={"NO_COLOR": "1"})
    assert report.exit_code == 0, report.output
    line = next(line for line in run.stdout.splitlines() if line.startswith("slowest rank"))
    assert line in report.stdout


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_balanced_pipeline_profile_records_each_stage(tmp_path: Path) -> None:
    pipeline_plan(tmp_path / "pp.json", [])
    run = torchrun(["profile", "zoo:decoder", "--plan", "pp.json", "-o", "merged.json", *PROFILE], tmp_path)
    assert run.returncode == 0, run.stderr
    merged = read_record(tmp_path / "merged.json", DistributedProfile)
    unsharded = load_workload("zoo:decoder").build_model(torch.device("cpu"), torch.float32)
    whole = sum(p.numel() for p in unsharded.parameters())
    held = {0: {"layers.0", "layers.1"}, 1: {"layers.2", "layers.3"}}
    for index, profile in enumerate(merged.ranks):
        placement = profile.rank
        assert placement is not None and placement.pipeline_stage == index and placement.plan == "pipeline_stages=2"
        assert placement.global_params == profile.workload.parameter_count == whole
        assert profile.layer("").params < whole
        # The stage's blocks under their names in the model, each timed; the other stage's absent.
        blocks = {layer.name for layer in profile.layers if layer.name.startswith("layers.") and layer.depth == 2}
        assert blocks == held[index]
        assert all(profile.layer(name).time_ms is not None for name in blocks)
        # Its own compute is part of the whole pipeline step it waits through.
        assert placement.stage_compute_ms is not None and profile.totals.time_ms is not None
        assert 0 < placement.stage_compute_ms < profile.totals.time_ms.median
    assert "stage compute ms" in run.stdout and "imbalance (max/mean stage compute)" in run.stdout


def test_profile_refuses_to_train_a_pipeline_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    pipeline_plan(tmp_path / "pp.json", [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "NO_COLOR": "1"}
    run = subprocess.run([sys.executable, "-m", "attnprof", "profile", "zoo:decoder", "--plan", "pp.json",
                          "--mode", "train"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                         check=False)
    assert run.returncode == 4 and "runs inference only" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
