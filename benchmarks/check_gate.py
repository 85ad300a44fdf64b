"""CI gate quality: false alarms on A/A and recall on a 5% slowdown, for `attnprof check`'s timing test.

Two parts, side by side in one process:

1. Real runs on this machine, once per way of timing (`--clock wall` or `--clock cpu`, each with
   and without `--reference-probe`, whose drift correction `check` applies). Workload A is
   examples/check_demo_model.py; workload B is the same model with extra work (small matrix
   products in a forward hook on `layers.1.attn`) sized by calibration to 5% of A's step. Full
   `run_profile` runs alternate A, B, A, B ... for a bounded time; every A/A pair and every A/B
   pair of runs is judged with `compare_profiles`, counting how often the step's timing verdict
   (and any module's) is a regression. The injected work also changes FLOPs, which the exact
   metrics catch every time: only timing verdicts are counted here, because they are what this
   measures.
   With `--ways interleaved`, the same for `check --against`: sessions of four workers (A, A,
   B, B; benchmarks/slowed_demo.py with its extra-work knob off or on) profiled interleaved, each
   session judged as four A/A and four A/B checks.
2. A simulation with the noise measured in part 1: within-run noise resampled from the A runs'
   step samples (each divided by its run's median) and between-run drift resampled from the A
   runs' medians, shrunk by the scatter a run's median has from sampling alone, at several
   repeat counts and thresholds, many thousand trials each; the
   verdict is the gate's rule (slowdown past the limit AND one-sided Mann-Whitney p < alpha),
   checked against `compare_samples` on the first trials.

    python -m benchmarks.check_gate [--budget-s 90] [--max-runs 60] [--repeats 100] [--trials 20000]
                                    [--ways stored,interleaved]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from torch import nn

from attnprof.gate.compare import CheckOptions, compare_profiles, drift_correction
from attnprof.gate.stats import DEFAULT_ALPHA, compare_samples, parse_threshold
from attnprof.profiling.interleave import Side, profile_interleaved
from attnprof.profiling.records import Profile
from attnprof.profiling.run import prepare, run_profile
from attnprof.settings import Settings, resolve_settings
from attnprof.targets.load import load_workload
from attnprof.targets.workload import Workload
from benchmarks.slowed_demo import ENV, UNIT_SIZE, add_extra_work

DEMO_MODEL = Path(__file__).parents[1] / "examples" / "check_demo_model.py"
SLOWED_DEMO = Path(__file__).parent / "slowed_demo.py"
SLOWDOWN = 0.05
LIMITS = (0.02, 0.03)
CALIBRATION_UNITS = 60
Runs = list[list[float]]  # timing samples (ms) of several runs


def slowed_workload(base: Workload, units: int) -> Workload:
    """The demo workload with `units` of extra work after `layers.1.attn`'s forward."""
    build = base.build_model

    def build_model(device: torch.device, dtype: torch.dtype) -> nn.Module:
        return add_extra_work(build(device, dtype), units)

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
    base: Workload, slowed: Workload, settings: Settings, budget_s: float, max_runs: int
) -> tuple[list[Profile], list[Profile]]:
    """Alternate A and B profile runs until the time budget is spent or `max_runs` of each are
    done (at least 6 of each); the pairs to judge grow with the square of the runs."""
    runs_a: list[Profile] = []
    runs_b: list[Profile] = []
    start = time.perf_counter()
    while len(runs_a) < 6 or (time.perf_counter() - start < budget_s and len(runs_a) < max_runs):
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
    drift = beyond_sampling(np.log(medians / center), median_sampling_variance(runs))
    return Noise(residuals, drift, center)


def median_sampling_variance(runs: Runs, resamples: int = 200) -> float:
    """Mean bootstrap variance of a run's log median: how far run medians scatter from sampling
    alone, which the simulation adds again with its own per-sample noise."""
    rng = np.random.default_rng(1)
    return float(np.mean([
        np.var(np.median(np.log(rng.choice(np.array(s), size=(resamples, len(s)))), axis=1)) for s in runs
    ]))


