"""Predicted vs measured step time of sharded plans on two CPU ranks (gloo), calibrated α-β.

The link between the ranks is measured first (`torchrun … attnprof doctor --calibrate --link`,
unless this machine already has it, or --recalibrate). Then `tune --gpus 2` runs on zoo:decoder
with the sharding knobs (tensor parallel, data parallel as DDP or FSDP2, two pipeline stages in
infer mode) and every candidate of the space verified: tune prices each with the measured link,
launches it under torchrun (tuning/launch.py) and records the slowest rank's step. Printed per
plan: predicted, measured, error = predicted / measured - 1.

Run: PYTHONPATH=. python benchmarks/distributed_truth.py [--mode infer|train] [--seq-len N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from attnprof.machine import machine_info
from attnprof.measure.links import calibrated_link
from attnprof.plans.sharding import sharding_label
from attnprof.settings import resolve_settings
from attnprof.targets.load import load_workload
from attnprof.tuning.budget import parse_budget
from attnprof.tuning.loop import TuneRequest, tune
from attnprof.tuning.sharding import MeasuredLink
from attnprof.tuning.space import parse_plan_knobs


def calibrate() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "attnprof", "doctor", "--calibrate", "--link"],
        check=True, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="infer", choices=["infer", "train"])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--recalibrate", action="store_true")
    args = parser.parse_args()
    if args.recalibrate or calibrated_link(machine_info(), "gloo", "cpu", 2) is None:
        calibrate()
    measured_link = calibrated_link(machine_info(), "gloo", "cpu", 2)
    assert measured_link is not None
    link = MeasuredLink.from_calibration(measured_link)
    print("link:", ", ".join(f"{k} α {a:.0f} µs β {b:.3f} GB/s" for k, (a, b) in link.collectives.items()),
          f"; ranks computing at once {link.compute_slowdown:.2f}× slower than alone")
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(
        workload,
        {"batch_size": args.batch_size, "seq_len": args.seq_len, "mode": args.mode, "repeats": 5, "warmup": 2,
         "threads": 1},
    )
    knobs = parse_plan_knobs("tensor_parallel,data_parallel,pipeline_stages", settings.mode, 2)
    request = TuneRequest(parse_budget([], gpus=2), "latency", knobs, top_k=8, link=link)
    outcome = tune(workload, settings, request)
    base = outcome.baseline.totals.time_ms
    print(f"baseline (1 process): {base.median if base else float('nan'):.1f} ms")
    print(f"{'plan':45} {'predicted ms':>12} {'measured ms':>12} {'error':>8}")
    for v in outcome.verifications:
        if v.choices.world_size <= 1:
            continue
        predicted = v.predicted.latency_ms
        measured = v.measured.latency_ms if v.measured else None
        error = f"{100 * (predicted / measured - 1):+.0f}%" if predicted and measured else "-"
        shown = f"{measured:12.1f}" if measured else f"{'-':>12}"
        plan = f"{sharding_label(v.choices)}, micro-batch {v.choices.batch_size or settings.batch_size}"
        print(f"{plan[:45]:45} {predicted or float('nan'):12.1f} {shown} {error:>8}")
    for line in (e for e in outcome.excluded if e.knob in ("pipeline_stages", "data_parallel", "tensor_parallel")):
        print(f"left out: {line.knob} {line.value}: {line.reason}")


if __name__ == "__main__":
    main()
