"""Sweep design, the resumable measurement store and the sweep loop (no model runs here)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from attnprof.costmodel.design import design_points, parse_duration
from attnprof.costmodel.knobs import Knob, default_knobs, parse_knob
from attnprof.costmodel.measurements import MeasurementStore, measurement_key, store_path
from attnprof.costmodel.records import Measurement
from attnprof.costmodel.sweep import run_sweep
from attnprof.errors import InputFileError, UsageError
from attnprof.profiling.records import TimeStats

KNOBS = {
    "batch_size": Knob("batch_size", low=1, high=8),
    "seq_len": Knob("seq_len", low=64, high=512),
    "dtype": Knob("dtype", choices=("fp32", "bf16")),
    "backend": Knob("backend", choices=("math", "flash")),
}


def fake_measurement(config: dict[str, int | str], status: str = "ok") -> Measurement:
    return Measurement(
        key="set-by-the-loop",
        config={},
        status=status,  # type: ignore[arg-type]
        created="2026-01-01T00:00:00+00:00",
        workload_fingerprint="w",
        machine_fingerprint="m",
        time_ms=TimeStats.from_samples([1.0, 2.0, 3.0]) if status == "ok" else None,
    )


def test_design_has_corners_then_centre_under_every_combination() -> None:
    points = design_points(KNOBS, max_points=24)
    assert len(points) == 24
    shapes = list(dict.fromkeys((p["batch_size"], p["seq_len"]) for p in points))
    assert len(shapes) == 6
    assert set(shapes[:4]) == {(1, 64), (1, 512), (8, 64), (8, 512)}
    assert shapes[4] == (3, 181)  # the centre on a log scale: sqrt(1*8), sqrt(64*512)
    for shape in shapes:
        combos = {(p["dtype"], p["backend"]) for p in points if (p["batch_size"], p["seq_len"]) == shape}
        assert combos == set(itertools.product(("fp32", "bf16"), ("math", "flash")))
    # Shapes come first in the order measured, so a stopped sweep still has every combination.
    assert {(p["dtype"], p["backend"]) for p in points[:4]} == set(
        itertools.product(("fp32", "bf16"), ("math", "flash"))
    )


def test_design_fills_space_with_distinct_shapes_inside_the_ranges() -> None:
    points = design_points(KNOBS, max_points=60)
    shapes = {(p["batch_size"], p["seq_len"]) for p in points}
    assert len(shapes) == 15
    assert all(1 <= b <= 8 and 64 <= s <= 512 for b, s in shapes)
    assert design_points(KNOBS, max_points=60) == points  # deterministic


def test_design_stops_at_the_distinct_shapes_a_range_has() -> None:
    knobs = {"batch_size": Knob("batch_size", low=1, high=2), "seq_len": Knob("seq_len", low=128, high=128)}
    assert sorted((p["batch_size"], p["seq_len"]) for p in design_points(knobs, max_points=10)) == [
        (1, 128),
        (2, 128),
    ]


def test_design_refuses_a_budget_below_the_combinations() -> None:
    with pytest.raises(UsageError, match="at least 4"):
        design_points(KNOBS, max_points=3)


def test_knob_parsing() -> None:
    assert parse_knob("seq_len", "64:1024") == Knob("seq_len", low=64, high=1024)
    assert parse_knob("batch_size", "4") == Knob("batch_size", low=4, high=4)
    assert parse_knob("dtype", "fp32,bf16").choices == ("fp32", "bf16")
    assert parse_knob("threads", "1,2").choices == (1, 2)
    for name, text, message in [
        ("seq_len", "512:64", "1 <= low <= high"),
        ("seq_len", "a:b", "not an integer"),
        ("batch_size", "0", "positive"),
        ("dtype", "fp8", "not one of"),
        ("backend", "flash,flash", "repeated"),
        ("heads", "8", "unknown knob"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_knob(name, text)
    assert default_knobs("cpu", threads=2)["backend"].choices == ("math", "flash")


def test_durations() -> None:
    assert parse_duration("5m") == 300
    assert parse_duration("90") == 90
    assert parse_duration("1.5h") == 5400
    for bad in ("", "5 minutes", "-1s", "0"):
        with pytest.raises(UsageError, match="time-budget"):
            parse_duration(bad)


def test_store_round_trip_and_torn_last_line(tmp_path: Path) -> None:
    store = MeasurementStore(store_path(tmp_path, "zoo:decoder", "abc", "m1"))
    first = fake_measurement({})
    first.key = "one"
    store.append(first)
    with store.path.open("a") as handle:
        handle.write('{"key": "two", "conf')  # a write cut short by a crash
    assert list(store.load()) == ["one"]
    second = fake_measurement({}, status="oom")
    second.key = "three"
    store.append(second)  # the torn tail is cut before appending
    assert list(store.load()) == ["one", "three"]
    assert all(json.loads(line) for line in store.path.read_text().splitlines())
    assert store.path.parent.name == "zoo_decoder-abc"


def test_store_refuses_a_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('not json\n{"key": "x"}\n')
    with pytest.raises(InputFileError, match=r"m.jsonl:1: corrupt"):
        MeasurementStore(path).load()
    path.write_text('{"key": "x", "schema_version": 1}\n')
    with pytest.raises(InputFileError, match=r"m.jsonl, record 1: missing field"):
        MeasurementStore(path).load()


class SweepCrashed(Exception):
    pass


def test_sweep_resumes_without_measuring_again(tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "m.jsonl")
    points = design_points(KNOBS, max_points=12)
    measured: list[dict[str, int | str]] = []
    resumed = False

    def measure(config: dict[str, int | str]) -> Measurement:
        measured.append(config)
        if len(measured) == 5 and not resumed:
            raise SweepCrashed  # the process dies during the fifth point
        return fake_measurement(config)

    with pytest.raises(SweepCrashed):
        run_sweep(points, measure, store)
    assert len(store.load()) == 4
    measured.clear()
    resumed = True
    outcome = run_sweep(points, measure, store)
    assert outcome.reused == 4 and outcome.measured == 8
    assert measured == points[4:]
    assert [m.config for m in outcome.measurements] == points
    assert all(m.key == measurement_key(m.config) for m in outcome.measurements)


def test_infeasible_points_are_stored_and_not_retried(tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "m.jsonl")
    points = design_points(KNOBS, max_points=4)

    def measure(config: dict[str, int | str]) -> Measurement:
        return fake_measurement(config, status="oom" if config["backend"] == "math" else "ok")

    run_sweep(points, measure, store)
    again = run_sweep(points, lambda config: pytest.fail("measured again"), store)
    assert sorted(m.status for m in again.measurements) == ["ok", "ok", "oom", "oom"]


def test_time_budget_stops_starting_points(tmp_path: Path) -> None:
    now = [0.0]

    def measure(config: dict[str, int | str]) -> Measurement:
        now[0] += 10.0  # each point takes 10 s of the fake clock
        return fake_measurement(config)

    outcome = run_sweep(
        design_points(KNOBS, 12),
        measure,
        MeasurementStore(tmp_path / "m.jsonl"),
        time_budget_s=35.0,
        clock=lambda: now[0],
    )
    assert outcome.measured == 3  # a fourth would end at 40 s
    assert "time budget" in outcome.stopped and len(outcome.skipped) == 9


SWEEP_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from attnprof.costmodel.records import Measurement
    from attnprof.profiling.records import TimeStats
    from attnprof.costmodel.knobs import Knob
    from attnprof.costmodel.design import design_points
    from attnprof.costmodel.measurements import MeasurementStore
    from attnprof.costmodel.sweep import run_sweep

    knobs = {"batch_size": Knob("batch_size", low=1, high=8), "seq_len": Knob("seq_len", low=64, high=512)}
    log = open(sys.argv[2], "a")

    def measure(config):
        log.write(f"{config['batch_size']},{config['seq_len']}\\n"); log.flush()
        time.sleep(float(sys.argv[3]))
        return Measurement(key="", config={}, status="ok", created="now", workload_fingerprint="w",
                           machine_fingerprint="m", time_ms=TimeStats.from_samples([1.0]))

    run_sweep(design_points(knobs, 8), measure, MeasurementStore(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_resume_after_a_killed_sweep_measures_nothing_twice(tmp_path: Path) -> None:
    store_file, log_file = tmp_path / "m.jsonl", tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-c", SWEEP_SCRIPT, str(store_file), str(log_file)]
    process = subprocess.Popen([*command, "0.3"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(MeasurementStore(store_file).load()) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored = MeasurementStore(store_file).load()
    assert 3 <= len(stored) < 8
    started_before = log_file.read_text().splitlines()
    subprocess.run([*command, "0"], env=env, check=True, timeout=120)
    started_after = log_file.read_text().splitlines()[len(started_before) :]
    assert len(MeasurementStore(store_file).load()) == 8
    # Only the points that never reached the store are measured again.
    assert len(started_after) == 8 - len(stored)
    assert set(started_after).isdisjoint(f"{m.config['batch_size']},{m.config['seq_len']}" for m in stored.values())
