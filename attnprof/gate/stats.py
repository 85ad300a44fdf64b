"""Statistics on timing samples: the thresholds a comparison is held to, and the verdict on two
sets of samples for one statistic.

A time metric regresses only when the statistic's slowdown exceeds its threshold AND the raw
samples differ significantly (one-sided Mann-Whitney U, p < alpha, 0.002 by default as in asv),
so noise alone never fails a build. "inconclusive" when the samples cannot tell: too few for
p < alpha to be reachable, a slowdown above the threshold that is not significant, or noise so
large that a slowdown of the threshold's size would likely go unnoticed; the detail says how
many repeats would settle it.

Threshold strings: [GLOB:]STAT:LIMIT, e.g. `median:5%`, `p90:10%`, `memory:2%`,
`layers.*attn*:median:8%`, `layers.*norm*:median:off`.
  STAT   median | mean | p10 | p90 for time metrics, memory for memory metrics
  LIMIT  the relative increase allowed, as a percentage, or `off` (reported, not gated)
  GLOB   an fnmatch pattern over metric names (gate.compare names them); `*` when left out
For each metric and statistic the last matching threshold wins, thresholds naming metrics by a
glob after those over every metric, so narrower thresholds refine broader ones. A time metric
no threshold matches is reported, not gated.

The defaults gate the step's median at 3% and memory exactly, and report every module's time: a
step is one well-sampled number, while dozens of module timings of a few microseconds each would
raise an alarm on some module in most checks of unchanged code. A step regression is attributed
to the modules that account for it (gate.compare), their significance Holm-corrected for their
number, and one that no module accounts for is put down to the machine. Gating modules is an
opt-in (`--module-limit`), Holm-corrected the same way. 3% because a 5% slowdown must be caught:
a limit equal to the slowdown catches it half the time.

The Mann-Whitney U test is computed here, in plain Python, exactly as scipy.stats.mannwhitneyu
computes it by default (tests compare the two), so that `attnprof compare` and reports of
saved results import neither scipy nor numpy.
"""

from __future__ import annotations

import fnmatch
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from attnprof.errors import UsageError
from attnprof.gate.records import CheckStatus
from attnprof.profiling.records import TimeStats

TIME_STATISTICS: dict[str, Callable[[Sequence[float]], float]] = {
    "median": lambda s: TimeStats.from_samples(list(s)).median,
    "mean": statistics.fmean,
    "p10": lambda s: TimeStats.from_samples(list(s)).p10,
    "p90": lambda s: TimeStats.from_samples(list(s)).p90,
}
MEMORY_STATISTIC = "memory"
DEFAULT_THRESHOLDS: tuple[str, ...] = ("step:median:3%", "memory:0%")
DEFAULT_ALPHA = 0.002
DEFAULT_POWER = 0.8
# Past this many repeats, repeating is not a practical way to settle a comparison.
MAX_USEFUL_REPEATS = 1000


@dataclass(frozen=True)
class Threshold:
    """A parsed threshold string: which metrics, which statistic, how much increase is allowed."""

    pattern: str
    statistic: str
    limit: float | None  # relative increase allowed; None: reported, not gated
    text: str

    def matches(self, metric: str) -> bool:
        return fnmatch.fnmatchcase(metric, self.pattern)


def parse_limit(text: str, what: str) -> float:
    """`10%` -> 0.10; a clear UsageError (exit 2) otherwise."""
    stripped = text.strip()
    try:
        percent = float(stripped[:-1]) if stripped.endswith("%") else math.nan
    except ValueError:
        percent = math.nan
    if not math.isfinite(percent) or percent < 0:
        raise UsageError(f"{what} {text!r}: expected a non-negative percentage such as 10%")
    return percent / 100


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
class SampleComparison:
    """The verdict on two sets of timing samples for one statistic."""

    status: CheckStatus
    baseline: float
    current: float
    change: float | None
    p_value: float | None
    noise: float | None
    detail: str


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: rejecting those below alpha keeps
    the chance of any false rejection among them at most alpha, whatever their dependence."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


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


def _average_ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """1-based ranks, tied values sharing their average rank, and the size of each tie group."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    groups: list[int] = []
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        groups.append(end - start + 1)
        start = end + 1
    return ranks, groups


def _u_distribution(n1: int, n2: int) -> list[int]:
    """How many of the C(n1+n2, n1) orderings give each U from 0 to n1·n2: the coefficients of the
    Gaussian binomial prod_{i=1..k} (1 - q^(n-k+i)) / (1 - q^i), k = min(n1, n2), in exact integers."""
    k, n = min(n1, n2), n1 + n2
    counts = [1] + [0] * (n1 * n2)
    for i in range(1, k + 1):
        shift = n - k + i
        for u in range(len(counts) - 1, shift - 1, -1):  # times (1 - q^shift)
            counts[u] -= counts[u - shift]
        for u in range(i, len(counts)):  # divided by (1 - q^i), which divides exactly
            counts[u] += counts[u - i]
    return counts


def mann_whitney_p(x: Sequence[float], y: Sequence[float], alternative: str) -> float:
    """One-sided p-value of the Mann-Whitney U test that `x` is stochastically greater ("greater")
    or less ("less") than `y`: scipy.stats.mannwhitneyu's default method (the exact distribution
    when a side has at most 8 values and there are no ties, else the normal approximation with
    tie and continuity corrections)."""
    n1, n2 = len(x), len(y)
    ranks, ties = _average_ranks([*x, *y])
    u1 = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    u = u1 if alternative == "greater" else n1 * n2 - u1
    if (n1 <= 8 or n2 <= 8) and max(ties) == 1:
        counts = _u_distribution(n1, n2)
        p = sum(counts[round(u):]) / math.comb(n1 + n2, n1)
    else:
        n = n1 + n2
        tie_term = sum(t**3 - t for t in ties)
        spread = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
        numerator = u - n1 * n2 / 2 - 0.5  # the continuity correction
        z = numerator / spread if spread > 0 else -math.inf
        p = NormalDist().cdf(-z)
    return min(max(p, 0.0), 1.0)


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
    p_value = mann_whitney_p(current, baseline, "greater" if slower else "less")
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
