"""`attnprof apply` in-process, and once for real under torchrun with two gloo ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnprof.cli.app import app
from attnprof.plans.records import Budget, Plan, PlanChoices
from attnprof.settings import Settings
from attnprof.store import write_record
from attnprof.targets.load import load_workload
from attnprof.targets.records import WorkloadInfo

SETTINGS = Settings(batch_size=1, seq_len=16, warmup=1, repeats=2)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "160")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


def write_plan(path: Path, choices: PlanChoices, target: str = "zoo:decoder", budgets: Budget | None = None) -> Path:
    fingerprint = load_workload(target).fingerprint(SETTINGS)
    plan = Plan(
        workload=WorkloadInfo(target, fingerprint, 0),
        settings=SETTINGS,
        device="cpu",
        objective="latency",
        choices=choices,
        budgets=budgets or Budget(),
    )
    write_record(path, plan)
    return path


def test_apply_verify_prints_changes_and_saves_the_profile(runner: CliRunner, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", PlanChoices(prune_heads={"*": 2}, backend="math"))
    result = runner.invoke(app, ["apply", str(plan), "--verify", "--out", "report.json"])
    assert result.exit_code == 0, result.output
    assert "layers.0.attn" in result.stdout and "8 → 6" in result.stdout
    assert "verify: max abs error" in result.stdout and "PASS" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["new_num_heads"] for s in report["sites"]] == [6, 6, 6, 6]
    assert report["verification"]["logit_kl"] > 0  # pruning moved the logits
    profile = json.loads((tmp_path / "plan-applied-profile.json").read_text())
    assert profile["layers"][0]["name"] == "" and report["verification"]["measured_latency_ms"] > 0


def test_verification_over_the_plan_bound_is_exit_1(runner: CliRunner, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", PlanChoices(prune_heads={"*": 4}), budgets=Budget(max_quality_loss=1e-6))
    result = runner.invoke(app, ["apply", str(plan), "--verify"])
    assert result.exit_code == 1
    assert "exceeds max_quality_loss" in result.stderr


def test_plan_for_another_workload_is_refused_unless_forced(runner: CliRunner, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", PlanChoices(dtype="bf16"))
    refused = runner.invoke(app, ["apply", str(plan), "zoo:gpt"])
    assert refused.exit_code == 2
    assert "fingerprint" in refused.stderr and "--force" in refused.stderr and "Traceback" not in refused.output
    forced = runner.invoke(app, ["apply", str(plan), "zoo:gpt", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "precision bf16" in forced.stdout


def test_multi_rank_plan_prints_the_torchrun_command(runner: CliRunner, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", PlanChoices(tensor_parallel=2))
    result = runner.invoke(app, ["apply", str(plan), "--verify"])
    assert result.exit_code == 4
    command = f"torchrun --standalone --nproc-per-node=2 -m attnprof apply {plan} --verify"
    assert result.stdout.strip() == command
    result = runner.invoke(app, ["apply", str(plan), "--verify", "--json"])
    assert result.exit_code == 4
    assert json.loads(result.stdout) == {"torchrun_command": command + " --json"}


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        ("{not json", 2, "corrupt"),
        (json.dumps({"schema_version": 1, "choices": {}}), 2, "missing field"),
    ],
)
def test_bad_plan_files(runner: CliRunner, tmp_path: Path, content: str, code: int, message: str) -> None:
    (tmp_path / "plan.json").write_text(content)
    result = runner.invoke(app, ["apply", "plan.json"])
    assert result.exit_code == code and message in result.stderr


def test_bad_choices_are_usage_errors(runner: CliRunner, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", PlanChoices(prune_heads={"layers.9.attn": 2}))
    result = runner.invoke(app, ["apply", str(plan)])
    assert result.exit_code == 2 and "layers.9.attn" in result.stderr
    data = json.loads(plan.read_text())
    data["choices"]["dtype"] = "fp8"
    plan.write_text(json.dumps(data))
    result = runner.invoke(app, ["apply", str(plan)])
    assert result.exit_code == 2 and "fp8" in result.stderr


def test_backend_this_machine_lacks_is_exit_4(runner: CliRunner, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", PlanChoices(backend="cudnn"))
    result = runner.invoke(app, ["apply", str(plan)])
    assert result.exit_code == 4 and "cudnn" in result.stderr


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_printed_torchrun_command_runs_every_rank(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", PlanChoices(tensor_parallel=2))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    printed = subprocess.run(
        [sys.executable, "-m", "attnprof", "apply", str(plan), "--verify", "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert printed.returncode == 4, printed.stderr
    command = printed.stdout.strip().split()
    assert command[0] == "torchrun"
    # the same launcher torchrun is, from this interpreter
    ranks = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *command[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert ranks.returncode == 0, ranks.stdout + ranks.stderr
    assert "(rank 0 of 2)" in ranks.stdout and "PASS" in ranks.stdout
    assert "tensor parallel over 2 ranks: 4 attention layers, 4 MLPs" in ranks.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["world_size"] == 2 and report["verification"]["max_abs_error"] <= 1e-5


def test_pipeline_stages_with_tensor_parallel_are_refused_before_anything_runs(
    runner: CliRunner, tmp_path: Path
) -> None:
    plan = write_plan(tmp_path / "plan.json", PlanChoices(pipeline_stages=2, tensor_parallel=2))
    result = runner.invoke(app, ["apply", str(plan)])
    assert result.exit_code == 4 and "pipeline stages" in result.stderr and result.stdout == ""


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_on_two_gpus_uses_nccl(tmp_path: Path) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    plan = write_plan(tmp_path / "plan.json", PlanChoices(tensor_parallel=2))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    ranks = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "attnprof",
            "apply",
            str(plan),
            "--device",
            "cuda",
            "--force",
            "--verify",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert ranks.returncode == 0, ranks.stdout + ranks.stderr
    assert "PASS" in ranks.stdout


def test_bad_inputs_get_their_exit_codes(runner: CliRunner, tmp_path: Path, models_dir: Path) -> None:
    broken = str(models_dir / "broken_forward.py")
    # the user's forward raising while the plan is applied: exit 3 with their traceback
    plan = write_plan(tmp_path / "broken.json", PlanChoices(backend="math"), target=broken)
    result = runner.invoke(app, ["apply", str(plan), broken])
    assert result.exit_code == 3 and "user bug in forward" in result.stderr and "compute" in result.stderr
    # a plan for a GPU, applied where there is none: exit 4
    plan = write_plan(tmp_path / "gpu.json", PlanChoices())
    data = json.loads(plan.read_text())
    data["settings"]["device"] = "cuda"
    plan.write_text(json.dumps(data))
    result = runner.invoke(app, ["apply", str(plan), "--force"])
    assert result.exit_code == 4 and "cuda" in result.stderr
    # a module to checkpoint that the model does not have: exit 2
    plan = write_plan(tmp_path / "ckpt.json", PlanChoices(checkpoint=["layers.99"]))
    result = runner.invoke(app, ["apply", str(plan)])
    assert result.exit_code == 2 and "layers.99" in result.stderr
    # more heads pruned than the layer has: exit 2
    plan = write_plan(tmp_path / "heads.json", PlanChoices(prune_heads={"*": 8}))
    result = runner.invoke(app, ["apply", str(plan)])
    assert result.exit_code == 2 and "cannot prune 8 of 8 heads" in result.stderr
