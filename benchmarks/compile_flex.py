"""Compile time, and step time of compiled blocks and of the flex backend against SDPA, on one CPU.

Each plan is applied as `attnprof apply` applies it and prepared as the profiler prepares it;
its first step (where torch.compile compiles) is timed by the compile watch; then all plans are
timed in shuffled interleaved rounds (tuning/compare.interleave, as tune's verification times
candidates) and compared with the unmodified model by the paired ratio of the rounds.

    python benchmarks/compile_flex.py [--target zoo:decoder] [--batch-size 4] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attnprof.measure.compilation import CompileWatch
from attnprof.plans.records import PlanChoices
from attnprof.plans.verify import applied_settings, applied_workload
from attnprof.profiling.run import prepare
from attnprof.settings import Settings
from attnprof.targets.load import load_workload
from attnprof.tuning.compare import TimedSide, interleave, paired_ratio

PLANS = {
    "sdpa (flash, unmodified)": PlanChoices(backend="flash"),
    "compile (blocks, inductor)": PlanChoices(backend="flash", compile=True),
    "backend flex": PlanChoices(backend="flex"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="zoo:decoder")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget of the interleaved rounds")
    options = parser.parse_args()
    base = Settings(batch_size=options.batch_size, seq_len=options.seq_len, threads=1, warmup=2)
    workload = load_workload(options.target)
    sides, first = [], {}
    for label, choices in PLANS.items():
        settings = applied_settings(base, choices)
        with CompileWatch() as watch:
            prepared = prepare(applied_workload(workload, settings, choices), settings)
            started = time.perf_counter()
            prepared.step()
            first[label] = (time.perf_counter() - started, watch.seconds, watch.compiles)
        sides.append(TimedSide(label, prepared, threads=1))
    rounds = interleave(sides, "wall", options.seconds, base.warmup, min_rounds=10, max_rounds=40)
    print(f"{options.target}, inference, batch {options.batch_size}, seq {options.seq_len}, 1 thread, "
          f"{rounds} interleaved rounds, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print("| plan | first step s | compile s (compiles) | median step ms | ratio to sdpa [95% CI] |")
    print("| --- | ---: | ---: | ---: | ---: |")
    reference = sides[0]
    for side in sides:
        step_s, compile_s, compiles = first[side.label]
        ratio = paired_ratio(side.samples_ms, reference.samples_ms)
        print(f"| {side.label} | {step_s:.1f} | {compile_s:.1f} ({compiles}) | {side.median_ms:.2f} | "
              f"{ratio.value:.3f} [{ratio.low:.3f}, {ratio.high:.3f}] |")


if __name__ == "__main__":
    main()