def beyond_sampling(drift: np.ndarray, sampling_variance: float) -> np.ndarray:
    """`drift` shrunk so that its spread (scaled MAD) leaves out what sampling alone explains."""
    observed = (1.4826 * float(np.median(np.abs(drift)))) ** 2
    return drift * math.sqrt(max(0.0, 1 - sampling_variance / observed)) if observed > 0 else drift


def simulate(
    noise: Noise, repeats: int, slowdown: float, trials: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(relative change of the median, one-sided Mann-Whitney p) for `trials` simulated checks,
    each a baseline run and a current run with their own drift and per-sample noise, both
    resampled from what part 1 measured."""

    def runs(factor: float) -> np.ndarray:
        drift = rng.choice(noise.drift, size=(trials, 1))
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


def step_samples(runs: list[Profile]) -> Runs:
    """Each run's step samples; with the reference probe, each step relative to its probe (scaled
    by the first run's probe median), as `check` compares them."""
    if runs[0].totals.reference_time_ms is None:
        return [p.totals.time_ms.samples for p in runs if p.totals.time_ms]
    return [drift_correction(runs[0], p).current_step.samples for p in runs]


def measure_variant(
    base: Workload, slowed: Workload, settings: Settings, budget_s: float, max_runs: int
) -> tuple[str, Noise]:
    """Part 1 for one way of timing: alternate real runs, judge every pair, print the table;
    the A runs' noise for the simulation."""
    label = f"--clock {settings.clock}" + (" --reference-probe" if settings.reference_probe else "")
    started = time.perf_counter()
    runs_a, runs_b = real_runs(base, slowed, settings, budget_s, max_runs)
    spent = time.perf_counter() - started
    medians_a = [statistics.median(samples) for samples in step_samples(runs_a)]
    medians_b = [statistics.median(samples) for samples in step_samples(runs_a[:1] + runs_b)[1:]]
    print(f"\npart 1, {label}: {len(runs_a)} A + {len(runs_b)} B profile runs ({settings.repeats} repeats) "
          f"in {spent:.0f} s; step median A {statistics.median(medians_a):.3f} ms (run medians "
          f"{min(medians_a):.2f}-{max(medians_a):.2f}), B/A {_ratio(medians_b, medians_a):+.1%}")
    print_alarms(
        [time_rows(a, b) for a, b in itertools.combinations(runs_a, 2)],
        [time_rows(a, b) for a in runs_a for b in runs_b],
    )
    return label, measured_noise(step_samples(runs_a))


def print_alarms(aa: list[dict[str, tuple[float, float]]], ab: list[dict[str, tuple[float, float]]]) -> None:
    """The table of alarms on A/A pairs and detections on A/B pairs, per limit."""
    print("\n| limit | A/A step alarms | A/A any-module alarms | A/B step detections | A/B any-module |")
    print("| --- | --- | --- | --- | --- |")
    for limit in LIMITS:
        aa_step, aa_any = alarm_counts(aa, limit)
        ab_step, ab_any = alarm_counts(ab, limit)
        print(f"| median:{100 * limit:g}% | {_rate(aa_step, len(aa))} | {_rate(aa_any, len(aa))} | "
              f"{_rate(ab_step, len(ab))} | {_rate(ab_any, len(ab))} |")


def measure_interleaved(units: int, settings: Settings, budget_s: float, max_sessions: int) -> tuple[str, Noise]:
    """Part 1 for `check --against`: sessions of four workers (A, A, B, B) profiled interleaved,
    as `check --against` profiles its two sides. Each session gives four A/A checks (each A
    against the other, each B against the other) and four A/B checks (each B against each A).
    The noise for the simulation: the A sides' per-sample residuals, and their offsets from
    their session's mean (what interleaving leaves of the drift)."""
    label = f"check --against (interleaved), --clock {settings.clock} --reference-probe"
    sides = [Side(str(SLOWED_DEMO), {ENV: str(n)}) for n in (0, 0, units, units)]
    sessions: list[list[Profile]] = []
    started = time.perf_counter()
    while len(sessions) < 3 or (time.perf_counter() - started < budget_s and len(sessions) < max_sessions):
        sessions.append(profile_interleaved(sides, settings))
    spent = time.perf_counter() - started
    aa = [time_rows(x, y) for a, a2, b, b2 in sessions for x, y in ((a, a2), (a2, a), (b, b2), (b2, b))]
    ab = [time_rows(x, y) for a, a2, b, b2 in sessions for x in (a, a2) for y in (b, b2)]
    medians = np.array(
        [[statistics.median(drift_correction(s[0], p).current_step.samples) for p in s] for s in sessions]
    )
    print(f"\npart 1, {label}: {len(sessions)} sessions of 4 interleaved workers ({settings.repeats} repeats each) "
          f"in {spent:.0f} s; B/A {float(np.median(medians[:, 2:]) / np.median(medians[:, :2])) - 1:+.1%}")
    print_alarms(aa, ab)
    offsets = np.log(medians[:, :2]) - np.log(medians[:, :2]).mean(axis=1, keepdims=True)
    runs_a = [drift_correction(p, p).current_step.samples for s in sessions for p in s[:2]]
    noise = measured_noise(runs_a)
    # An offset is half the difference of two medians: half the variance of one from sampling.
    return label, Noise(noise.residuals, beyond_sampling(offsets.ravel(), median_sampling_variance(runs_a) / 2),
                        noise.step_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=90.0, help="Time for the real profile runs, per variant.")
    parser.add_argument("--max-runs", type=int, default=60, help="Most profile runs of each of A and B, per variant.")
    parser.add_argument("--repeats", type=int, default=100, help="Timed steps per profile run.")
    parser.add_argument("--trials", type=int, default=20000, help="Simulated checks per configuration.")
    parser.add_argument(
        "--ways", default="stored,interleaved",
        help="Comma-separated: stored (check --baseline FILE: four ways of timing), interleaved (check --against).",
    )
    args = parser.parse_args()
    ways = set(args.ways.split(","))
    torch.set_num_threads(1)

    base = load_workload(str(DEMO_MODEL))
    settings = resolve_settings(base, {"threads": 1, "repeats": args.repeats, "warmup": 2})
    units, injected = calibrate_units(base, settings)
    slowed = slowed_workload(base, units)
    print(f"injection: {units} units of {UNIT_SIZE}x{UNIT_SIZE} matmul after layers.1.attn = "
          f"{injected:+.1%} of A's step by thread CPU time")
    variants = [
        dataclasses.replace(settings, clock="wall"),
        dataclasses.replace(settings, clock="cpu"),
        dataclasses.replace(settings, clock="wall", reference_probe=True),
        dataclasses.replace(settings, clock="cpu", reference_probe=True),
    ]
    noise = dict(measure_variant(base, slowed, v, args.budget_s, args.max_runs) for v in variants if "stored" in ways)
    if "interleaved" in ways:
        label, measured = measure_interleaved(units, variants[-1], args.budget_s, args.max_runs)
        noise[label] = measured

    rng = np.random.default_rng(0)
    measured = "; ".join(
        f"{label}: per sample {_spread(n.residuals)}, between runs beyond sampling {_spread(n.drift)}"
        for label, n in noise.items()
    )
    print(f"\npart 2, simulation ({args.trials} checks per cell) with the measured noise (scaled MADs): {measured}")
    print("\n| timing (per-sample noise and drift measured) | repeats | limit | A/A false alarms | A/B recall at 5% |")
    print("| --- | --- | --- | --- | --- |")
    for label, n in noise.items():
        for repeats in sorted({args.repeats, 20, 300}):
            aa_sim = simulate(n, repeats, 0.0, args.trials, rng)
            ab_sim = simulate(n, repeats, SLOWDOWN, args.trials, rng)
            for limit in LIMITS:
                fa, _ = alarm_rate(*aa_sim, limit)
                hits, _ = alarm_rate(*ab_sim, limit)
                print(f"| {label} | {repeats} | median:{100 * limit:g}% | {_rate(fa, args.trials)} | "
                      f"{_rate(hits, args.trials)} |")


def _spread(logs: np.ndarray) -> str:
    return f"±{1.4826 * float(np.median(np.abs(logs))):.1%}"


def _ratio(current: list[float], baseline: list[float]) -> float:
    """Median of the current runs' medians over the baseline's, minus one."""
    return statistics.median(current) / statistics.median(baseline) - 1


def _rate(count: int, total: int) -> str:
    return f"{count}/{total} ({count / total:.1%})"


if __name__ == "__main__":
    main()
