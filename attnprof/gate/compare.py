"""A current Profile against a baseline Profile: every metric compared its own way, and the verdict.

Three kinds of metric:

* time (the step and every module, forward and backward): judged on the raw samples by
  `gate.stats.compare_samples` (a slowdown beyond the threshold that is also significant);
  gated only between profiles of the same machine kind (another CPU or GPU runs at another
  speed: reported, not gated). By default only the step is gated and every module is reported.
  The step regresses when one module's own time (not its children's) alone makes it slower
  by more than the step's limit, judged by the module's share of its phase (`attribute`: the
  share significantly larger, Holm-corrected over the modules compared). Shares are ratios of
  times measured in the same step, so the machine's speed cancels out of them: between a
  stored baseline and a later check on a loaded machine the step moves by ±10–20% relative to
  the reference probe, a module's share by a fraction of that (benchmarks/RESULTS.md, CI
  gate). A step significantly slower beyond the limit that no module accounts for is
  inconclusive: a machine that runs slower slows every module alike. Modules gated by opt-in
  (`module_limit`, or thresholds naming them) are judged like the step, their p-values
  Holm-corrected over the gated modules.
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
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

from attnprof.errors import MachineMismatch, UsageError
from attnprof.gate.records import FAILING_STATUSES, Attribution, CheckResult, CheckStatus, MetricCheck
from attnprof.gate.stats import (
    DEFAULT_ALPHA,
    DEFAULT_POWER,
    DEFAULT_THRESHOLDS,
    MEMORY_STATISTIC,
    TIME_STATISTICS,
    Threshold,
    compare_samples,
    holm_adjusted,
    mann_whitney_p,
    min_repeats_for,
    parse_limit,
    parse_threshold,
)
from attnprof.machine import MachineInfo
from attnprof.profiling.records import LayerStats, Profile, TimeStats
from attnprof.settings import ProjectConfig
from attnprof.store import timestamp

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
    # Gate every module's median time at this relative increase (None: modules are reported);
    # thresholds that name modules by a glob still refine it.
    module_limit: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise UsageError(f"--alpha must be between 0 and 0.5, got {self.alpha!r}")
        if not 0 < self.power < 1:
            raise UsageError(f"power must be between 0 and 1, got {self.power!r}")
        if not self.metrics:
            raise UsageError("--metric: give at least one metric glob")
        if self.module_limit is not None and not (math.isfinite(self.module_limit) and self.module_limit >= 0):
            raise UsageError(f"--module-limit must be a non-negative percentage, got {self.module_limit!r}")

    @classmethod
    def from_config(
        cls,
        config: ProjectConfig,
        thresholds: Sequence[str] | None = None,
        metrics: Sequence[str] | None = None,
        alpha: float | None = None,
        allow_machine_mismatch: bool = False,
        module_limit: str | None = None,
    ) -> CheckOptions:
        """The options given (None: not given), else ATTNPROF_* variables, else [tool.attnprof]
        in pyproject.toml, else the defaults."""
        limit = config.resolve("module_limit", module_limit, None)
        return cls(
            thresholds=tuple(parse_threshold(t) for t in config.resolve("thresholds", thresholds, DEFAULT_THRESHOLDS)),
            metrics=tuple(config.resolve("metrics", metrics, ["*"])),
            alpha=config.resolve("alpha", alpha, DEFAULT_ALPHA),
            allow_machine_mismatch=allow_machine_mismatch or config.resolve("allow_machine_mismatch", None, False),
            module_limit=None if limit is None else parse_limit(limit, "--module-limit"),
        )

    def selected(self, metric: str) -> bool:
        return any(fnmatch.fnmatchcase(metric, glob) for glob in self.metrics)

    def limits(self, metric: str, kind: str) -> dict[str, float | None]:
        """statistic -> limit for one metric; the last matching threshold per statistic wins.

        Thresholds over every metric (`median:5%`) apply first, then `module_limit` to module
        timings, then thresholds naming metrics by a glob. A time metric nothing matches is
        reported by its median, not gated."""
        is_time = kind == "time"
        matching = [t for t in self.thresholds if (t.statistic in TIME_STATISTICS) == is_time and t.matches(metric)]
        chosen: dict[str, float | None] = {t.statistic: t.limit for t in matching if t.pattern == "*"}
        if is_time and self.module_limit is not None and metric.startswith("layers."):
            chosen["median"] = self.module_limit
        chosen.update({t.statistic: t.limit for t in matching if t.pattern != "*"})
        if is_time and not chosen:
            chosen["median"] = None
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
    return layer_label(layer.name) + suffix


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
    _correct_module_gates(rows, options.alpha)
    return rows


def _correct_module_gates(rows: list[MetricCheck], alpha: float) -> None:
    """Holm-correct the p-values of gated module timings over their number: with dozens of
    modules, some module of unchanged code is otherwise significant in most checks. A slowdown
    significant alone but not after the correction is inconclusive."""
    gated = [r for r in rows if r.layer is not None and r.threshold is not None and r.p_value is not None]
    if len(gated) < 2:
        return
    for row, adjusted in zip(gated, holm_adjusted([r.p_value or 0.0 for r in gated]), strict=True):
        raw, row.p_value = row.p_value, adjusted
        if row.status == "regression" and adjusted >= alpha:
            row.status = "inconclusive"
            row.detail = (
                f"{row.detail.split(' and significant')[0]} but not significant after correcting for the "
                f"{len(gated)} gated module timings (p={raw:.2g}, Holm {adjusted:.2g} >= {alpha:g})"
            )
        elif row.status in ("regression", "improved"):
            row.detail += f"; Holm-corrected over {len(gated)} module timings: p={adjusted:.2g}"


def _timed_samples(profile: Profile, phase: str) -> dict[str, list[float]]:
    """Module path -> its per-repeat times (children included) in one phase; empty unless every
    timed module has one sample per repeat."""
    timed: dict[str, list[float]] = {}
    for layer in profile.layers:
        stats = layer.time_ms if phase == "forward" else layer.backward_time_ms
        if stats is not None and stats.samples:
            timed[layer.name] = stats.samples
    return timed if len({len(samples) for samples in timed.values()}) == 1 else {}


def _own_samples(profile: Profile, phase: str) -> dict[str, list[float]]:
    """Module path -> per-repeat time spent in the module itself, not in its child modules (its
    samples minus its children's, repeat by repeat)."""
    timed = _timed_samples(profile, phase)
    own = {name: list(samples) for name, samples in timed.items()}
    for name, samples in timed.items():
        parent = _timed_parent(name, timed)
        if parent is not None:
            own[parent] = [total - child for total, child in zip(own[parent], samples, strict=True)]
    return own


def _timed_parent(name: str, timed: dict[str, list[float]]) -> str | None:
    """The nearest enclosing module that has timings ("" is the root), or None."""
    while name:
        name = name.rpartition(".")[0]
        if name in timed:
            return name
    return None


def _phase_totals(profile: Profile, phase: str, own: dict[str, list[float]]) -> list[float] | None:
    """Per-repeat time of the whole phase the modules' own times add up to: the root module's,
    else (forward only) the plain step's when it has as many samples."""
    root = _timed_samples(profile, phase).get("")
    if root is not None:
        return root
    step = profile.totals.time_ms
    counts = {len(samples) for samples in own.values()}
    if phase == "forward" and step is not None and counts == {len(step.samples)}:
        return step.samples
    return None


@dataclass(frozen=True)
class _Candidate:
    layer: str
    phase: str
    base_own: list[float]
    cur_own: list[float]
    base_total: list[float]
    cur_total: list[float]
    step_ms: float  # the baseline's plain step (median), which the step's limit is a share of
    speed: float  # how much longer the phase's modules take now in common (the machine's drift)

    def shares(self) -> tuple[list[float], list[float]]:
        """The module's share of its phase, repeat by repeat, in the baseline and now."""
        return _ratios(self.base_own, self.base_total), _ratios(self.cur_own, self.cur_total)

    def step_growth(self) -> float:
        """The step's relative growth from this module alone: its own time's growth beyond the
        phase's common drift, over the plain step (an instrumented step runs longer, by its hooks)."""
        b_ms, c_ms = _median(self.base_own), _median(self.cur_own)
        if b_ms <= 0 or self.step_ms <= 0 or self.speed <= 0:
            return 0.0
        return (c_ms / self.speed - b_ms) / self.step_ms


def _median(samples: list[float]) -> float:
    return TimeStats.from_samples(samples).median


def _ratios(own: list[float], total: list[float]) -> list[float]:
    return [o / t for o, t in zip(own, total, strict=True) if t > 0]


def _common_speed(base: dict[str, list[float]], cur: dict[str, list[float]]) -> float:
    """What the machine does to every module alike: the modules' own-time ratios (now over the
    baseline) averaged geometrically over the middle half of the phase's time, ordered by ratio
    and weighted by the baseline's time (an interquartile mean). One module that got slower or
    faster moves it only when it holds a quarter of the phase's time; on a loaded machine it
    was measured steadier than the weighted median (benchmarks/RESULTS.md, CI gate)."""
    pairs = sorted(
        (_median(cur[name]) / b_ms, b_ms)
        for name in base
        if name in cur and (b_ms := _median(base[name])) > 0 and _median(cur[name]) > 0
    )
    whole = sum(weight for _, weight in pairs)
    low, high = whole / 4, 3 * whole / 4
    start, logs, counted = 0.0, 0.0, 0.0
    for ratio, weight in pairs:
        inside = max(0.0, min(start + weight, high) - max(start, low))
        logs, counted, start = logs + inside * math.log(ratio), counted + inside, start + weight
    return math.exp(logs / counted) if counted > 0 else 1.0


def attribute(baseline: Profile, current: Profile, limit: float, alpha: float) -> list[Attribution]:
    """The modules whose own change alone makes the step slower by more than `limit`, largest first.

    A module is named when its share of its phase grew significantly (one-sided Mann-Whitney on
    the per-repeat shares, Holm-corrected over every module and phase compared) and its own
    time grew beyond what every module's did in common (`_common_speed`: the machine's drift)
    by more than `limit` of the baseline's plain step. Shares and ratios to a common drift, not times, because a
    machine that runs slower slows every module alike: only a change in some module sets it
    apart. A common drift rather than the rest of the phase, because one module getting faster
    raises every other one's share."""
    candidates: list[_Candidate] = []
    needed = min_repeats_for(alpha)
    own_by_phase: dict[str, tuple[dict[str, list[float]], dict[str, list[float]]]] = {}
    totals: dict[str, tuple[list[float], list[float]]] = {}
    for phase in ("forward", "backward"):
        base, cur = _own_samples(baseline, phase), _own_samples(current, phase)
        base_total, cur_total = _phase_totals(baseline, phase, base), _phase_totals(current, phase, cur)
        if base_total is not None and cur_total is not None:
            own_by_phase[phase], totals[phase] = (base, cur), (base_total, cur_total)
    plain = baseline.totals.time_ms
    step_ms = _median(plain.samples) if plain is not None and plain.samples else sum(
        _median(base_total) for base_total, _ in totals.values())
    for phase, (base, cur) in own_by_phase.items():
        speed = _common_speed(base, cur)
        candidates += [
            _Candidate(name, phase, base[name], cur[name], *totals[phase], step_ms, speed)
            for name in base
            if name in cur and min(len(base[name]), len(cur[name])) >= needed
        ]
    if not candidates:
        return []
    shares = [c.shares() for c in candidates]
    p_values = holm_adjusted([mann_whitney_p(now, before, "greater") if before and now else 1.0
                              for before, now in shares])
    found = []
    for candidate, (before, now), p_value in zip(candidates, shares, p_values, strict=True):
        if p_value < alpha and (growth := candidate.step_growth()) > limit:
            b_ms, c_ms = _median(candidate.base_own), _median(candidate.cur_own)
            found.append(Attribution(candidate.layer, candidate.phase, b_ms, c_ms,  # type: ignore[arg-type]
                                     c_ms - b_ms, _median(before), _median(now), growth, p_value))
    return sorted(found, key=lambda a: -a.step_growth)


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


def _judge_step(baseline: Profile, current: Profile, metrics: list[MetricCheck], alpha: float) -> list[Attribution]:
    """The step's verdict, by the modules' shares: a regression when some module alone makes it
    slower than its median limit; a significant slowdown beyond the limit that no module
    accounts for is inconclusive (the machine's speed, or a change spread thinly over the model).
    The modules named."""
    step = next((m for m in metrics if m.metric == "step" and m.statistic == "median"), None)
    if step is None or step.threshold is None or step.status == "info":
        return []
    attribution = attribute(baseline, current, step.threshold, alpha)
    measured = "" if step.change is None else f"; the step measured {step.change:+.1%}"
    if attribution:
        top = attribution[0]
        step.status = "regression"
        step.detail = (
            f"{top.step_growth:+.1%} > {step.threshold:.1%} from one module's own time alone, whatever the "
            f"machine's speed{measured}; {layer_label(top.layer)}'s share of the {top.phase} "
            f"{top.baseline_share:.1%} -> {top.current_share:.1%} (p={top.p_value:.2g} Holm-corrected < {alpha:g})"
        )
    elif step.status == "regression":
        step.status = "inconclusive"
        step.detail = (
            f"{step.detail.split(' and significant')[0]} and significant, but no module alone accounts for "
            f"{step.threshold:.1%} of it (no module's share of the step grew that much), as when the machine "
            "itself runs slower: re-run, or time both sides together with --against-ref"
        )
    return attribution


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
    attribution = _judge_step(baseline, current, metrics, options.alpha)
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
        attribution=attribution,
        created=timestamp(),
        hostname=current.machine.hostname,
    )


