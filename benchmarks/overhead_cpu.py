"""Per-layer timing overhead on CPU: plain steps vs steps with attnprof's per-layer timing hooks.

Both run side by side in one process on the same model and inputs, alternating step by step
(ABAB...), so machine noise hits both alike; the result is the ratio of medians. Target:
<= 3% at >= 30 ms steps (docs/architecture.md, "Performance targets").

    python -m benchmarks.overhead_cpu [--target zoo:decoder] [--mode infer] [--rounds 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics

from attnprof.measure.scopes import ModuleScopes
from attnprof.measure.timing import HostClockLayerTimer, time_call
from attnprof.profiling.run import prepare
from attnprof.settings import resolve_settings
from attnprof.targets.load import load_workload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="zoo:decoder")
    parser.add_argument("--mode", default="infer", choices=["infer", "train"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: least scheduler noise)")
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

    for _ in range(5):  # warm-up, both paths
        prepared.step()
        hooked()
    plain_ms, hooked_ms = [], []
    for _ in range(args.rounds):
        plain_ms.append(1e3 * time_call(prepared.step, prepared.device))
        hooked_ms.append(1e3 * time_call(hooked, prepared.device))
    plain, timed = statistics.median(plain_ms), statistics.median(hooked_ms)
    modules = len(scopes.order)
    print(f"| {args.target} | {args.mode} | B{args.batch_size} S{args.seq_len} | {modules} | {plain:.2f} | "
          f"{timed:.2f} | {100 * (timed / plain - 1):+.2f}% |")


if __name__ == "__main__":
    main()
