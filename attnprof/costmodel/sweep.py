"""Which configurations to measure, the loop that measures them, and the resumable store.

The design measures few points but covers the space: every combination of choice knobs
(dtype, backend, threads) is measured at the same shapes — the corners and centre of the
numeric ranges (log scale), then space-filling points — so each combination gets its own fit
and, at every shape, the choices can be compared. Shapes come in order of information: a sweep
stopped by `--time-budget` still has the corners of every combination.

The store is JSON Lines (store.append_jsonl): one fsynced line per measurement, so a crash
can tear only the last line, which reading skips and the next append cuts off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import re
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import qmc

from attnprof.costmodel.fit import PointFeatures, cross_validate, fit_cost_model, split_step_time, step_features
from attnprof.costmodel.knobs import Config, ConfigValue, Knob, config_of
from attnprof.costmodel.records import CostModel, LayerFeatures, Measurement, MeasurementStatus
from attnprof.errors import UsageError, UserCodeError
from attnprof.machine import machine_info
from attnprof.measure.memory import tensor_bytes
from attnprof.profiling.faults import free_memory, out_of_memory, out_of_memory_reason
from attnprof.profiling.isolate import call_isolated
from attnprof.profiling.records import LayerStats, TimeStats
from attnprof.profiling.run import (
    CountingResult,
    Prepared,
    TimingResult,
    build_layers,
    counting_pass,
    prepare,
    timing_pass,
)
from attnprof.settings import Settings, settings_for
from attnprof.store import (
    DEFAULT_PROFILE_DIR,
    append_jsonl,
    from_json_dict,
    read_jsonl_records,
    short_hash,
    timestamp,
    to_json_dict,
    workload_dir,
)
from attnprof.targets.workload import Workload, load_workload

MeasurePoint = Callable[[Config], Measurement]

# Candidates the greedy space-filling choice picks from, beyond corners and centre.
_FILL_CANDIDATES = 256


def design_points(knobs: Mapping[str, Knob], max_points: int, seed: int = 0) -> list[Config]:
    """At most `max_points` configurations: shapes in order of coverage, each under every
    combination of choice values."""
    if max_points < 1:
        raise UsageError(f"--max-measurements must be a positive integer, got {max_points}")
    numeric = [knob for knob in knobs.values() if knob.numeric]
    choices = [knob for knob in knobs.values() if not knob.numeric]
    combinations = list(itertools.product(*(knob.choices for knob in choices)))
    if max_points < len(combinations):
        names = " x ".join(f"{knob.flag} ({len(knob.choices)})" for knob in choices)
        raise UsageError(
            f"--max-measurements {max_points} cannot see every combination of {names}: "
            f"use at least {len(combinations)}, or fewer choice values"
        )
    shapes = _spread_shapes(numeric, max_points // len(combinations), seed)
    return [
        {
            **dict(zip([k.name for k in numeric], shape, strict=True)),
            **dict(zip([k.name for k in choices], combination, strict=True)),
        }
        for shape in shapes
        for combination in combinations
    ]


def _spread_shapes(numeric: Sequence[Knob], count: int, seed: int) -> list[tuple[int, ...]]:
    """Up to `count` distinct integer shapes: corners, centre, then greedy max-min distance
    picks from a scrambled Halton sequence, all in log-scaled unit coordinates."""
    if not numeric:
        return [()]
    dims = len(numeric)
    corners = [np.array(corner, dtype=float) for corner in itertools.product((0.0, 1.0), repeat=dims)]
    centre = np.full(dims, 0.5)
    fill = qmc.Halton(d=dims, scramble=True, seed=seed).random(_FILL_CANDIDATES)
    candidates = [*corners, centre, *fill]
    chosen: list[tuple[int, ...]] = []
    chosen_unit: list[np.ndarray] = []
    while len(chosen) < count:
        best, best_distance = None, -1.0
        for candidate in candidates:
            shape = tuple(_to_value(knob, u) for knob, u in zip(numeric, candidate, strict=True))
            if shape in chosen:
                continue
            unit = np.array([_to_unit(knob, v) for knob, v in zip(numeric, shape, strict=True)])
            distance = min((float(np.linalg.norm(unit - c)) for c in chosen_unit), default=math.inf)
            if distance > best_distance:
                best, best_distance = (shape, unit), distance
        if best is None:
            break  # every distinct integer shape in the ranges is taken
        chosen.append(best[0])
        chosen_unit.append(best[1])
    return chosen


def _to_value(knob: Knob, unit: float) -> int:
    low, high = math.log(knob.low), math.log(knob.high)
    return min(knob.high, max(knob.low, round(math.exp(low + unit * (high - low)))))


def _to_unit(knob: Knob, value: int) -> float:
    if knob.high == knob.low:
        return 0.0
    return (math.log(value) - math.log(knob.low)) / (math.log(knob.high) - math.log(knob.low))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|m|h)?\s*$")


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """Seconds from `90`, `90s`, `5m` or `1h`."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"{flag}: {text!r} is not a positive duration such as 90s, 5m or 1h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


