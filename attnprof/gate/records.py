"""The verdict of `attnprof check` / `attnprof compare` and every metric behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from attnprof.store import SCHEMA_VERSION

CheckStatus = Literal["pass", "improved", "regression", "changed", "inconclusive", "info"]
MetricKind = Literal["time", "memory", "exact"]
# "error": nothing was judged because the run failed (the user's code exited, a bad input...);
# `CheckResult.error` says why. Never a passing verdict.
Verdict = Literal["pass", "regression", "inconclusive", "error"]
FAILING_STATUSES: tuple[str, ...] = ("regression", "changed")


@dataclass
class MetricCheck:
    """One metric of a check: baseline against current, and what that means.

    `statistic` is the time statistic compared (median, mean, p10, p90), "memory", or "exact".
    `change` is current / baseline - 1; `threshold` the relative increase allowed (None: reported,
    not gated); `noise` the pooled robust spread of one sample relative to its median.
    """

    metric: str
    kind: MetricKind
    statistic: str
    status: CheckStatus
    baseline: int | float | str | None
    current: int | float | str | None
    unit: str = ""
    layer: str | None = None  # module path when the metric belongs to one module
    change: float | None = None
    threshold: float | None = None
    p_value: float | None = None
    noise: float | None = None
    baseline_samples: int = 0
    current_samples: int = 0
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILING_STATUSES


@dataclass
class Attribution:
    """One module's part in a step regression: its own time (not its children's) and its share
    of its phase (the forward or the backward), before and now.

    `step_growth` is how much slower the step is from this module's change alone: its own time's
    growth beyond the growth every module of the phase shares (the machine's drift), over the
    baseline's plain step. Shares and ratios to a common drift are ratios of times measured together,
    so a machine that runs slower or faster everywhere leaves them where they were. `p_value` is the
    one-sided Mann-Whitney p that the share grew, Holm-corrected for the number of modules compared.
    """

    layer: str
    phase: Literal["forward", "backward"]
    baseline_ms: float
    current_ms: float
    delta_ms: float
    baseline_share: float
    current_share: float
    step_growth: float
    p_value: float


@dataclass
class CheckResult:
    """The verdict of `attnprof check` / `attnprof compare` and every metric behind it."""

    verdict: Verdict
    baseline: str  # where the baseline came from (a path)
    current: str  # where the current profile came from (a path, or "this run")
    workload: str
    baseline_commit: str | None
    current_commit: str | None
    alpha: float
    thresholds: list[str]
    metrics: list[MetricCheck]
    machine_differences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # How much slower (>1) the machine ran the reference probe than when the baseline was
    # recorded; timings were compared relative to it. None: no probe in one of the profiles.
    drift_factor: float | None = None
    # The modules a step regression is attributed to, largest first: each alone makes the step
    # slower by more than its limit, its share of the step significantly larger (empty otherwise).
    attribution: list[Attribution] = field(default_factory=list)
    error: str | None = None  # why nothing was judged, with verdict "error"
    schema_version: int = SCHEMA_VERSION
    command: Literal["check", "compare"] = "check"  # what judged: re-profiled now, or two saved profiles
    created: str = ""  # when it was judged (store.timestamp); "" in files written before it was recorded
    hostname: str = ""  # the machine the current profile ran on
    duration_s: float | None = None  # the whole command's time, profiling included (JUnit's `time`)

    def failures(self) -> list[MetricCheck]:
        return [m for m in self.metrics if m.failed]

    def inconclusive(self) -> list[MetricCheck]:
        return [m for m in self.metrics if m.status == "inconclusive"]

    def culprit_layers(self) -> list[str]:
        """Innermost modules with a failing metric (a slower module also slows its parents),
        then the modules a step regression is attributed to (by their own time, so a parent
        named there slowed itself)."""
        failing = list(dict.fromkeys(m.layer for m in self.failures() if m.layer is not None))
        innermost = [layer for layer in failing if not any(_is_inside(other, layer) for other in failing)]
        return list(dict.fromkeys([*innermost, *(a.layer for a in self.attribution)]))


def _is_inside(inner: str, outer: str) -> bool:
    """Whether module path `inner` lies strictly inside `outer` ("" is the whole model)."""
    return inner != outer and (outer == "" or inner.startswith(outer + "."))
