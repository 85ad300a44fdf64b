"""One configuration measured: through the profiler's counting and timing passes, in this
process or in a child process that a hang or a crash cannot take down."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from attnprof.costmodel.fit import PointFeatures, split_step_time, step_features
from attnprof.costmodel.knobs import Config, config_of
from attnprof.costmodel.measurements import measurement_key
from attnprof.costmodel.records import LayerFeatures, Measurement, MeasurementStatus
from attnprof.errors import UserCodeError
from attnprof.measure.memory import tensor_bytes
from attnprof.profiling.faults import free_memory, out_of_memory, out_of_memory_reason
from attnprof.profiling.isolate import call_isolated
from attnprof.profiling.progress import spinning
from attnprof.profiling.records import LayerStats, TimeStats
from attnprof.profiling.run import (
    CountingResult,
    Prepared,
    TimingResult,
    build_layers,
    counting_pass,
    prepare,
    restored_threads,
    timing_pass,
)
from attnprof.settings import Settings, settings_for
from attnprof.store import from_json_dict, timestamp, to_json_dict
from attnprof.targets.load import load_workload
from attnprof.targets.workload import Workload

MeasurePoint = Callable[[Config], Measurement]


def failure_status(exc: BaseException) -> MeasurementStatus | None:
    """How a failed run is recorded: `oom` for any allocation failure, `error` for other
    exceptions of the user's model at this configuration, None for attnprof's own errors."""
    if out_of_memory(exc) is not None:
        return "oom"
    return "error" if isinstance(exc, UserCodeError) else None


def count_features(workload: Workload, settings: Settings) -> PointFeatures:
    """The cost drivers of one configuration from a single counted step, without timing."""
    with restored_threads():
        prepared = prepare(workload, settings)
        counting = counting_pass(prepared)
    layers = build_layers(prepared.model, counting, None, settings.mode == "train")
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
    layers = build_layers(prepared.model, counting, timing, settings.mode == "train")
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
    with restored_threads():
        with spinning("building the model, counting operations and memory"):
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
            "attnprof.costmodel.measure:measure_target",
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


