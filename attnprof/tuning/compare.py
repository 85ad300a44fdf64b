"""Candidates timed side by side: the baseline and each candidate in alternating, shuffled turns.

A shared machine's speed wanders by several percent over seconds; plans measured one after the
other therefore differ by drift as much as by what they change. Here every side has been built
and warmed up first (`profiling.run.prepare`), then each round gives every side TURN_SECONDS of
steps, split into up to PASSES passes through the sides, each pass in a fresh random order, so
whatever the machine does in a round it does to all sides alike: with one 50 ms turn per side a
burst of load hit one side's turn and not the other's (per-round log-ratio σ 0.36-0.41 between
two copies of one model at load ≈ 4), spread over ten passes it hits both (σ 0.20-0.28). A
side's sample of a round is the median of its steps in that round; two sides are
compared by the per-round ratios of their samples (paired), with a Student-t interval on the
log-ratio. Rounds go on until the best side is resolved against every other (significantly
better, or equivalent within EQUIVALENCE) or the time budget is spent.

Stopping as soon as an interval excludes 1 is optional stopping: judged after every round, a
plan that changes nothing came out "significant" in 9 of 30 runs at 95% (a simulation of the
same rule gives 14-31%). So the ranking is judged only at the round counts in LOOKS and once
more where the time budget ends, and every interval is at the Bonferroni level over those
looks (`LOOK_ALPHA`): whichever look the comparison stops at, a plan that changes nothing is
called different at most 1 - CONFIDENCE of the time.

A tie whose medians differ by more than PRACTICAL_MARGIN is then contested (`contest`): only
the two plans concerned run further rounds, until their interval excludes 1, lies within
±PRACTICAL_MARGIN (truly tied), or the budget is spent.

The turns run in this process, not in `profiling.interleave`'s worker processes: a candidate is
the in-memory workload (possibly a Python factory handed to the API, which a worker could not
load by name) transformed by a plan, and a worker per candidate would pay a fresh interpreter,
torch import and model build each, more than the comparison itself on small models.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from scipy import stats

from attnprof.measure.timing import time_call
from attnprof.plans.records import TimeRatio
from attnprof.profiling.interleave import TURN_SECONDS
from attnprof.profiling.progress import track
from attnprof.profiling.run import Prepared, prepare, restored_threads
from attnprof.settings import Settings
from attnprof.targets.workload import Workload

CONFIDENCE = 0.95  # two-sided, for the speed-up intervals and for "significantly better"
EQUIVALENCE = 0.01  # an interval inside ±1% counts as a resolved tie: more rounds would not split it
PRACTICAL_MARGIN = 0.02  # tied plans this far apart by median are worth rounds to tell apart
PASSES = 10  # a round's steps are spread over up to this many passes through the sides
MIN_ROUNDS = 5
MAX_ROUNDS = 160  # per pair, contests included: under load a 5% difference can need 100+ rounds
# Round counts (samples per side, contests included) at which a comparison may stop; geometric, so
# a clear difference stops early and a close one gets the rounds it needs (the budget bounds it).
LOOKS = (5, 7, 10, 14, 20, 28, 40, 56, 80, 112, MAX_ROUNDS)
# Two-sided, per look: the scheduled ones, and where the budgets of the first comparison and of a
# contest end (a contest goes on with the same samples).
LOOK_ALPHA = (1.0 - CONFIDENCE) / (len(LOOKS) + 2)


@dataclass
class TimedSide:
    """One side of the comparison: a prepared step, the CPU threads it runs with, and how many
    such steps make one step of the workload's batch (micro-batches)."""

    label: str
    prepared: Prepared
    threads: int = 0  # 0: the process's, as it was when the comparison began
    micro_steps: int = 1
    scale: float = 1.0  # samples × scale: time per workload batch of samples (plans may run more)
    samples_ms: list[float] = field(default_factory=list)  # one per round, for the whole batch
    step_s: float = 0.0  # its latest median step: how many passes a round can hold

    def steps(self, clock: str, seconds: float) -> list[float]:
        """Steps until `seconds` have passed (at least one), each in ms."""
        if self.threads:
            torch.set_num_threads(self.threads)
        steps: list[float] = []
        started = time.perf_counter()
        while not steps or time.perf_counter() - started < seconds:
            steps.append(1e3 * time_call(self.prepared.step, self.prepared.device, clock))
        return steps

    def record(self, steps_ms: Sequence[float]) -> None:
        """A round's sample: the median of its steps, for the whole batch."""
        median = statistics.median(steps_ms)
        self.step_s = median / 1e3
        self.samples_ms.append(median * self.micro_steps)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def per_batch_ms(self) -> list[float]:
        return [t * self.scale for t in self.samples_ms]


def side_of(label: str, workload: Workload, settings: Settings, micro_steps: int = 1, scale: float = 1.0) -> TimedSide:
    """`workload` prepared to run as `settings` say, as a side. Preparing sets the run's thread
    count process-wide; here it is put back, so that neither the next side's preparation nor a
    side that keeps the process's threads (settings.threads 0) inherits this one's."""
    with restored_threads():
        prepared = prepare(workload, settings)
    return TimedSide(label, prepared, settings.threads, micro_steps, scale)


def equivalent(ratio: TimeRatio) -> bool:
    """The interval lies within ±EQUIVALENCE of 1: the two are the same for practical purposes."""
    return ratio.low >= 1.0 - EQUIVALENCE and ratio.high <= 1.0 + EQUIVALENCE


