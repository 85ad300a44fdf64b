"""`attnprof profile` under torchrun (gloo, two CPU ranks): one merged profile, one report.

Each test launches `torch.distributed.run` as a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attnprof.plans.records import Plan, PlanChoices
from attnprof.profiling.records import DistributedProfile
from attnprof.profiling.run import run_profile
from attnprof.settings import resolve_settings
from attnprof.store import read_record, write_record
from attnprof.targets.load import load_workload
from attnprof.targets.records import WorkloadInfo
from attnprof.tuning.price import tensor_parallel_share

# spawning ranks on a busy 2-core machine can take minutes
pytestmark = [pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--batch-size", "2", "--seq-len", "32", "--repeats", "2", "--warmup", "1", "--threads", "1"]

# One rank builds sixteen 512-wide layers, the other one (about 1 ms of work against 16 ms):
# the heavy rank is the slowest by far, whatever the load does to a median of five steps.
IMBALANCED_MODEL = '''
import os
import torch
from torch import nn

def build_model(device, dtype):
    layers = 16 if os.environ["RANK"] == "1" else 1
    return nn.Sequential(*[nn.Linear(512, 512) for _ in range(layers)]).to(device=device, dtype=dtype)

def example_inputs(batch_size, seq_len, device, dtype):
    return (torch.randn(batch_size * seq_len, 512, device=device, dtype=dtype),)
'''


def torchrun(args: list[str], cwd: Path, ranks: int = 2) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
         "-m", "attnprof", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False, cwd=cwd,
    )


def tensor_parallel_plan(path: Path, data_parallel: int = 1) -> None:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {"batch_size": 2, "seq_len": 32, "threads": 1})
    info = WorkloadInfo(target="zoo:decoder", fingerprint=workload.fingerprint(settings), parameter_count=0)
    choices = PlanChoices(tensor_parallel=2, data_parallel=data_parallel, precision="cast")
    write_record(path, Plan(info, settings, "cpu", "latency", choices))


def test_tensor_parallel_profile_records_both_ranks_their_collectives_and_local_parameters(tmp_path: Path) -> None:
    tensor_parallel_plan(tmp_path / "tp.json")
    run = torchrun(["profile", "zoo:decoder", "--plan", "tp.json", "-o", "merged.json", *SMALL], tmp_path)
    assert run.returncode == 0, run.stderr
    merged = read_record(tmp_path / "merged.json", DistributedProfile)
    assert [p.rank.rank for p in merged.ranks if p.rank] == [0, 1]
    assert list(tmp_path.glob("profiles/**/*.json")) == []  # one file, the one asked for
    for profile in merged.ranks:
        placement = profile.rank
        assert placement is not None and placement.world_size == 2 and placement.backend == "gloo"
        assert placement.plan == "tensor_parallel=2" and placement.mesh == [2]
        assert placement.collective_calls.get("all_reduce", 0) > 0
        assert profile.totals.collective_ms is not None and profile.totals.collective_ms > 0
        root = profile.layer("")
        # Local: the attention and MLP weights are halved, embeddings and head stay whole.
        assert root.params < placement.global_params == profile.workload.parameter_count
        assert root.params > placement.global_params // 2
        assert profile.layer("layers.0.attn.q_proj").params * 2 == 256 * 256 + 256  # column-wise: half the rows
        # The row-wise projections' all-reduce runs as they return: booked on the attention and the MLP.
        assert profile.layer("layers.0.attn").collective_ms > 0 and profile.layer("layers.0.mlp").collective_ms > 0
        attention = profile.layer("layers.0.attn").attention
        assert attention is not None and attention.num_heads == 4  # 8 heads, half per rank
    # The per-rank memory model of tune holds what apply left on the rank.
    workload = load_workload("zoo:decoder")
    baseline = run_profile(workload, resolve_settings(workload, {"batch_size": 2, "seq_len": 32, "repeats": 1}))
    share = tensor_parallel_share(baseline)
    predicted = baseline.totals.param_bytes * (share / 2 + 1 - share)
    assert predicted == pytest.approx(merged.ranks[0].totals.param_bytes, rel=0.01)
    # One report on stdout, from rank 0.
    assert run.stdout.count("2 ranks (gloo") == 1, run.stdout
    assert "slowest rank" in run.stdout and "imbalance" in run.stdout


def test_fsdp2_all_gathers_are_timed_per_block(tmp_path: Path) -> None:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {"batch_size": 2, "seq_len": 32, "threads": 1})
    info = WorkloadInfo(target="zoo:decoder", fingerprint=workload.fingerprint(settings), parameter_count=0)
    choices = PlanChoices(data_parallel=2, data_parallel_mode="fsdp", batch_size=1)
    write_record(tmp_path / "fsdp.json", Plan(info, settings, "cpu", "latency", choices))
    run = torchrun(["profile", "zoo:decoder", "--plan", "fsdp.json", "-o", "merged.json", *SMALL], tmp_path)
    assert run.returncode == 0, run.stderr
    for profile in read_record(tmp_path / "merged.json", DistributedProfile).ranks:
        assert profile.rank is not None and sum(profile.rank.collective_calls.values()) >= 4  # one per block
        assert profile.totals.collective_ms is not None and profile.totals.collective_ms > 0
        assert all((profile.layer(f"layers.{i}").collective_ms or 0) > 0 for i in range(4))


def test_four_ranks_on_a_two_dimensional_mesh_record_it(tmp_path: Path) -> None:
    tensor_parallel_plan(tmp_path / "tp-fsdp.json", data_parallel=2)
    run = torchrun(["profile", "zoo:decoder", "--plan", "tp-fsdp.json", "-o", "merged.json", *SMALL], tmp_path, 4)
    assert run.returncode == 0, run.stderr
    merged = read_record(tmp_path / "merged.json", DistributedProfile)
    assert [p.rank.rank for p in merged.ranks if p.rank] == [0, 1, 2, 3]
    for profile in merged.ranks:
        assert profile.rank is not None and (profile.rank.mesh, profile.rank.mesh_dims) == ([2, 2], ["dp", "tp"])
        assert profile.rank.plan == "tensor_parallel=2, data_parallel=2 (fsdp)"
        assert profile.totals.collective_ms is not None and profile.totals.collective_ms > 0
    assert "4 ranks (gloo, mesh dp 2 × tp 2)" in run.stdout


def test_an_imbalanced_run_is_reported_as_imbalanced(tmp_path: Path) -> None:
    (tmp_path / "uneven.py").write_text(IMBALANCED_MODEL)
    steady = [*SMALL, "--repeats", "5"]  # the last --repeats wins
    run = torchrun(["profile", "uneven.py", "--json", "--no-save", *steady], tmp_path)
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)  # rank 0's JSON only: the other rank prints nothing
    merged = read_record_data(data)
    assert merged.slowest_rank() == 1
    assert merged.imbalanced()
    report = torchrun(["profile", "uneven.py", "--no-save", *steady], tmp_path)
    assert report.returncode == 0, report.stderr
    assert "slowest rank 1" in report.stdout and ": imbalanced" in report.stdout, report.stdout


def read_record_data(data: object) -> DistributedProfile:
    from attnprof.store import from_json_dict

    return from_json_dict(DistributedProfile, data)


def test_a_sharded_plan_outside_torchrun_names_the_command(tmp_path: Path) -> None:
    tensor_parallel_plan(tmp_path / "tp.json")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    run = subprocess.run(
        [sys.executable, "-m", "attnprof", "profile", "zoo:decoder", "--plan", "tp.json", *SMALL],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, timeout=600, check=False, cwd=tmp_path,
    )
    assert run.returncode == 4, run.stderr
    assert "torchrun" in run.stderr and "--nproc-per-node=2" in run.stderr