def measurement_key(config: Mapping[str, ConfigValue]) -> str:
    return short_hash(dict(config))


def store_path(folder: Path, workload_name: str, workload_fingerprint: str, machine_fingerprint: str) -> Path:
    """profiles/<workload>-<architecture fingerprint>/measurements-<machine fingerprint>.jsonl"""
    return workload_dir(folder, workload_name, workload_fingerprint) / f"measurements-{machine_fingerprint}.jsonl"


class MeasurementStore:
    """Append-only JSON Lines file of one workload's measurements on one machine."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.notes: list[str] = []  # e.g. a torn last line skipped on the last load

    def load(self) -> dict[str, Measurement]:
        """Measurements by key (a later line wins); a torn last line is skipped."""
        measurements, self.notes = read_jsonl_records(self.path, Measurement)
        return {m.key: m for m in measurements}

    def append(self, measurement: Measurement) -> None:
        append_jsonl(self.path, measurement)


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


def architecture_key(workload: Workload) -> str:
    """The workload's architecture fingerprint as built in fp32, whatever dtype a run used."""
    fresh = dataclasses.replace(workload, architecture="")
    fresh.fingerprint(Settings())  # builds the model on the meta device and fingerprints it
    return fresh.architecture


def failure_status(exc: BaseException) -> MeasurementStatus | None:
    """How a failed run is recorded: `oom` for any allocation failure, `error` for other
    exceptions of the user's model at this configuration, None for attnprof's own errors."""
    if out_of_memory(exc) is not None:
        return "oom"
    return "error" if isinstance(exc, UserCodeError) else None


def count_features(workload: Workload, settings: Settings) -> PointFeatures:
    """The cost drivers of one configuration from a single counted step, without timing."""
    with _restored_threads():
        prepared = prepare(workload, settings)
        counting = counting_pass(prepared)
    layers = build_layers(prepared, counting, None, settings.mode == "train")
    return _features(prepared, counting, layers, settings)


def _features(
    prepared: Prepared, counting: CountingResult, layers: list[LayerStats], settings: Settings
) -> PointFeatures:
    return step_features(
        layers,
        {name: cost.ops for name, cost in counting.costs.items()},
        settings,
        param_bytes=tensor_bytes(prepared.model),
        element_size=prepared.dtype.itemsize,
    )


def measure_settings(
    workload: Workload, settings: Settings, *, workload_fingerprint: str, machine_fingerprint: str
) -> Measurement:
    """One configuration measured through the profiler's counting and timing passes; a run
    that runs out of memory, yields NaN/inf or fails in the model is recorded as infeasible."""
    record = functools.partial(
        Measurement,
        key=measurement_key(config_of(settings)),
        config=config_of(settings),
        created=timestamp(),
        workload_fingerprint=workload_fingerprint,
        machine_fingerprint=machine_fingerprint,
    )
    try:
        prepared, counting, timing = _passes(workload, settings)
    except Exception as exc:
        status = failure_status(exc)
        if status is None:
            raise
        reason = out_of_memory_reason(exc) if status == "oom" else " ".join(str(exc).split())[:300]
        failed = record(status=status, reason=reason)
    else:
        failed = None
    if failed is not None:
        # Out here the exception, its traceback and the tensors its frames held are gone.
        free_memory()
        return failed
    if timing is None:
        return record(status="non_finite", reason=f"the model's output contains NaN or inf under {settings.dtype}")
    layers = build_layers(prepared, counting, timing, settings.mode == "train")
    features = _features(prepared, counting, layers, settings)
    step = TimeStats.from_samples(timing.step_ms)
    return record(
        status="ok",
        time_ms=step,
        kind_time_ms=split_step_time(step.median, layers),
        kind_features=features.kinds,
        peak_memory_bytes=int(features.memory.param_bytes) + counting.peak_activation_bytes,
        memory_features=features.memory,
        layers=[LayerFeatures(name, kind, f) for name, kind, f in features.layers],
    )


