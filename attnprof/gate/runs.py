"""The profile runs a check is judged on: the settings a baseline or an interleaved check runs
with, and the two interleaved sides of `check --against TARGET` and `check --against-ref REF`.
Used by `attnprof baseline`, `attnprof check` and the pytest plugin alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from attnprof.errors import UsageError
from attnprof.gate.refs import ref_checkout
from attnprof.profiling.interleave import Side, pooled_profile, profile_interleaved
from attnprof.profiling.records import Profile
from attnprof.settings import ProjectConfig, Settings, resolve_settings
from attnprof.targets.load import load_workload
from attnprof.targets.workload import Workload

# Timed repeats of a gate run unless the command line, the environment or [tool.attnprof.settings]
# says otherwise: with the per-sample noise of a shared CPU (±5–8% relative to the probe), fewer
# cannot tell a 3% step slowdown at p < 0.002 (benchmarks/RESULTS.md, CI gate). A model file's
# ATTNPROF repeats are meant for `attnprof profile`, so they are raised to this for a gate.
GATE_REPEATS = 200
# CPU threads of a gate run on a CPU unless set: a step that needs two cores stalls whenever
# another process takes one, which the single-threaded reference probe does not see (on the
# shared 2-core machine, step/probe medians of unchanged code moved by 16% between two runs with
# torch's default two threads, ±1.5% with one).
GATE_CPU_THREADS = 1


# Worker processes per side of a gate run, their timed repeats interleaved and their samples
# pooled. A process has a speed of its own: on the shared 2-core machine, four interleaved
# workers of the same code differed by up to 5% in step time (1–3% relative to the probe).
# Running every gate measurement in workers also means nothing the user's code does (os._exit
# included) can end attnprof's own process with a status of its choosing.
GATE_WORKERS = 2
# What a gate run times on a CPU unless set: process CPU time, which the time slicing of other
# jobs on a shared machine does not inflate (interleaved A/A checks of unchanged code moved
# the step by up to 11% by wall time under a load of 4, by up to 2.5% by CPU time). It does not
# count time spent waiting (sleeping, I/O): set clock = "wall" to gate that.
GATE_CPU_CLOCK = "cpu"


def gate_settings(workload: Workload, config: ProjectConfig, cli: Mapping[str, Any]) -> Settings:
    """The settings a baseline (and an interleaved check) is recorded with, where nothing sets
    them explicitly: the reference probe on, at least GATE_REPEATS repeats, and on a CPU
    GATE_CPU_THREADS threads timed by GATE_CPU_CLOCK."""
    explicit = config.settings_overrides(cli)
    settings = resolve_settings(workload, {"reference_probe": True, **explicit})
    if "repeats" not in explicit and settings.repeats < GATE_REPEATS:
        settings = dataclasses.replace(settings, repeats=GATE_REPEATS)
    if settings.device == "cpu":
        if "threads" not in explicit and "threads" not in workload.defaults:
            settings = dataclasses.replace(settings, threads=GATE_CPU_THREADS)
        if "clock" not in explicit and "clock" not in workload.defaults:
            settings = dataclasses.replace(settings, clock=GATE_CPU_CLOCK)
    return settings


def _per_worker(settings: Settings, workers: int) -> Settings:
    """Each worker's share of the repeats (at least the few a median needs)."""
    return dataclasses.replace(settings, repeats=max(5, -(-settings.repeats // workers)))


def gate_profile(workload: Workload, settings: Settings) -> Profile:
    """WORKLOAD profiled as a gate measures it: in GATE_WORKERS fresh processes, interleaved,
    their samples pooled (`settings.repeats` in all)."""
    profiles = profile_interleaved([Side(workload.target)] * GATE_WORKERS, _per_worker(settings, GATE_WORKERS))
    return pooled_profile(profiles)


def profile_against(against: str, current: Workload, settings: Settings) -> tuple[Profile, Profile]:
    """AGAINST's and CURRENT's profiles, their timed repeats interleaved."""
    load_workload(against)  # a bad target string fails here (exit 2), before any worker starts
    return profile_pair(Side(against), current, settings)


def profile_pair(reference: Side, current: Workload, settings: Settings) -> tuple[Profile, Profile]:
    """REFERENCE's and CURRENT's profiles, GATE_WORKERS processes each, all interleaved."""
    sides = [reference] * GATE_WORKERS + [Side(current.target)] * GATE_WORKERS
    profiles = profile_interleaved(sides, _per_worker(settings, GATE_WORKERS))
    return pooled_profile(profiles[:GATE_WORKERS]), pooled_profile(profiles[GATE_WORKERS:])


def profile_against_ref(ref: str, current: Workload, settings: Settings) -> tuple[Profile, Profile, str]:
    """The target as git REF has it and as the working tree has it (uncommitted changes
    included), profiled interleaved, from a temporary worktree of REF that is removed however
    this ends; and the baseline's label, naming REF and its commit."""
    with ref_checkout(ref) as checkout:
        target = checkout.target(current.target)
        path = target.partition(":")[0]
        if path.endswith(".py") and not (checkout.working_directory() / path).is_file():
            raise UsageError(f"--against-ref {ref}: {path} does not exist at {ref} ({checkout.commit[:12]})")
        side = Side(
            target,
            working_directory=str(checkout.working_directory()),
            python_path=tuple(checkout.python_path()),
        )
        reference, profile = profile_pair(side, current, settings)
    return reference, profile, f"{ref} ({checkout.commit[:12]}, interleaved)"