def error_result(reason: str, workload: str, options: CheckOptions) -> CheckResult:
    """The result of a check that measured nothing (verdict "error"), saying why."""
    return CheckResult(
        verdict="error",
        baseline="",
        current="",
        workload=workload,
        baseline_commit=None,
        current_commit=None,
        alpha=options.alpha,
        thresholds=[t.text for t in options.thresholds],
        metrics=[],
        error=reason,
        created=timestamp(),
        hostname=socket.gethostname(),
    )


def layer_label(layer: str) -> str:
    """A module path as metric names write it (the root is `(model)`)."""
    return f"layers.{layer or ROOT_LAYER_LABEL}"


def attribution_line(result: CheckResult) -> str:
    """Which modules a step regression comes from."""
    named = [
        f"{layer_label(a.layer)}{' backward' if a.phase == 'backward' else ''} "
        f"(own time {a.delta_ms:+.3g} ms, the step {a.step_growth:+.1%} from it alone, p={a.p_value:.2g})"
        for a in result.attribution[:3]
    ]
    more = len(result.attribution) - len(named)
    return "accounted for by " + ", ".join(named) + (f" and {more} more" if more else "")


def summary(result: CheckResult) -> str:
    """One line naming what failed (innermost modules first) or why the verdict is what it is."""
    if result.verdict == "error":
        return f"nothing was checked: {result.error}"
    if result.verdict == "regression":
        failures = result.failures()
        culprits = result.culprit_layers()
        named = [m for m in failures if m.layer in culprits] or failures
        step = [m for m in failures if m.metric == "step"]
        shown = [*step, *[m for m in named if m.metric != "step"]][:3]
        rest = len(failures) - len(shown)
        more = f" (+{rest} more failing metrics)" if rest else ""
        listed = "; ".join(
            f"{m.metric} ({m.detail.split(';')[0]}"
            + (f"; {attribution_line(result)})" if m.metric == "step" and result.attribution else ")")
            for m in shown
        )
        return f"performance regression: {listed}{more}"
    if result.verdict == "inconclusive":
        return (
            f"no regression found, but {len(result.inconclusive())} metrics are inconclusive "
            "(see their details for what would settle them)"
        )
    return f"no regression in {len(result.metrics)} metrics"
