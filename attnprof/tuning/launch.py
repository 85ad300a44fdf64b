"""Sharded candidates measured for real: each is launched under torchrun on this machine.

A candidate that needs N ranks cannot be measured inside tune's process. When this machine has
them (N CPU processes over gloo always count; N GPUs for NCCL), tune writes the candidate as a
plan and runs `torchrun --standalone --nproc-per-node=N -m attnprof profile TARGET --plan PLAN
--json`: every rank profiles its share, rank 0 prints the merged profile. The step is the slowest
rank's (the others wait for it at the next collective), the memory the fullest rank's. The
measurement is recorded beside the prediction with its error; it is not part of the interleaved
comparison, which runs in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from attnprof.plans.records import Plan, PlanFigures
from attnprof.plans.sharding import torchrun_command
from attnprof.profiling.records import DistributedProfile
from attnprof.settings import Settings
from attnprof.store import ScratchFolder, from_json_dict, write_record
from attnprof.targets.records import WorkloadInfo
from attnprof.tuning.verify import CandidateMeasurement

LAUNCH_TIMEOUT_S = 900  # starting ranks on a loaded machine takes minutes


def ranks_available(device: str, world_size: int) -> bool:
    """True when this machine can start `world_size` ranks of `device`'s kind."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.device_count() >= world_size
    return device == "cpu"


def profile_arguments(plan_path: str, target: str, settings: Settings) -> list[str]:
    return [
        "profile", target, "--plan", plan_path, "--json", "--no-save",
        "--batch-size", str(settings.batch_size), "--seq-len", str(settings.seq_len), "--dtype", settings.dtype,
        "--backend", settings.backend, "--device", settings.device.split(":")[0], "--mode", settings.mode,
        "--warmup", str(settings.warmup), "--repeats", str(settings.repeats), "--clock", settings.clock,
        *(["--threads", str(settings.threads)] if settings.threads else []),
    ]


def launch_profile(plan: Plan, settings: Settings) -> DistributedProfile:
    """Profile `plan` under torchrun on this machine; the merged profile rank 0 printed."""
    world_size = plan.choices.world_size
    with ScratchFolder("launch") as folder:
        path = folder / "plan.json"
        write_record(path, plan)
        argv = profile_arguments(str(path), plan.workload.target, settings)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
        run = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world_size}",
             "-m", "attnprof", *argv],
            capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT_S, check=False,
        )
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{torchrun_command(world_size, argv)} exited {run.returncode}: {last}")
    return from_json_dict(DistributedProfile, json.loads(run.stdout), "the launched profile")


def measured_figures(merged: DistributedProfile, micro_steps: int, samples: int) -> PlanFigures:
    steps = [t for t in merged.step_ms() if t is not None]
    latency = micro_steps * max(steps) if steps else None
    return PlanFigures(
        latency_ms=latency,
        memory_bytes=float(max(p.totals.peak_memory_bytes for p in merged.ranks)),
        throughput=samples * 1e3 / latency if latency else None,
    )


def prediction_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured: negative when the prediction was optimistic."""
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured


def measure_sharded(
    verifications: list[CandidateMeasurement], workload: WorkloadInfo, settings: Settings, objective: str
) -> list[CandidateMeasurement]:
    """Launch and measure every sharded candidate this machine has the ranks for; the ones measured."""
    measured = []
    for v in verifications:
        world_size = v.choices.world_size
        if world_size <= 1 or v.measured is not None or not ranks_available(settings.device, world_size):
            continue
        plan = Plan(workload, settings, settings.device, objective, v.choices, predicted=v.predicted)
        micro_steps = v.choices.micro_steps(settings.batch_size)
        try:
            merged = launch_profile(plan, settings)
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            v.reason = f"{v.reason}; launching it under torchrun failed: {exc}"
            continue
        v.measured = measured_figures(merged, micro_steps, settings.batch_size)
        error = prediction_error(v.predicted.latency_ms, v.measured.latency_ms)
        backend = merged.ranks[0].rank.backend if merged.ranks[0].rank else "?"
        v.reason = (
            f"measured under torchrun on {world_size} {settings.device.split(':')[0]} ranks ({backend}), "
            f"outside the interleaved comparison: predicted {v.predicted.latency_ms:.4g} ms, measured "
            f"{v.measured.latency_ms:.4g} ms"
            + (f" (prediction error {100 * error:+.0f}%)" if error is not None else "")
        )
        measured.append(v)
    return measured
