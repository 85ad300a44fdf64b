"""Interleaved profiling: time several workloads in alternating turns, so that drift hits all alike.

A shared machine's speed wanders by a few percent over tens of seconds (neighbours on the host,
frequency, cache pressure); the reference probe cancels much of it but not all. A check against
a stored baseline compares two different stretches of time, so that residue looks like a change.
Profiling the baseline's code in the same job, in short alternating turns, puts both sides in
the same stretch of time: whatever the machine does, it does to both.

Each side runs in its own worker process (`attnprof.profiling.isolate`), so two checkouts of one package
can be imported side by side, and profiles as `attnprof profile` would. Before each timed
repeat the worker checks its turn: while the turn lasts (TURN_SECONDS) it goes on; then it tells
the parent it is waiting and blocks until the parent grants it the next turn. The parent grants
turns round-robin, one worker at a time, and starts only when every worker has reached its timed
repeats, so no side's loading or counting overlaps another side's timing. When every worker has
finished timing, all are released to finish their profiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from attnprof.errors import AttnprofError, EnvironmentUnsupported, OutOfMemory, UsageError, UserCodeError
from attnprof.profiling.isolate import IsolatedCall, IsolatedOutcome, start_isolated, wait_isolated
from attnprof.profiling.records import Profile, TimeStats
from attnprof.profiling.run import run_profile
from attnprof.settings import Settings
from attnprof.store import from_json_dict, to_json_dict
from attnprof.targets.load import load_workload

# A turn: much shorter than the machine's drift (tens of seconds), much longer than a switch.
TURN_SECONDS = 0.05
# How long a worker may take to load, profile or time one turn before it is given up.
WORKER_TIMEOUT_S = 3600.0
_WAITING, _FINISHED, _GO = b"w", b"f", b"g"


@dataclass(frozen=True)
class Side:
    """One workload of an interleaved run: a target string, environment variables its worker
    sets before loading it (a knob, a feature flag), and where it loads from: the folder it
    runs in (None: this one) and folders put first on its sys.path (another checkout's)."""

    target: str
    environment: dict[str, str] = field(default_factory=dict)
    working_directory: str | None = None
    python_path: tuple[str, ...] = ()


class Turns:
    """The worker's side of the protocol: the `pace` callback for run_profile."""

    def __init__(self, grant_fd: int, report_fd: int) -> None:
        self._grant_fd, self._report_fd = grant_fd, report_fd
        self._turn_started: float | None = None

    def pace(self, done: bool) -> None:
        if not done and self._turn_started is not None and time.perf_counter() - self._turn_started < TURN_SECONDS:
            return
        os.write(self._report_fd, _FINISHED if done else _WAITING)
        if os.read(self._grant_fd, 1) != _GO:
            raise UsageError("interleaved profiling: the coordinating process went away")
        self._turn_started = time.perf_counter()


def profile_in_turns(
    target: str,
    settings: dict[str, object],
    environment: dict[str, str],
    grant_fd: int,
    report_fd: int,
    working_directory: str | None = None,
    python_path: Sequence[str] = (),
) -> Profile:
    """A worker: profile `target` with its timed repeats paced by the parent's turns."""
    os.environ.update(environment)
    if working_directory is not None:
        os.chdir(working_directory)
    sys.path[:0] = python_path
    turns = Turns(grant_fd, report_fd)
    profile = run_profile(load_workload(target), from_json_dict(Settings, settings), pace=turns.pace)
    profile.notes.append(
        "timed in turns, interleaved with other workloads: NVML energy and power span their turns too"
    )
    return profile


State = Literal["starting", "waiting", "finished", "gone"]


@dataclass
class _Worker:
    side: Side
    call: IsolatedCall
    grant_fd: int  # the parent writes _GO here
    report_fd: int  # the parent reads _WAITING / _FINISHED here; end of file: the worker exited
    state: State = "starting"
    collected: bool = False  # waited for: its process reaped, its folder removed

    def collect(self, timeout_s: float) -> IsolatedOutcome:
        """Wait at most `timeout_s` for the worker's outcome; it is killed if still running."""
        self.collected = True
        return wait_isolated(self.call, timeout_s)

    def grant(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            os.write(self.grant_fd, _GO)

    def await_report(self, timeout_s: float) -> None:
        """Block until the worker reports (or exits); a silent worker is given up."""
        ready, _, _ = select.select([self.report_fd], [], [], timeout_s)
        message = os.read(self.report_fd, 1) if ready else b""
        self.state = {_WAITING: "waiting", _FINISHED: "finished"}.get(message, "gone")


def profile_interleaved(
    sides: Sequence[Side], settings: Settings, timeout_s: float = WORKER_TIMEOUT_S
) -> list[Profile]:
    """Profile every side with `settings`, their timed repeats interleaved in turns; the
    profiles in the order of `sides`. A side that fails raises its error, naming the side."""
    if len(sides) < 2:
        raise UsageError("interleaved profiling needs at least two workloads")
    workers = [_start(side, settings) for side in sides]
    try:
        for worker in workers:
            worker.await_report(timeout_s)
        gone = [w for w in workers if w.state == "gone"]
        if gone and len(gone) < len(workers):  # one failed before timing: the rest would wait for it
            for worker in workers:
                if worker not in gone:
                    worker.collect(0)
            _outcome(gone[0], timeout_s)
            raise UserCodeError(f"{gone[0].side.target}: the worker stopped before timing")
        while any(w.state == "waiting" for w in workers):
            for worker in workers:
                if worker.state == "waiting":
                    worker.grant()
                    worker.await_report(timeout_s)
        for worker in workers:  # every one finished timing (or failed): let each complete its profile
            worker.grant()
        return [_outcome(worker, timeout_s) for worker in workers]
    finally:
        for worker in workers:
            os.close(worker.grant_fd)
            os.close(worker.report_fd)
        for worker in workers:  # a side failed, or Ctrl-C: the rest are killed, not left running
            if not worker.collected:
                worker.collect(0)


def _pooled(stats: Sequence[TimeStats | None]) -> TimeStats | None:
    """One TimeStats of every worker's samples, in worker order (so that samples paired across
    two fields, the step and its probe, stay paired); None if any worker has none."""
    if any(s is None or not s.samples for s in stats):
        return None
    return TimeStats.from_samples([x for s in stats if s is not None for x in s.samples])


def pooled_profile(profiles: Sequence[Profile]) -> Profile:
    """Profiles of one workload by several workers as one: the first's counts, layout and
    memory (deterministic, the same in each), every worker's timing samples pooled. A worker
    process has a speed of its own (where its memory landed, which core it ran on: a few percent
    on a small model), so a comparison of pooled samples averages it out."""
    first = profiles[0]
    if len(profiles) == 1:
        return first
    by_name = [{layer.name: layer for layer in p.layers} for p in profiles]
    layers = []
    for layer in first.layers:
        same = [names.get(layer.name) for names in by_name]
        if any(other is None for other in same):
            layers.append(layer)
            continue
        forward = _pooled([other.time_ms for other in same if other is not None])
        backward = _pooled([other.backward_time_ms for other in same if other is not None])
        layers.append(dataclasses.replace(layer, time_ms=forward or layer.time_ms,
                                          backward_time_ms=backward or layer.backward_time_ms))
    totals = dataclasses.replace(
        first.totals,
        time_ms=_pooled([p.totals.time_ms for p in profiles]) or first.totals.time_ms,
        reference_time_ms=_pooled([p.totals.reference_time_ms for p in profiles]) if all(
            p.totals.reference_time_ms is not None for p in profiles) else first.totals.reference_time_ms,
    )
    notes = [*first.notes, f"timings pooled from {len(profiles)} worker processes, interleaved"]
    settings = dataclasses.replace(first.settings, repeats=sum(p.settings.repeats for p in profiles))
    return dataclasses.replace(first, settings=settings, totals=totals, layers=layers, notes=notes)


def _start(side: Side, settings: Settings) -> _Worker:
    grant_read, grant_write = os.pipe()
    report_read, report_write = os.pipe()
    call = start_isolated(
        "attnprof.profiling.interleave:profile_in_turns",
        {
            "target": side.target,
            "settings": to_json_dict(settings),
            "environment": side.environment,
            "grant_fd": grant_read,
            "report_fd": report_write,
            "working_directory": side.working_directory,
            "python_path": list(side.python_path),
        },
        pass_fds=(grant_read, report_write),
    )
    os.close(grant_read)  # the child's ends: only the child holds them now, so its exit reads as EOF
    os.close(report_write)
    return _Worker(side, call, grant_write, report_read)


# A worker's error by its exit code; anything else that stops a worker (a crash, os._exit in the
# user's code, a timeout) happened while it ran the user's code: exit 3.
_ERRORS_BY_CODE: dict[int, type[AttnprofError]] = {2: UsageError, 4: EnvironmentUnsupported}


def _outcome(worker: _Worker, timeout_s: float) -> Profile:
    outcome = worker.collect(timeout_s)
    if outcome.status == "ok":
        return from_json_dict(Profile, outcome.value)
    message = f"{worker.side.target}: {outcome.reason}"
    if outcome.status == "oom":
        raise OutOfMemory(message)
    error = _ERRORS_BY_CODE.get(outcome.exit_code or 3)
    if error is not None:
        raise error(message)
    raise UserCodeError(message, outcome.user_traceback)
