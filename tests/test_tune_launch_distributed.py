"""`tune --gpus 2` on CPU launches its sharded candidates under torchrun (gloo) and reports
predicted vs measured for each."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnprof.plans.records import PlanChoices
from attnprof.settings import Settings
from attnprof.tuning.launch import prediction_error, profile_arguments, ranks_available

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_ranks_always_count_and_missing_gpus_do_not() -> None:
    assert ranks_available("cpu", 4)
    assert not ranks_available("cuda", 4096)


def test_prediction_error_is_signed_against_the_measurement() -> None:
    assert prediction_error(50.0, 100.0) == pytest.approx(-0.5)
    assert prediction_error(150.0, 100.0) == pytest.approx(0.5)
    assert prediction_error(150.0, None) is None


def test_the_launched_profile_runs_with_the_settings_tune_measures() -> None:
    settings = Settings(batch_size=4, seq_len=64, mode="train", dtype="fp32", warmup=2, repeats=7, threads=1)
    argv = profile_arguments("p.json", "zoo:decoder", settings)
    pairs = dict(itertools.pairwise(argv))
    assert argv[:4] == ["profile", "zoo:decoder", "--plan", "p.json"]
    assert (pairs["--batch-size"], pairs["--seq-len"], pairs["--mode"], pairs["--repeats"]) == ("4", "64", "train", "7")


def test_micro_steps_follow_the_micro_batch_per_replica() -> None:
    assert PlanChoices(data_parallel=2, batch_size=1).micro_steps(4) == 2
    assert PlanChoices(tensor_parallel=2).micro_steps(4) == 1
    assert PlanChoices(pipeline_stages=2, batch_size=1).micro_steps(4) == 1  # the schedule runs them all


def tune_on_two_cpu_ranks(knobs: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "250"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "attnprof", "tune", "zoo:decoder", "--gpus", "2", "--knobs", knobs,
         "--batch-size", "2", "--seq-len", "32", "--repeats", "2",
         "--warmup", "1", "--threads", "1", "--top-k", "3", "-o", "plan.json"],
        capture_output=True, text=True, env=env, timeout=2000, check=False, cwd=cwd,
    )


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(2400)
def test_tune_on_two_cpu_ranks_measures_its_sharded_candidates(tmp_path: Path) -> None:
    run = tune_on_two_cpu_ranks("tensor_parallel,data_parallel", tmp_path)
    assert run.returncode in (0, 1), run.stderr  # 1: no candidate survived; the table is printed either way
    assert "sharding priced on" in run.stderr
    assert "measured apart" in run.stdout, run.stdout
    assert "measured under torchrun on 2 cpu ranks (gloo)" in run.stdout
    assert "prediction error" in run.stdout


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(2400)
def test_tune_on_two_cpu_ranks_measures_a_pipeline_candidate(tmp_path: Path) -> None:
    run = tune_on_two_cpu_ranks("pipeline_stages", tmp_path)
    assert run.returncode in (0, 1), run.stderr
    candidate = next(line for line in run.stdout.splitlines() if "pp=2" in line)
    assert "measured apart: measured under torchrun on 2 cpu ranks (gloo)" in candidate, run.stdout
    assert "prediction error" in run.stdout
