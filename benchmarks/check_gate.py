"""CI gate quality: false alarms on A/A and recall on a 5% slowdown, for `attnprof check`'s timing test.

Two parts, side by side in one process:

1. Real runs on this machine. Workload A is examples/check_demo_model.py; workload B is the same
   model with extra work (small matrix products in a forward hook on `layers.1.attn`) sized by
   calibration to 5% of A's step. Full `run_profile` runs alternate A, B, A, B ... for a bounded
   time; every A/A pair and every A/B pair of runs is judged with `compare_profiles`, counting
   how often the step's timing verdict (and any module's) is a regression. The injected work
   also changes FLOPs, which the exact metrics catch every time: only timing verdicts are
   counted here, because they are what this measures.
2. A simulation with the noise measured in part 1: within-run noise resampled from the A runs'
   step samples (each divided by its run's median) and between-run drift resampled from the A
   runs' medians, at several repeat counts and thresholds, many thousand trials each; the
   verdict is the gate's rule (slowdown past the limit AND one-sided Mann-Whitney p < alpha),
   checked against `compare_samples` on the first trials.

    python -m benchmarks.check_gate [--budget-s 90] [--repeats 20] [--trials 20000] [--cpu-blocks 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from torch import nn

from attnprof.check import DEFAULT_ALPHA, CheckOptions, compare_profiles, compare_samples, parse_threshold
from attnprof.profiler import prepare, resolve_settings, run_profile
from attnprof.records import Profile, Settings
from attnprof.workload import Workload, load_workload

DEMO_MODEL = Path(__file__).parents[1] / "examples" / "check_demo_model.py"
SLOWDOWN = 0.05
LIMITS = (0.02, 0.05)
CALIBRATION_UNITS = 60
UNIT_SIZE = 64  # one unit of extra work: a 64x64 by 64x64 matrix product
Runs = list[list[float]]  # timing samples (ms) of several runs


def extra_work_hook(units: int) -> Callable[[nn.Module, Any, Any], None]:
    block = torch.randn(UNIT_SIZE, UNIT_SIZE, generator=torch.Generator().manual_seed(0))

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        for _ in range(units):
            torch.mm(block, block)

    return hook


def slowed_workload(base: Workload, units: int) -> Workload:
    """The demo workload with `units` of extra work after `layers.1.attn`'s forward."""
    build = base.build_model

    def build_model(device: torch.device, dtype: torch.dtype) -> nn.Module:
        model = build(device, dtype)
        if units:
            model.get_submodule("layers.1.attn").register_forward_hook(extra_work_hook(units))
        return model

    return dataclasses.replace(base, build_model=build_model)


def calibrate_units(base: Workload, settings: Settings) -> tuple[int, float]:
    """Units of extra work that cost SLOWDOWN of A's step, from thread CPU time (immune to the
    time slicing a shared machine adds to wall time), A and B steps interleaved."""
    plain = prepare(base, settings)
    heavy = prepare(slowed_workload(base, CALIBRATION_UNITS), settings)
    cpu: dict[str, list[float]] = {"plain": [], "heavy": []}
    for _ in range(5):
        plain.step()
        heavy.step()
    for _ in range(60):
        for name, prepared in (("plain", plain), ("heavy", heavy)):
            start = time.thread_time()
            prepared.step()
            cpu[name].append(time.thread_time() - start)
    step = statistics.median(cpu["plain"])
    per_unit = (statistics.median(cpu["heavy"]) - step) / CALIBRATION_UNITS
    units = max(1, round(SLOWDOWN * step / per_unit))
    return units, units * per_unit / step


def real_runs(
    base: Workload, slowed: Workload, settings: Settings, budget_s: float
) -> tuple[list[Profile], list[Profile]]:
    """Alternate A and B profile runs until the time budget is spent (at least 6 of each)."""
    runs_a: list[Profile] = []
    runs_b: list[Profile] = []
    start = time.perf_counter()
    while len(runs_a) < 6 or time.perf_counter() - start < budget_s:
        runs_a.append(run_profile(base, settings))
        runs_b.append(run_profile(slowed, settings))
    return runs_a, runs_b


def time_rows(baseline: Profile, current: Profile) -> dict[str, tuple[float, float]]:
    """metric -> (relative change of the median, one-sided p) for every timing metric of a pair.

    Judged once with a 0% limit; a limit L then flags exactly the rows with change > L and
    p < alpha, which is the gate's rule for a regression."""
    options = CheckOptions(thresholds=(parse_threshold("median:0%"),))
    result = compare_profiles(baseline, current, options)
    return {
        m.metric: (m.change, m.p_value)
        for m in result.metrics
        if m.kind == "time" and m.change is not None and m.p_value is not None
    }


def flagged(row: tuple[float, float], limit: float) -> bool:
    return row[0] > limit and row[1] < DEFAULT_ALPHA