def decided(ratio: TimeRatio, margin: float = PRACTICAL_MARGIN) -> str | None:
    """Why a contest between two plans is over: their interval excludes 1 ("significant") or
    lies within ±margin ("tied within ±2%"); None while neither."""
    if ratio.significant:
        return "significant"
    if ratio.low >= 1.0 - margin and ratio.high <= 1.0 + margin:
        return f"tied within ±{margin:.0%}"
    return None


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], alpha: float = LOOK_ALPHA) -> TimeRatio:
    """numerator / denominator: the geometric mean of the per-round ratios, with a Student-t
    interval on their logs at two-sided level 1 - `alpha` (by default the per-look level of a
    sequential comparison, which makes it a CONFIDENCE interval over all its looks)."""
    logs = [math.log(a / b) for a, b in zip(numerator, denominator, strict=True) if a > 0 and b > 0]
    if not logs:
        return TimeRatio(math.nan, 0.0, math.inf, 0)
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return TimeRatio(math.exp(mean), 0.0, math.inf, len(logs))
    half = float(stats.t.ppf(1.0 - alpha / 2, len(logs) - 1)) * statistics.stdev(logs) / math.sqrt(len(logs))
    return TimeRatio(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs), CONFIDENCE)


def resolved(sides: Sequence[TimedSide]) -> bool:
    """The fastest side (by median) is significantly faster than, or equivalent to, every other."""
    best = min(sides, key=lambda s: s.median_ms)
    for other in sides:
        if other is not best:
            ratio = paired_ratio(other.samples_ms, best.samples_ms)
            if not (ratio.significant or equivalent(ratio)):
                return False
    return True


def interleave(
    sides: Sequence[TimedSide],
    clock: str,
    budget_s: float,
    warmup: int,
    seed: int = 0,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    stop: Callable[[Sequence[TimedSide]], bool] = resolved,
) -> int:
    """Time `sides` in shuffled rounds until `stop` says the ranking is settled or `budget_s` is
    spent (after at least `min_rounds`); fills each side's samples and returns the rounds run.
    `stop` is asked only at the sample counts in LOOKS, so its intervals keep their level."""
    order = list(sides)
    shuffle = random.Random(seed).shuffle
    for side in sides:  # a side that keeps the process's threads must not run with the last side's
        side.threads = side.threads or torch.get_num_threads()
    with restored_threads():
        for side in order:  # warm every side before the first timed round
            for _ in range(max(warmup, 1)):
                side.step_s = side.steps(clock, 0.0)[0] / 1e3
        started = time.perf_counter()
        rounds = 0
        for rounds in range(1, max_rounds + 1):
            passes = _passes(sides)
            steps: dict[int, list[float]] = {id(side): [] for side in sides}
            for _ in track(range(passes), f"verifying {len(sides) - 1} candidate(s), round {rounds}", passes):
                shuffle(order)
                for side in order:
                    steps[id(side)] += side.steps(clock, TURN_SECONDS / passes)
            for side in sides:
                side.record(steps[id(side)])
            if rounds < min_rounds:
                continue
            if time.perf_counter() - started > budget_s:
                break  # the budget's end is the last look
            if len(order[0].samples_ms) in LOOKS and stop(sides):
                break
    return rounds


def _passes(sides: Sequence[TimedSide]) -> int:
    """Passes a round's TURN_SECONDS per side can hold: one step of the slowest side each, at most PASSES."""
    slowest = max(side.step_s for side in sides)
    return min(PASSES, max(1, int(TURN_SECONDS / slowest))) if slowest > 0 else PASSES


@dataclass
class Contest:
    """Two tied plans timed further, alone: the ratio before and after, the rounds it took, why it stopped."""

    simpler: str
    leader: str
    before: TimeRatio
    after: TimeRatio
    rounds: int
    stopped: str

    def describe(self) -> str:
        b, a = self.before, self.after
        return (
            f"tie of {self.simpler} with {self.leader} (x{b.value:.3f} [{b.low:.3f}, {b.high:.3f}] over "
            f"{b.rounds} rounds) contested for {self.rounds} more round(s): x{a.value:.3f} "
            f"[{a.low:.3f}, {a.high:.3f}] over {a.rounds} rounds; stopped: {self.stopped}"
        )


def contest(
    simpler: TimedSide, leader: TimedSide, clock: str, budget_s: float, margin: float = PRACTICAL_MARGIN
) -> Contest | None:
    """`simpler` (per batch) over `leader`, when more than `margin` apart by their point
    estimate and not significantly: both run more interleaved rounds, only they, until `decided`
    or `budget_s` is spent (at least one round). None when there is nothing to contest."""

    def ratio() -> TimeRatio:
        return paired_ratio(simpler.per_batch_ms, leader.per_batch_ms)

    # Only rounds the two ran together pair up: a side contested before keeps the rounds it shared with this one.
    common = min(len(simpler.samples_ms), len(leader.samples_ms))
    del simpler.samples_ms[common:], leader.samples_ms[common:]
    before = ratio()
    if common >= MAX_ROUNDS or decided(before, margin) is not None or abs(math.log(before.value)) <= math.log1p(margin):
        return None
    rounds = interleave([simpler, leader], clock, budget_s, warmup=0, min_rounds=1, max_rounds=MAX_ROUNDS - common,
                        stop=lambda _: decided(ratio(), margin) is not None)
    after = ratio()
    limit = common + rounds >= MAX_ROUNDS
    spent = f"the round limit ({MAX_ROUNDS}) was reached" if limit else "the time budget was spent"
    return Contest(simpler.label, leader.label, before, after, rounds, decided(after, margin) or spent)
