"""Regression statistics and verdicts: a current Profile against a baseline Profile.

Three kinds of metric, each compared its own way:

* time (the step and every module, forward and backward): a regression only when the
  statistic's slowdown exceeds its threshold AND the raw samples differ significantly
  (one-sided Mann-Whitney U, p < alpha, 0.002 by default as in asv), so noise alone never
  fails a build; gated only between profiles of the same machine kind (another CPU or GPU
  runs at another speed: reported, not gated). "inconclusive" when the samples cannot tell: too few for p < alpha to be
  reachable, a slowdown above the threshold that is not significant, or noise so large that a
  slowdown of the threshold's size would likely go unnoticed; the detail says how many
  repeats would settle it.
* memory (peak of the step and of every module): relative increase against its threshold.
  attnprof accounts memory from tensor sizes, so it is deterministic and the default limit is
  0% (any growth fails); `memory:N%` tolerates growth where memory is measured otherwise.
* exact (FLOPs, attention FLOPs, parameter counts, the modules present, each attention
  layer's backend and head layout): deterministic, so any difference fails.

Metric names, which threshold globs match:
  step                      step time
  layers.<path>             forward time of one module, children included
  layers.<path>.backward    backward time of one module (train mode)
  peak_memory               peak memory of the step
  layers.<path>.memory      peak activation memory of one module
  flops attention_flops backward_flops parameter_count                     exact
  layers.<path>.flops  layers.<path>.params  layers.<path>.attention        exact
  layers.<path>             also names a module that was added or removed    exact
The root module's path is written `(model)`: `layers.(model)` is the whole forward.

Threshold strings: [GLOB:]STAT:LIMIT, e.g. `median:5%`, `p90:10%`, `memory:2%`,
`layers.*attn*:median:8%`, `layers.*norm*:median:off`.
  STAT   median | mean | p10 | p90 for time metrics, memory for memory metrics
  LIMIT  the relative increase allowed, as a percentage, or `off` (reported, not gated)
  GLOB   an fnmatch pattern over metric names; `*` when left out
For each metric and statistic the last matching threshold wins, so narrower thresholds listed
after broader ones refine them.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

from scipy.stats import mannwhitneyu

from attnprof.errors import MachineMismatch, UsageError
from attnprof.gate.records import FAILING_STATUSES, CheckResult, CheckStatus, MetricCheck
from attnprof.machine import MachineInfo
from attnprof.profiling.records import LayerStats, Profile, TimeStats

TIME_STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {
    "median": lambda s: TimeStats.from_samples(list(s)).median,
    "mean": statistics.fmean,
    "p10": lambda s: TimeStats.from_samples(list(s)).p10,
    "p90": lambda s: TimeStats.from_samples(list(s)).p90,
}
MEMORY_STATISTIC = "memory"
DEFAULT_THRESHOLDS: tuple[str, ...] = ("median:5%", "memory:0%")
DEFAULT_ALPHA = 0.002
DEFAULT_POWER = 0.8
# Machine fields that make timings incomparable; the same ones MachineInfo.fingerprint hashes.
MACHINE_FIELDS: tuple[str, ...] = ("cpu", "gpu_name", "driver", "cuda", "torch", "threads")
# Settings that change what is computed; warmup and repeats only change how often it is timed.
COMPARABLE_SETTINGS: tuple[str, ...] = ("mode", "batch_size", "seq_len", "dtype", "backend", "device")
# Past this many repeats, repeating is not a practical way to settle a comparison.
MAX_USEFUL_REPEATS = 1000
# A reference probe this much slower or faster than in the baseline: warn that the machine changed.
MAX_DRIFT = 1.5

STALE_BASELINE_HINT = "if intended, re-record the baseline (attnprof check --update-baseline)"


@dataclass(frozen=True)
class Threshold:
    """A parsed threshold string: which metrics, which statistic, how much increase is allowed."""

    pattern: str
    statistic: str
    limit: float | None  # relative increase allowed; None: reported, not gated
    text: str

    def matches(self, metric: str) -> bool:
        return fnmatch.fnmatchcase(metric, self.pattern)


def parse_threshold(text: str) -> Threshold:
    """`[GLOB:]STAT:LIMIT` -> Threshold; a clear UsageError (exit 2) otherwise."""
    usage = (
        f"bad threshold {text!r}: expected [GLOB:]STAT:LIMIT such as median:5%, p90:10%, "
        f"memory:2% or layers.*attn*:median:8% (STAT: {', '.join([*TIME_STATISTICS, MEMORY_STATISTIC])}; "
        f"LIMIT: a percentage or off)"
    )
    parts = text.strip().rsplit(":", 2)
    if len(parts) < 2:
        raise UsageError(usage)
    pattern = parts[0] if len(parts) == 3 else "*"
    statistic, limit_text = parts[-2].strip().lower(), parts[-1].strip().lower()
    if not pattern or statistic not in (*TIME_STATISTICS, MEMORY_STATISTIC):
        raise UsageError(usage)
    if limit_text == "off":
        return Threshold(pattern, statistic, None, text.strip())
    if not limit_text.endswith("%"):
        raise UsageError(usage)
    try:
        percent = float(limit_text[:-1])
    except ValueError:
        raise UsageError(usage) from None
    if not math.isfinite(percent) or percent < 0:
        raise UsageError(f"bad threshold {text!r}: the limit must be a non-negative percentage")
    return Threshold(pattern, statistic, percent / 100, text.strip())


@dataclass(frozen=True)
class CheckOptions:
    """How a comparison is judged."""

    thresholds: tuple[Threshold, ...] = field(
        default_factory=lambda: tuple(parse_threshold(t) for t in DEFAULT_THRESHOLDS)
    )
    metrics: tuple[str, ...] = ("*",)  # globs over metric names: which metrics are compared
    alpha: float = DEFAULT_ALPHA
    power: float = DEFAULT_POWER
    allow_machine_mismatch: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise UsageError(f"--alpha must be between 0 and 0.5, got {self.alpha!r}")
        if not 0 < self.power < 1:
            raise UsageError(f"power must be between 0 and 1, got {self.power!r}")
        if not self.metrics:
            raise UsageError("--metric: give at least one metric glob")

    def selected(self, metric: str) -> bool:
        return any(fnmatch.fnmatchcase(metric, glob) for glob in self.metrics)

    def limits(self, metric: str, kind: str) -> dict[str, float | None]:
        """statistic -> limit for one metric; the last matching threshold per statistic wins."""
        chosen: dict[str, float | None] = {}
        for threshold in self.thresholds:
            is_time = threshold.statistic in TIME_STATISTICS
            if (is_time if kind == "time" else not is_time) and threshold.matches(metric):
                chosen[threshold.statistic] = threshold.limit
        return chosen


# ---------------------------------------------------------------------------------------------
# Statistics on raw samples


@dataclass(frozen=True)
class SampleComparison:
    """The verdict on two sets of timing samples for one statistic."""

    status: CheckStatus
    baseline: float
    current: float
    change: float | None
    p_value: float | None
    noise: float | None
    detail: str


def min_repeats_for(alpha: float) -> int:
    """Fewest samples per side for which a one-sided Mann-Whitney p < alpha is reachable.

    The smallest exact p-value with n samples on each side is 1 / C(2n, n).
    """
    n = 1
    while 1 / math.comb(2 * n, n) >= alpha:
        n += 1
    return n


def robust_noise(samples: Sequence[float]) -> float:
    """Spread of one sample relative to the median (scaled MAD: the standard deviation for
    normal data, unmoved by the odd outlier a busy machine produces)."""
    center = statistics.median(samples)
    if center <= 0:
        return math.inf
    mad = statistics.median(abs(s - center) for s in samples)
    return 1.4826 * mad / center


def _power_scale(noise: float, alpha: float, power: float) -> float:
    """z-sum times noise times 2 sqrt(pi): the Mann-Whitney detectable slowdown before the
    sample-size factor sqrt((n + m + 1) / (12 n m))."""
    z = NormalDist().inv_cdf(1 - alpha) + NormalDist().inv_cdf(power)
    return z * noise * 2 * math.sqrt(math.pi)


def detectable_slowdown(noise: float, n_baseline: int, n_current: int, alpha: float, power: float) -> float:
    """Smallest relative slowdown the one-sided Mann-Whitney test detects with `power`.

    Normal approximation: for a shift d (in units of the noise) P(current > baseline) is
    Phi(d / sqrt 2) ~ 1/2 + d / (2 sqrt pi), and U has variance n m (n + m + 1) / 12.
    """
    n, m = n_baseline, n_current
    return _power_scale(noise, alpha, power) * math.sqrt((n + m + 1) / (12 * n * m))


def repeats_to_settle(noise: float, limit: float, alpha: float, power: float) -> int | None:
    """Repeats per side at which a slowdown of `limit` becomes detectable; None past
    MAX_USEFUL_REPEATS (more repeats are no practical cure)."""
    scale = _power_scale(noise, alpha, power)
    if limit <= 0 or not math.isfinite(scale):
        return None
    if scale == 0:
        return min_repeats_for(alpha)
    # detectable_slowdown(n, n) <= limit  <=>  12 r n^2 - 2 n - 1 >= 0 with r = (limit / scale)^2
    r = (limit / scale) ** 2
    n = max(min_repeats_for(alpha), math.ceil((2 + math.sqrt(4 + 48 * r)) / (24 * r)))
    return n if n <= MAX_USEFUL_REPEATS else None


def _settle_advice(noise: float, limit: float, alpha: float, power: float) -> str:
    needed = repeats_to_settle(noise, limit, alpha, power)
    if needed is None:
        return (
            f"noise of ±{noise:.0%} per sample is too high to settle by repeating: "
            "quiet the machine, pin --threads, or time a larger step"
        )
    return f"about {needed} repeats on each side would settle it (record both with --repeats {needed})"


def compare_samples(
    baseline: Sequence[float],
    current: Sequence[float],
    statistic: str = "median",
    limit: float | None = 0.05,
    alpha: float = DEFAULT_ALPHA,
    power: float = DEFAULT_POWER,
) -> SampleComparison:
    """Judge `current` timings against `baseline` timings for one statistic.

    regression: the statistic grew by more than `limit` and the samples are significantly
    larger (one-sided Mann-Whitney U, p < alpha). improved: the mirror image. pass: within the
    limit and the test could have seen a slowdown of `limit` with probability `power`.
    inconclusive: anything the samples cannot settle. info: no limit, reported only.
    """
    if statistic not in TIME_STATISTICS:
        raise UsageError(f"unknown time statistic {statistic!r}; use one of {', '.join(TIME_STATISTICS)}")
    if not baseline or not current:
        raise UsageError("compare_samples needs at least one sample on each side")
    summarize = TIME_STATISTICS[statistic]
    base_value, cur_value = summarize(baseline), summarize(current)
    change = cur_value / base_value - 1 if base_value > 0 else None
    n, m = len(baseline), len(current)
    needed = min_repeats_for(alpha)
    if min(n, m) < needed:
        return SampleComparison(
            "info" if limit is None else "inconclusive",
            base_value,
            cur_value,
            change,
            None,
            None,
            f"{n} baseline and {m} current samples: p < {alpha:g} needs at least {needed} repeats "
            f"on each side (record both with --repeats {max(needed, 10)})",
        )
    slower = change is not None and change > 0
    # One-sided test in the direction the statistic moved.
    direction = "greater" if slower else "less"
    p_value = float(mannwhitneyu(current, baseline, alternative=direction).pvalue)
    noise = math.sqrt((robust_noise(baseline) ** 2 + robust_noise(current) ** 2) / 2)
    if limit is None or change is None:
        return SampleComparison("info", base_value, cur_value, change, p_value, noise, "not gated")
    if change > limit:
        if p_value < alpha:
            status: CheckStatus = "regression"
            detail = f"{change:+.1%} {statistic} > {limit:.1%} and significant (p={p_value:.2g} < {alpha:g})"
        else:
            status = "inconclusive"
            detail = (
                f"{change:+.1%} {statistic} > {limit:.1%} but not significant "
                f"(p={p_value:.2g} >= {alpha:g}); {_settle_advice(noise, limit, alpha, power)}"
            )
    elif change < -limit and p_value < alpha:
        status, detail = "improved", f"{change:+.1%} {statistic}, significant (p={p_value:.2g})"
    elif detectable_slowdown(noise, n, m, alpha, power) > limit:
        status = "inconclusive"
        detail = (
            f"noise ±{noise:.1%} per sample hides a {limit:.0%} slowdown at {n} vs {m} samples; "
            f"{_settle_advice(noise, limit, alpha, power)}"
        )
    else:
        status, detail = "pass", f"{change:+.1%} {statistic} within {limit:.1%}"
    return SampleComparison(status, base_value, cur_value, change, p_value, noise, detail)


# ---------------------------------------------------------------------------------------------
# Profiles


def machine_differences(baseline: MachineInfo, current: MachineInfo) -> list[str]:
    """What differs between two machines in the fields that make timings incomparable."""
    return [
        f"{name}: {getattr(baseline, name)} vs {getattr(current, name)}"
        for name in MACHINE_FIELDS
        if getattr(baseline, name) != getattr(current, name)
    ]


def check_machine(baseline: MachineInfo, current: MachineInfo, allow_mismatch: bool) -> list[str]:
    """The differences, or MachineMismatch (exit 4) when there are some and they are not allowed."""
    differences = machine_differences(baseline, current)
    if differences and not allow_mismatch:
        raise MachineMismatch(
            "the baseline was recorded on a different machine ("
            + "; ".join(differences)
            + "); timings are not comparable. Re-record the baseline here, or pass "
            "--allow-machine-mismatch to compare anyway"
        )
    return differences


def check_settings(baseline: Profile, current: Profile) -> None:
    """Profiles run with different settings measure different things: refuse (exit 2)."""
    differences = [
        f"{name} {getattr(baseline.settings, name)!r} vs {getattr(current.settings, name)!r}"
        for name in COMPARABLE_SETTINGS
        if getattr(baseline.settings, name) != getattr(current.settings, name)
    ]
    if baseline.timing_source != current.timing_source:
        differences.append(f"timing source {baseline.timing_source!r} vs {current.timing_source!r}")
    if differences:
        raise UsageError(
            "the profiles were run with different settings (" + "; ".join(differences) + "); "
            "compare profiles of the same settings"
        )


ROOT_LAYER_LABEL = "(model)"  # the root module's path is ""


def _layer_metric(layer: LayerStats, suffix: str = "") -> str:
    return f"layers.{layer.name or ROOT_LAYER_LABEL}{suffix}"


@dataclass
class DriftCorrection:
    """The machine's drift between two runs, measured by the reference probe both carry.

    Each plain step is divided by the probe timed right after it (and scaled back to ms by the
    baseline's probe median), so the step is compared as a ratio to the machine's speed at that
    moment. Per-layer samples come from other (hooked) steps with no probe of their own and are
    left as measured: scaling them by the runs' probe ratio was measured to add more noise than
    it removed (benchmarks/RESULTS.md, CI gate)."""

    factor: float  # the current run's probe median over the baseline's
    baseline_step: TimeStats
    current_step: TimeStats


def _paired_probe(profile: Profile) -> tuple[TimeStats, TimeStats] | None:
    """(step, probe) timings when the profile has a probe sample beside every step sample."""
    step, probe = profile.totals.time_ms, profile.totals.reference_time_ms
    if step is None or probe is None or not probe.samples or len(probe.samples) != len(step.samples):
        return None
    return step, probe


def drift_correction(baseline: Profile, current: Profile) -> DriftCorrection | None:
    """None unless both profiles carry paired probe samples of the same probe version."""
    base, cur = _paired_probe(baseline), _paired_probe(current)
    if base is None or cur is None or baseline.totals.reference_version != current.totals.reference_version:
        return None
    scale = base[1].median

    def relative(step: TimeStats, probe: TimeStats) -> TimeStats:
        return TimeStats.from_samples([s / r * scale for s, r in zip(step.samples, probe.samples, strict=True)])

    return DriftCorrection(factor=cur[1].median / scale, baseline_step=relative(*base), current_step=relative(*cur))


def _time_metrics(profile: Profile, step: TimeStats | None) -> dict[str, tuple[TimeStats | None, str | None]]:
    """Time metrics by name; `step`, when given, replaces the step's samples (drift correction)."""
    metrics: dict[str, tuple[TimeStats | None, str | None]] = {"step": (step or profile.totals.time_ms, None)}
    for layer in profile.layers:
        metrics[_layer_metric(layer)] = (layer.time_ms, layer.name)
        if layer.backward_time_ms is not None:
            metrics[_layer_metric(layer, ".backward")] = (layer.backward_time_ms, layer.name)
    return metrics


def _memory_metrics(profile: Profile) -> dict[str, tuple[int, str | None]]:
    metrics: dict[str, tuple[int, str | None]] = {"peak_memory": (profile.totals.peak_memory_bytes, None)}
    for layer in profile.layers:
        metrics[_layer_metric(layer, ".memory")] = (layer.memory_bytes, layer.name)
    return metrics


def attention_layout(layer: LayerStats) -> str:
    """Backend and head layout of an attention layer in one comparable string."""
    info = layer.attention
    if info is None:
        return ""
    window = f" window={info.window}" if info.window is not None else ""
    return (
        f"{info.backend} h={info.num_heads} kv={info.num_kv_heads} d={info.head_dim} "
        f"q={info.q_len} k={info.kv_len} {'causal' if info.causal else 'full'}{window}"
    )


def _exact_metrics(profile: Profile) -> dict[str, tuple[int | str, str, str | None]]:
    """metric -> (value, unit, layer)."""
    totals = profile.totals
    metrics: dict[str, tuple[int | str, str, str | None]] = {
        "flops": (totals.flops, "FLOP", None),
        "attention_flops": (totals.attention_flops, "FLOP", None),
        "backward_flops": (totals.backward_flops, "FLOP", None),
        "parameter_count": (profile.workload.parameter_count, "params", None),
    }
    for layer in profile.layers:
        metrics[_layer_metric(layer)] = ("present", "", layer.name)
        metrics[_layer_metric(layer, ".flops")] = (layer.flops, "FLOP", layer.name)
        metrics[_layer_metric(layer, ".params")] = (layer.params, "params", layer.name)
        if layer.attention is not None:
            metrics[_layer_metric(layer, ".attention")] = (attention_layout(layer), "", layer.name)
    return metrics


def _compare_exact(baseline: Profile, current: Profile, options: CheckOptions) -> list[MetricCheck]:
    base, cur = _exact_metrics(baseline), _exact_metrics(current)
    base_layers = {layer.name for layer in baseline.layers}
    cur_layers = {layer.name for layer in current.layers}
    absent: tuple[int | str, str, str | None] = ("absent", "", None)
    rows = []
    for metric in dict.fromkeys([*base, *cur]):
        b_value, unit, layer = base.get(metric, absent)
        c_value, c_unit, c_layer = cur.get(metric, absent)
        layer = layer or c_layer
        one_sided = layer is not None and (layer in base_layers) != (layer in cur_layers)
        if not options.selected(metric) or (one_sided and metric != f"layers.{layer or ROOT_LAYER_LABEL}"):
            continue  # a module added or removed is reported once, by its presence row
        same = b_value == c_value
        rows.append(
            MetricCheck(
                metric=metric,
                kind="exact",
                statistic="exact",
                status="pass" if same else "changed",
                baseline=b_value,
                current=c_value,
                unit=unit or c_unit,
                layer=layer,
                change=_relative(b_value, c_value),
                detail="" if same else f"deterministic value changed; {STALE_BASELINE_HINT}",
            )
        )
    return rows


def _relative(baseline: object, current: object) -> float | None:
    numbers = (int, float)
    if isinstance(baseline, numbers) and isinstance(current, numbers) and baseline > 0:
        return current / baseline - 1
    return None


def _compare_memory(baseline: Profile, current: Profile, options: CheckOptions) -> list[MetricCheck]:
    base, cur = _memory_metrics(baseline), _memory_metrics(current)
    rows = []
    for metric, (b_bytes, layer) in base.items():
        if metric not in cur or not options.selected(metric):
            continue
        c_bytes = cur[metric][0]
        for _, limit in options.limits(metric, "memory").items():
            change = _relative(b_bytes, c_bytes)
            if change is None:  # nothing allocated in the baseline: any allocation is new
                change = 0.0 if c_bytes == 0 else math.inf
            if limit is None:
                status: CheckStatus = "info"
                detail = "not gated"
            elif change > limit:
                status, detail = "regression", f"{_percent(change)} memory > {limit:.1%}"
            elif change < -limit:
                status, detail = "improved", f"{_percent(change)} memory"
            else:
                status, detail = "pass", f"{_percent(change)} memory within {limit:.1%}"
            rows.append(
                MetricCheck(
                    metric=metric,
                    kind="memory",
                    statistic=MEMORY_STATISTIC,
                    status=status,
                    baseline=b_bytes,
                    current=c_bytes,
                    unit="bytes",
                    layer=layer,
                    change=change if math.isfinite(change) else None,
                    threshold=limit,
                    detail=detail,
                )
            )
    return rows


def _percent(change: float) -> str:
    return f"{change:+.1%}" if math.isfinite(change) else "new"


def _compare_time(
    baseline: Profile, current: Profile, options: CheckOptions, other_machine: bool, drift: DriftCorrection | None
) -> list[MetricCheck]:
    base = _time_metrics(baseline, drift.baseline_step if drift else None)
    cur = _time_metrics(current, drift.current_step if drift else None)
    rows = []
    for metric, (b_stats, layer) in base.items():
        if metric not in cur or not options.selected(metric):
            continue
        c_stats = cur[metric][0]
        for statistic, limit in options.limits(metric, "time").items():
            row = _time_row(metric, layer, statistic, limit, b_stats, c_stats, options)
            if other_machine:  # another CPU or GPU runs at another speed: report, never gate
                row.status, row.threshold = "info", None
                row.detail = "measured on a different machine: reported, not gated"
            rows.append(row)
    return rows


def _time_row(
    metric: str,
    layer: str | None,
    statistic: str,
    limit: float | None,
    b_stats: TimeStats | None,
    c_stats: TimeStats | None,
    options: CheckOptions,
) -> MetricCheck:
    row = MetricCheck(
        metric=metric,
        kind="time",
        statistic=statistic,
        status="info",
        baseline=None,
        current=None,
        unit="ms",
        layer=layer,
        threshold=limit,
    )
    if b_stats is None or c_stats is None:
        side = "baseline" if b_stats is None else "current profile"
        row.detail = f"the {side} has no timings (a dry run)"
        return row
    row.baseline_samples, row.current_samples = len(b_stats.samples), len(c_stats.samples)
    if not b_stats.samples or not c_stats.samples:
        row.status = "info" if limit is None else "inconclusive"
        row.baseline, row.current = b_stats.median, c_stats.median
        row.detail = "raw samples missing: re-record the profile with this attnprof"
        return row
    verdict = compare_samples(
        b_stats.samples, c_stats.samples, statistic, limit, options.alpha, options.power
    )
    row.status, row.detail = verdict.status, verdict.detail
    row.baseline, row.current, row.change = verdict.baseline, verdict.current, verdict.change
    row.p_value, row.noise = verdict.p_value, verdict.noise
    return row


def compare_profiles(
    baseline: Profile,
    current: Profile,
    options: CheckOptions | None = None,
    baseline_label: str = "baseline",
    current_label: str = "current",
) -> CheckResult:
    """Compare two profiles of the same workload and settings; the verdict and every metric.

    Raises UsageError (exit 2) for profiles run with different settings and MachineMismatch
    (exit 4) for profiles from different machines unless the options allow it.
    """
    options = options or CheckOptions()
    check_settings(baseline, current)
    differences = check_machine(baseline.machine, current.machine, options.allow_machine_mismatch)
    warnings = []
    if differences:
        warnings.append(
            "machines differ (" + "; ".join(differences) + "): timings are reported but not gated; "
            "deterministic metrics and memory still are"
        )
    if baseline.workload.fingerprint != current.workload.fingerprint:
        warnings.append("the workload's architecture changed since the baseline")
    drift = drift_correction(baseline, current)
    if drift is not None and not 1 / MAX_DRIFT <= drift.factor <= MAX_DRIFT:
        warnings.append(
            f"the reference probe ran {drift.factor:.2f}x as long as in the baseline: the machine is "
            "not the speed it was, and a correction this large may not hold for the model's kernels"
        )
    metrics = [
        *_compare_exact(baseline, current, options),
        *_compare_memory(baseline, current, options),
        *_compare_time(baseline, current, options, bool(differences), drift),
    ]
    if not metrics:
        raise UsageError(
            f"no metric matches {', '.join(options.metrics)}; metric names look like step, flops, "
            "peak_memory, layers.<module path>, layers.<module path>.flops"
        )
    statuses = {m.status for m in metrics}
    verdict = (
        "regression"
        if statuses & set(FAILING_STATUSES)
        else "inconclusive"
        if "inconclusive" in statuses
        else "pass"
    )
    return CheckResult(
        verdict=verdict,
        baseline=baseline_label,
        current=current_label,
        workload=current.workload.target,
        baseline_commit=baseline.commit,
        current_commit=current.commit,
        alpha=options.alpha,
        thresholds=[t.text for t in options.thresholds],
        metrics=metrics,
        machine_differences=differences,
        warnings=warnings,
        drift_factor=None if drift is None else drift.factor,
    )


def summary(result: CheckResult) -> str:
    """One line naming what failed (innermost modules first) or why the verdict is what it is."""
    if result.verdict == "regression":
        failures = result.failures()
        culprits = result.culprit_layers()
        named = [m for m in failures if m.layer in culprits] or failures
        shown = named[:3]
        rest = len(failures) - len(shown)
        more = f" (+{rest} more failing metrics)" if rest else ""
        listed = "; ".join(f"{m.metric} ({m.detail.split(';')[0]})" for m in shown)
        return f"performance regression: {listed}{more}"
    if result.verdict == "inconclusive":
        return (
            f"no regression found, but {len(result.inconclusive())} metrics are inconclusive "
            "(see their details for what would settle them)"
        )
    return f"no regression in {len(result.metrics)} metrics"