def _passes(workload: Workload, settings: Settings) -> tuple[Prepared, CountingResult, TimingResult | None]:
    """The counting pass, then the timing pass unless the outputs are not finite (None)."""
    with _restored_threads():
        prepared = prepare(workload, settings)
        counting = counting_pass(prepared)
        if not counting.finite:
            return prepared, counting, None
        return prepared, counting, timing_pass(prepared, settings)


def profiler_measure_point(
    workload: Workload, base: Settings, *, workload_fingerprint: str, machine_fingerprint: str
) -> MeasurePoint:
    """The measure_point of `run_sweep` for `workload`: each configuration on top of `base`."""

    def measure_point(config: Config) -> Measurement:
        return measure_settings(
            workload,
            settings_for(base, config),
            workload_fingerprint=workload_fingerprint,
            machine_fingerprint=machine_fingerprint,
        )

    return measure_point


def measure_target(
    target: str, settings: dict[str, Any], workload_fingerprint: str, machine_fingerprint: str
) -> Measurement:
    """`measure_settings` of the workload a target string names: what an isolated child runs."""
    return measure_settings(
        load_workload(target),
        from_json_dict(Settings, settings, where="settings"),
        workload_fingerprint=workload_fingerprint,
        machine_fingerprint=machine_fingerprint,
    )


def isolated_measure_point(
    workload: Workload, base: Settings, *, workload_fingerprint: str, machine_fingerprint: str, timeout_s: float
) -> MeasurePoint:
    """Like `profiler_measure_point`, each configuration in its own process: a hang past
    `timeout_s` or a crash (segfault, abort) records that point as failed, with the reason, and
    the sweep goes on."""

    def measure_point(config: Config) -> Measurement:
        settings = settings_for(base, config)
        outcome = call_isolated(
            "attnprof.costmodel.sweep:measure_target",
            {
                "target": workload.target,
                "settings": to_json_dict(settings),
                "workload_fingerprint": workload_fingerprint,
                "machine_fingerprint": machine_fingerprint,
            },
            timeout_s,
        )
        if outcome.status == "ok":
            return from_json_dict(Measurement, outcome.value, where="isolated measurement")
        return Measurement(
            key=measurement_key(config_of(settings)),
            config=config_of(settings),
            status="oom" if outcome.status == "oom" else "error",
            reason=outcome.reason,
            created=timestamp(),
            workload_fingerprint=workload_fingerprint,
            machine_fingerprint=machine_fingerprint,
        )

    return measure_point


@contextlib.contextmanager
def _restored_threads() -> Iterator[None]:
    # A configuration's `threads` must not leak into the next one or into the caller.
    before = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_path(folder: Path, workload_name: str, workload_fingerprint: str, machine_fingerprint: str) -> Path:
    """profiles/<workload>-<architecture fingerprint>/costmodel-<machine fingerprint>.json"""
    return workload_dir(folder, workload_name, workload_fingerprint) / f"costmodel-{machine_fingerprint}.json"


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
    outcome = run_sweep(points, measure, store, time_budget_s=time_budget_s, on_measured=on_measured)
    notes = list(store.notes)
    errors = [m for m in outcome.measurements if m.status == "error"]
    if errors and not any(m.feasible for m in outcome.measurements):
        raise UserCodeError(f"every configuration failed; the first: {errors[0].reason}")

    def fit(measurements: Sequence[Measurement]) -> CostModel:
        return fit_cost_model(measurements, target=workload.target, workload_fingerprint=architecture, machine=machine)

    model = fit(outcome.measurements)
    try:
        model.validation = cross_validate(outcome.measurements, fit, folds)
    except UsageError as exc:
        notes.append(f"not cross-validated: {exc}")
    return FitRun(model, outcome, store.path, model_path(folder, name, architecture, machine.fingerprint()), notes)