def alarm_counts(pairs: list[dict[str, tuple[float, float]]], limit: float) -> tuple[int, int]:
    """(pairs whose step is flagged, pairs where any timing metric is flagged)."""
    step = sum(flagged(rows["step"], limit) for rows in pairs)
    anywhere = sum(any(flagged(row, limit) for row in rows.values()) for rows in pairs)
    return step, anywhere


def cpu_time_blocks(base: Workload, slowed: Workload, settings: Settings, blocks: int) -> tuple[Runs, Runs]:
    """Interleaved blocks of `settings.repeats` steps of A then B, timed by thread CPU time (ms)."""
    plain, heavy = prepare(base, settings), prepare(slowed, settings)
    for _ in range(settings.warmup):
        plain.step()
        heavy.step()
    runs: dict[str, Runs] = {"A": [], "B": []}
    for _ in range(blocks):
        for name, prepared in (("A", plain), ("B", heavy)):
            samples = []
            for _ in range(settings.repeats):
                start = time.thread_time()
                prepared.step()
                samples.append(1e3 * (time.thread_time() - start))
            runs[name].append(samples)
    return runs["A"], runs["B"]


@dataclasses.dataclass
class Noise:
    """What part 1 measured: per-sample residuals (log of sample / run median) and per-run drift
    (log of run median / median of run medians)."""

    residuals: np.ndarray
    drift: np.ndarray
    step_ms: float


def measured_noise(runs: Runs) -> Noise:
    medians = np.array([statistics.median(samples) for samples in runs])
    residuals = np.concatenate([np.log(np.array(samples) / m) for samples, m in zip(runs, medians, strict=True)])
    center = float(np.median(medians))
    return Noise(residuals, np.log(medians / center), center)


def step_samples(runs: list[Profile]) -> Runs:
    return [p.totals.time_ms.samples for p in runs if p.totals.time_ms]


