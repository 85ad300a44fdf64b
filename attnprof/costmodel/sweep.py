"""The sweep: every design point measured once (resuming from the store), then the cost model
fitted on them and cross-validated."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnprof.costmodel.design import design_points
from attnprof.costmodel.fit import cross_validate, fit_cost_model
from attnprof.costmodel.knobs import Config, Knob, config_of
from attnprof.costmodel.measure import MeasurePoint, isolated_measure_point, profiler_measure_point
from attnprof.costmodel.measurements import (
    MeasurementStore,
    architecture_key,
    measurement_key,
    model_path,
    store_path,
)
from attnprof.costmodel.records import CostModel, Measurement
from attnprof.errors import UsageError, UserCodeError
from attnprof.machine import machine_info
from attnprof.profiling.progress import spinning
from attnprof.settings import Settings, settings_for
from attnprof.store import DEFAULT_PROFILE_DIR
from attnprof.targets.workload import Workload


@dataclass
class SweepOutcome:
    measurements: list[Measurement]  # one per design point reached, in design order
    measured: int  # newly measured in this run
    reused: int  # found in the store from an earlier run
    stopped: str = ""  # why the sweep ended before the last point, if it did
    skipped: list[Config] = field(default_factory=list)


def run_sweep(
    points: Sequence[Config],
    measure_point: MeasurePoint,
    store: MeasurementStore,
    *,
    time_budget_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_measured: Callable[[Measurement, int, int], None] | None = None,
    on_start: Callable[[Config, int, int], None] | None = None,
) -> SweepOutcome:
    """Measure every point not already in the store, appending each as soon as it is measured.

    `measure_point` turns one configuration into a Measurement (infeasible ones included); the
    loop stops starting new points once the time budget would be exceeded by a typical point.
    """
    done = store.load()
    start = clock()
    durations: list[float] = []
    outcome = SweepOutcome(measurements=[], measured=0, reused=0)
    for index, config in enumerate(points):
        key = measurement_key(config)
        if key in done:
            outcome.measurements.append(done[key])
            outcome.reused += 1
            continue
        if _over_budget(time_budget_s, clock() - start, durations) and not outcome.stopped:
            outcome.stopped = f"time budget of {time_budget_s:g} s reached"
        if outcome.stopped:
            outcome.skipped.append(dict(config))
            continue
        if on_start is not None:
            on_start(config, index, len(points))
        began = clock()
        measurement = dataclasses.replace(measure_point(config), key=key, config=dict(config))
        durations.append(clock() - began)
        store.append(measurement)
        outcome.measurements.append(measurement)
        outcome.measured += 1
        if on_measured is not None:
            on_measured(measurement, index, len(points))
    return outcome


def _over_budget(budget_s: float | None, elapsed_s: float, durations: list[float]) -> bool:
    """Whether one more typical point would take the sweep past its time budget."""
    return budget_s is not None and bool(durations) and elapsed_s + statistics.median(durations) > budget_s


@dataclass
class FitRun:
    model: CostModel
    sweep: SweepOutcome
    store_path: Path
    model_path: Path
    notes: list[str] = field(default_factory=list)


def fit_workload(
    workload: Workload,
    base: Settings,
    knobs: Mapping[str, Knob],
    *,
    max_measurements: int,
    time_budget_s: float | None = None,
    folds: int = 5,
    folder: Path = DEFAULT_PROFILE_DIR,
    on_measured: Callable[[Measurement, int, int], None] | None = None,
    isolate_timeout_s: float | None = None,
    on_start: Callable[[Config, int, int], None] | None = None,
) -> FitRun:
    """Sweep the design (resuming from the store), fit the cost model and cross-validate it.
    With `isolate_timeout_s`, each point runs in a child process cut off after that many seconds."""
    architecture = architecture_key(workload)
    machine = machine_info()
    name = workload.name or workload.target
    store = MeasurementStore(store_path(folder, name, architecture, machine.fingerprint()))
    points = [config_of(settings_for(base, point)) for point in design_points(knobs, max_measurements)]
    fingerprints = {"workload_fingerprint": architecture, "machine_fingerprint": machine.fingerprint()}
    if isolate_timeout_s is None:
        measure = profiler_measure_point(workload, base, **fingerprints)
    else:  # each point in a child process, cut off after the timeout
        measure = isolated_measure_point(workload, base, timeout_s=isolate_timeout_s, **fingerprints)
    outcome = run_sweep(
        points, measure, store, time_budget_s=time_budget_s, on_measured=on_measured, on_start=on_start
    )
    notes = list(store.notes)
    errors = [m for m in outcome.measurements if m.status == "error"]
    if errors and not any(m.feasible for m in outcome.measurements):
        raise UserCodeError(f"every configuration failed; the first: {errors[0].reason}")

    def fit(measurements: Sequence[Measurement]) -> CostModel:
        return fit_cost_model(measurements, target=workload.target, workload_fingerprint=architecture, machine=machine)

    with spinning(f"fitting the cost model on {len(outcome.measurements)} measurement(s), cross-validating"):
        model = fit(outcome.measurements)
        try:
            model.validation = cross_validate(outcome.measurements, fit, folds)
        except UsageError as exc:
            notes.append(f"not cross-validated: {exc}")
    return FitRun(model, outcome, store.path, model_path(folder, name, architecture, machine.fingerprint()), notes)
