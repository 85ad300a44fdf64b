"""Overhead of GPU instrumentation vs plain steps, measured side by side in one process.

Three kinds of step, interleaved in rounds so the machine's drift affects them alike:
  plain  — the step alone, device-synchronised (CUDA events on a GPU, wall clock on a CPU);
  light  — the same while NVML telemetry runs (the sampler thread at its default 10 Hz on a GPU;
           on a CPU, what a profile pays there: nothing runs);
  trace  — steps inside the `--trace` window: torch.profiler recording with module labels.
The trace window also has a fixed cost (profiler start/stop, event parsing, Chrome-trace export),
reported separately, as is the one-off NVML probe of a GPU profile (init, UUID match, sampler
start and stop — or, without a driver, the failed init that leaves energy null with its reason).

    python -m benchmarks.overhead_gpu [--device cuda] [--rounds 10] [--steps 5]

Prints a markdown table for benchmarks/RESULTS.md. Targets (docs/architecture.md): light ≤ 1% on a GPU,
trace ≤ 5%.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from attnprof.measure.nvml import Telemetry
from attnprof.measure.scopes import ModuleScopes
from attnprof.measure.timing import time_call
from attnprof.measure.trace import run_trace
from attnprof.profiling.run import prepare
from attnprof.settings import resolve_settings
from attnprof.targets.load import load_workload


@dataclass
class Overhead:
    """Per-round ratios of light and trace steps to the plain steps around them, and the raw samples."""

    ratios: dict[str, list[float]]
    samples: dict[str, list[float]]
    window_costs: list[float]  # seconds of each trace window's fixed cost
    probes: list[float]  # seconds of each NVML probe
    reason: str | None  # why telemetry recorded nothing during the light steps, if it did not

    def overhead(self, kind: str) -> float:
        """The median of the per-round ratios, minus one."""
        return statistics.median(self.ratios[kind]) - 1

    @property
    def plain_ms(self) -> float:
        return statistics.median(self.samples["plain"]) * 1e3

    @property
    def window_cost_s(self) -> float:
        return statistics.median(self.window_costs)

    @property
    def probe_s(self) -> float:
        return statistics.median(self.probes)


def measure_overhead(target: str, device_name: str, batch_size: int, seq_len: int, dtype: str, rounds: int,
                     steps: int) -> Overhead:
    workload = load_workload(target)
    settings = resolve_settings(
        workload, {"device": device_name, "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype}
    )
    prepared = prepare(workload, settings)
    device = prepared.device
    for _ in range(3):
        prepared.step()

    # Each round: plain, light, trace window, plain again. A kind's ratio in a round is its median
    # over the median of the plain steps around it, so slow drift of a shared machine cancels.
    ratios: dict[str, list[float]] = {"light": [], "trace": []}
    samples: dict[str, list[float]] = {"plain": [], "light": [], "trace": []}
    window_costs: list[float] = []
    reason = None
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(rounds):
            before = [time_call(prepared.step, device) for _ in range(steps)]

            with Telemetry(device) as telemetry:
                telemetry.window_start()
                light = [time_call(prepared.step, device) for _ in range(steps)]
                telemetry.window_end(steps)
            reason = telemetry.reason

            in_window: list[float] = []
            started = time.perf_counter()
            with ModuleScopes(prepared.model, record_labels=True, backward=settings.mode == "train"):
                run_trace(
                    lambda: in_window.append(time_call(prepared.step, device)),  # noqa: B023
                    device,
                    warmup=1,
                    active=steps,
                    trace_file=Path(scratch) / "trace.json.gz",
                )
            window_costs.append(time.perf_counter() - started - sum(in_window))
            traced = in_window[1:]  # the profiler's warm-up step is not part of the window

            after = [time_call(prepared.step, device) for _ in range(steps)]
            plain = statistics.median(before + after)
            ratios["light"].append(statistics.median(light) / plain)
            ratios["trace"].append(statistics.median(traced) / plain)
            samples["plain"] += before + after
            samples["light"] += light
            samples["trace"] += traced

    probes = []
    for _ in range(rounds):
        started = time.perf_counter()
        with Telemetry(torch.device("cuda", device.index or 0)) as probe:
            pass
        probes.append(time.perf_counter() - started)
    return Overhead(ratios, samples, window_costs, probes, reason or probe.reason)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--target", default="zoo:decoder")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5, help="steps of each kind per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    figures = measure_overhead(args.target, args.device, args.batch_size, args.seq_len, args.dtype, args.rounds,
                               args.steps)
    samples, ratios = figures.samples, figures.ratios
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}; {args.target} batch {args.batch_size} seq {args.seq_len} {args.dtype}; "
        f"{args.rounds} rounds x {args.steps} steps of each kind; torch threads {args.threads}"
    )
    if figures.reason:
        print(f"telemetry: {figures.reason}")
    print()
    print("| step kind | median ms | overhead: median of per-round ratios (min – max) | overhead: fastest vs fastest |")
    print("| --- | --- | --- | --- |")
    fastest_plain = min(samples["plain"])
    print(f"| plain | {figures.plain_ms:.2f} | — | — |")
    for kind, label in (("light", "light (timing + NVML sampler)"), ("trace", "inside the trace window")):
        spread = ratios[kind]
        print(
            f"| {label} | {statistics.median(samples[kind]) * 1e3:.2f} | "
            f"{100 * figures.overhead(kind):+.1f}% ({100 * (min(spread) - 1):+.1f}% – "
            f"{100 * (max(spread) - 1):+.1f}%) | {100 * (min(samples[kind]) / fastest_plain - 1):+.1f}% |"
        )
    fixed_ms = figures.window_cost_s * 1e3
    print(f"| trace window fixed cost (start, parse, export) | {fixed_ms:.0f} | once per --trace | |")
    outcome = figures.reason or "telemetry available"
    print(f"| NVML probe ({outcome}) | {figures.probe_s * 1e3:.3f} | once per profile | |")


if __name__ == "__main__":
    main()