def simulate(
    noise: Noise, drift_sd: float | None, repeats: int, slowdown: float, trials: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(relative change of the median, one-sided Mann-Whitney p) for `trials` simulated checks,
    each a baseline run and a current run with their own drift and per-sample noise. Drift is
    resampled from the measured run medians when `drift_sd` is None, else normal with that SD."""

    def runs(factor: float) -> np.ndarray:
        if drift_sd is None:
            drift = rng.choice(noise.drift, size=(trials, 1))
        else:
            drift = rng.normal(0.0, drift_sd, size=(trials, 1))
        return noise.step_ms * factor * np.exp(drift + rng.choice(noise.residuals, size=(trials, repeats)))

    baseline, current = runs(1.0), runs(1.0 + slowdown)
    change = np.median(current, axis=1) / np.median(baseline, axis=1) - 1
    p_value = mannwhitneyu(current, baseline, alternative="greater", axis=1).pvalue
    # The gate's own code must agree with this vectorised rule.
    for i in range(min(200, trials)):
        verdict = compare_samples(list(baseline[i]), list(current[i]), "median", 0.0, DEFAULT_ALPHA)
        assert (verdict.status == "regression") == bool(change[i] > 0 and p_value[i] < DEFAULT_ALPHA), i
    return change, p_value


def alarm_rate(change: np.ndarray, p_value: np.ndarray, limit: float) -> tuple[int, float]:
    alarms = int(np.sum((change > limit) & (p_value < DEFAULT_ALPHA)))
    return alarms, alarms / len(change)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=90.0, help="Time for the real profile runs.")
    parser.add_argument("--repeats", type=int, default=20, help="Timed steps per profile run.")
    parser.add_argument("--trials", type=int, default=20000, help="Simulated checks per configuration.")
    parser.add_argument("--cpu-blocks", type=int, default=40, help="Interleaved CPU-time blocks of each of A, B.")
    args = parser.parse_args()
    torch.set_num_threads(1)

    base = load_workload(str(DEMO_MODEL))
    settings = resolve_settings(base, {"threads": 1, "repeats": args.repeats, "warmup": 2})
    units, injected = calibrate_units(base, settings)
    slowed = slowed_workload(base, units)
    print(f"injection: {units} units of {UNIT_SIZE}x{UNIT_SIZE} matmul after layers.1.attn = "
          f"{injected:+.1%} of A's step by thread CPU time")

    started = time.perf_counter()
    runs_a, runs_b = real_runs(base, slowed, settings, args.budget_s)
    spent = time.perf_counter() - started
    medians_a = [p.totals.time_ms.median for p in runs_a if p.totals.time_ms]
    medians_b = [p.totals.time_ms.median for p in runs_b if p.totals.time_ms]
    print(f"part 1, wall clock: {len(runs_a)} A + {len(runs_b)} B profile runs ({args.repeats} repeats) in "
          f"{spent:.0f} s; step median A {statistics.median(medians_a):.3f} ms (run medians "
          f"{min(medians_a):.2f}-{max(medians_a):.2f}), B/A {_ratio(medians_b, medians_a):+.1%}")
    aa = [time_rows(a, b) for a, b in itertools.combinations(runs_a, 2)]
    ab = [time_rows(a, b) for a in runs_a for b in runs_b]
    print("\n| limit | A/A step alarms | A/A any-module alarms | A/B step detections | A/B any-module |")
    print("| --- | --- | --- | --- | --- |")
    for limit in LIMITS:
        aa_step, aa_any = alarm_counts(aa, limit)
        ab_step, ab_any = alarm_counts(ab, limit)
        print(f"| median:{100 * limit:g}% | {_rate(aa_step, len(aa))} | {_rate(aa_any, len(aa))} | "
              f"{_rate(ab_step, len(ab))} | {_rate(ab_any, len(ab))} |")

    started = time.perf_counter()
    cpu_a, cpu_b = cpu_time_blocks(base, slowed, settings, args.cpu_blocks)
    print(f"\npart 1, thread CPU time: {len(cpu_a)} A + {len(cpu_b)} B interleaved blocks of {args.repeats} "
          "steps "
          f"in {time.perf_counter() - started:.0f} s; B/A {_ratio(_medians(cpu_b), _medians(cpu_a)):+.1%}")
    cpu_aa = [_sample_row(a, b) for a, b in itertools.combinations(cpu_a, 2)]
    cpu_ab = [_sample_row(a, b) for a in cpu_a for b in cpu_b]
    print("\n| limit | A/A step alarms | A/B step detections |")
    print("| --- | --- | --- |")
    for limit in LIMITS:
        fa = sum(flagged(row, limit) for row in cpu_aa)
        hits = sum(flagged(row, limit) for row in cpu_ab)
        print(f"| median:{100 * limit:g}% | {_rate(fa, len(cpu_aa))} | {_rate(hits, len(cpu_ab))} |")

    rng = np.random.default_rng(0)
    wall, cpu = measured_noise(step_samples(runs_a)), measured_noise(cpu_a)
    print(f"\npart 2, simulation ({args.trials} checks per cell) with the measured noise: per sample "
          f"{_spread(wall.residuals)} (wall) / {_spread(cpu.residuals)} (thread CPU); between runs "
          f"{_spread(wall.drift)} (wall) / {_spread(cpu.drift)} (thread CPU), scaled MADs")
    print("\n| per-sample noise | between-run drift | repeats | limit | A/A false alarms | A/B recall at 5% |")
    print("| --- | --- | --- | --- | --- | --- |")
    cells: list[tuple[str, Noise, str, float | None, int, tuple[float, ...]]] = [
        ("wall", wall, "measured (wall)", None, args.repeats, (0.05,)),
        ("wall", wall, "measured (wall)", None, 100, (0.05,)),
        ("thread CPU", cpu, "measured (thread CPU)", None, args.repeats, (0.05,)),
        ("thread CPU", cpu, "measured (thread CPU)", None, 100, (0.05,)),
    ]
    for drift_sd in (0.0, 0.0025, 0.005, 0.01):
        for repeats in (args.repeats, 100, 300):
            cells.append(("thread CPU", cpu, f"±{drift_sd:.2%} (normal)", drift_sd, repeats, LIMITS))
    for clock, noise, drift_label, drift_sd, repeats, limits in cells:
        aa_sim = simulate(noise, drift_sd, repeats, 0.0, args.trials, rng)
        ab_sim = simulate(noise, drift_sd, repeats, SLOWDOWN, args.trials, rng)
        for limit in limits:
            fa, _ = alarm_rate(*aa_sim, limit)
            hits, _ = alarm_rate(*ab_sim, limit)
            print(f"| {clock} | {drift_label} | {repeats} | median:{100 * limit:g}% | {_rate(fa, args.trials)} | "
                  f"{_rate(hits, args.trials)} |")


def _spread(logs: np.ndarray) -> str:
    return f"±{1.4826 * float(np.median(np.abs(logs))):.1%}"


def _sample_row(baseline: list[float], current: list[float]) -> tuple[float, float]:
    verdict = compare_samples(baseline, current, "median", 0.0, DEFAULT_ALPHA)
    assert verdict.change is not None and verdict.p_value is not None
    return verdict.change, verdict.p_value if verdict.change > 0 else 1.0


def _medians(runs: Runs) -> list[float]:
    return [statistics.median(samples) for samples in runs]


def _ratio(current: list[float], baseline: list[float]) -> float:
    """Median of the current runs' medians over the baseline's, minus one."""
    return statistics.median(current) / statistics.median(baseline) - 1


def _rate(count: int, total: int) -> str:
    return f"{count}/{total} ({count / total:.1%})"


if __name__ == "__main__":
    main()
