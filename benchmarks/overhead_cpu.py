"""Per-layer timing overhead on CPU: plain steps vs steps with attnprof's per-layer timing.

Both run side by side in one process on the same model and inputs, interleaved step by step
with the order flipped every round (AB BA AB ...), so machine noise and drift hit both alike.
The instrumented step is what the profiler's timing pass runs: the module scopes (forward
hooks; in train mode also the backward scopes read from the autograd graph) with the host-clock
layer timer. Reported: the ratio of the medians, and the median of the per-round ratios with a
95% confidence interval (order statistics of the rounds), and the load average before and after.
Target: <= 3% at >= 30 ms steps (docs/architecture.md, "Performance targets").

    python -m benchmarks.overhead_cpu [--target zoo:decoder] [--mode train] [--rounds 60] [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics

from attnprof.measure.scopes import ModuleScopes
from attnprof.measure.timing import HostClockLayerTimer, time_call
from attnprof.profiling.run import prepare
from attnprof.settings import resolve_settings
from attnprof.targets.load import load_workload


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free interval for the median: the order statistics k and n-k+1, with k the
    largest rank whose binomial(n, 1/2) tail stays within (1 - confidence) / 2."""
    ordered = sorted(values)
    n = len(ordered)
    tail, k = 0.0, 0
    while k < n // 2:
        tail += math.comb(n, k) / 2**n
        if tail > (1 - confidence) / 2:
            break
        k += 1
    if k == 0:
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="zoo:decoder")
    parser.add_argument("--mode", default="infer", choices=["infer", "train"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least scheduler noise)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="cpu: the process's CPU time, which time slicing on a loaded machine does not inflate")
    args = parser.parse_args()

    workload = load_workload(args.target)
    settings = resolve_settings(workload, {"mode": args.mode, "batch_size": args.batch_size,
                                           "seq_len": args.seq_len, "threads": args.threads})
    prepared = prepare(workload, settings)
    timer = HostClockLayerTimer()
    scopes = ModuleScopes(prepared.model, backward=args.mode == "train")
    scopes.add_listener(timer)

    def hooked() -> None:
        timer.reset()
        with scopes:
            prepared.step()

    load_before = os.getloadavg()
    for _ in range(5):  # warm-up, both paths
        prepared.step()
        hooked()
    plain_ms: list[float] = []
    hooked_ms: list[float] = []
    for round_index in range(args.rounds):
        first_plain = round_index % 2 == 0
        for run_plain in (first_plain, not first_plain):
            if run_plain:
                plain_ms.append(1e3 * time_call(prepared.step, prepared.device, args.clock))
            else:
                hooked_ms.append(1e3 * time_call(hooked, prepared.device, args.clock))
    load_after = os.getloadavg()
    plain, timed = statistics.median(plain_ms), statistics.median(hooked_ms)
    ratios = [h / p for h, p in zip(hooked_ms, plain_ms, strict=True)]
    low, high = median_interval(ratios)
    backward_scopes = sum(1 for name, phase in timer.times.inclusive if phase == "backward")
    print(f"| {args.target} | {args.mode} | B{args.batch_size} S{args.seq_len} | {args.clock} | {len(scopes.order)} | "
          f"{backward_scopes} | {plain:.2f} | {timed:.2f} | {100 * (timed / plain - 1):+.2f}% | "
          f"{100 * (statistics.median(ratios) - 1):+.2f}% [{100 * (low - 1):+.2f}%, {100 * (high - 1):+.2f}%] | "
          f"{load_before[0]:.2f} → {load_after[0]:.2f} |")


if __name__ == "__main__":
    main()
