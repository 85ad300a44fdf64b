"""A current Profile against a baseline Profile: every metric compared its own way, and the verdict.

Three kinds of metric:

* time (the step and every module, forward and backward): judged on the raw samples by
  `gate.stats.compare_samples` (a slowdown beyond the threshold that is also significant);
  gated only between profiles of the same machine kind (another CPU or GPU runs at another
  speed: reported, not gated).
* memory (peak of the step and of every module): relative increase against its threshold.
  attnprof accounts memory from tensor sizes, so it is deterministic and the default limit is
  0% (any growth fails); `memory:N%` tolerates growth where memory is measured otherwise.
* exact (FLOPs, attention FLOPs, parameter counts, the modules present, each attention
  layer's backend and head layout): deterministic, so any difference fails.

Metric names, which threshold globs (gate.stats) match:
  step                      step time
  layers.<path>             forward time of one module, children included
  layers.<path>.backward    backward time of one module (train mode)
  peak_memory               peak memory of the step
  layers.<path>.memory      peak activation memory of one module
  flops attention_flops backward_flops parameter_count                     exact
  layers.<path>.flops  layers.<path>.params  layers.<path>.attention        exact
  layers.<path>             also names a module that was added or removed    exact
The root module's path is written `(model)`: `layers.(model)` is the whole forward.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

from attnprof.errors import MachineMismatch, UsageError
from attnprof.gate.records import FAILING_STATUSES, CheckResult, CheckStatus, MetricCheck
from attnprof.gate.stats import (
    DEFAULT_ALPHA,
    DEFAULT_POWER,
    DEFAULT_THRESHOLDS,
    MEMORY_STATISTIC,
    TIME_STATISTICS,
    Threshold,
    compare_samples,
    parse_threshold,
)
from attnprof.machine import MachineInfo
from attnprof.profiling.records import LayerStats, Profile, TimeStats

# Machine fields that make timings incomparable; the same ones MachineInfo.fingerprint hashes.
MACHINE_FIELDS: tuple[str, ...] = ("cpu", "gpu_name", "driver", "cuda", "torch", "threads")
# Settings that change what is computed; warmup and repeats only change how often it is timed.
COMPARABLE_SETTINGS: tuple[str, ...] = ("mode", "batch_size", "seq_len", "dtype", "backend", "device")
# A reference probe this much slower or faster than in the baseline: warn that the machine changed.
MAX_DRIFT = 1.5

STALE_BASELINE_HINT = "if intended, re-record the baseline (attnprof check --update-baseline)"


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
