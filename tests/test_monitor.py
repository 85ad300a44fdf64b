"""`attnprof monitor` sampling loop: fake NVML (autospecs of pynvml), real processes."""

from __future__ import annotations

import io
import os
import sys

import pytest
from rich.console import Console

from attnprof.doctor.monitor import MonitorOptions, run_monitor
from attnprof.doctor.records import MonitorRecording
from attnprof.errors import EnvironmentUnsupported, UsageError
from attnprof.report.monitor import LiveMonitor, gpu_table
from attnprof.store import read_record
from tests.fake_nvml import FakeGpu, FakeNvml


def _collect():
    ticks = []
    return ticks, lambda gpus, samples, status: ticks.append((gpus, samples, status))


def test_monitor_records_every_gpu_for_a_duration(monkeypatch, tmp_path):
    FakeNvml([FakeGpu("GPU-aaaa"), FakeGpu("GPU-bbbb", name="NVIDIA L4", power_w=60.0)]).install(monkeypatch)
    ticks, on_tick = _collect()
    out = tmp_path / "rec.json"
    code = run_monitor(MonitorOptions(interval_s=0.1, duration_s=0.25, record=out), on_tick)
    assert code == 0
    assert len(ticks) >= 2
    recording = read_record(out, MonitorRecording)
    assert [g.name for g in recording.gpus] == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]
    assert len(recording.samples) == 2 * len(ticks)
    assert {s.power_w for s in recording.samples} == {300.0, 60.0}
    assert recording.pid is None and recording.exit_code is None


def test_monitor_launched_command_passes_its_exit_code(monkeypatch, tmp_path):
    child = [sys.executable, "-c", "import time; time.sleep(0.3); raise SystemExit(3)"]
    fake = FakeNvml([FakeGpu("GPU-aaaa")])
    fake.install(monkeypatch)
    ticks, on_tick = _collect()
    out = tmp_path / "rec.json"
    code = run_monitor(MonitorOptions(interval_s=0.1, command=child, record=out), on_tick)
    assert code == 3
    assert ticks[-1][2].endswith("(exited 3)")
    recording = read_record(out, MonitorRecording)
    assert recording.command == child and recording.exit_code == 3 and recording.pid


def test_monitor_reports_the_watched_process_memory(monkeypatch):
    me = os.getpid()
    FakeNvml([FakeGpu("GPU-aaaa", processes=[(me, 3 << 30)])]).install(monkeypatch)
    ticks, on_tick = _collect()
    run_monitor(MonitorOptions(interval_s=0.1, duration_s=0.1, pid=me), on_tick)
    assert ticks[0][1][0].process_memory_bytes == 3 << 30
    assert ticks[0][2] == f"PID {me} (running)"


def test_monitor_without_gpus_is_exit_4(monkeypatch):
    FakeNvml([]).install(monkeypatch)
    with pytest.raises(EnvironmentUnsupported, match="NVML found none") as info:
        run_monitor(MonitorOptions(duration_s=1), lambda *a: None)
    assert info.value.exit_code == 4


def test_monitor_on_this_machine_without_driver_is_exit_4():
    # The real pynvml: this machine has no NVIDIA driver (where one exists, it lists its GPUs).
    try:
        run_monitor(MonitorOptions(interval_s=0.1, duration_s=0.1), lambda *a: None)
    except EnvironmentUnsupported as exc:
        assert "needs an NVIDIA GPU" in str(exc) and exc.exit_code == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval_s": 0.01}, "--interval"),
        ({"duration_s": 0}, "--duration"),
        ({"pid": 1, "command": ["true"]}, "not both"),
        ({"pid": 2**22 + 12345}, "no such process"),
    ],
)
def test_bad_monitor_options(options, message):
    with pytest.raises(UsageError, match=message):
        MonitorOptions(**options)


def test_missing_command_is_a_usage_error(monkeypatch):
    FakeNvml([FakeGpu("GPU-aaaa")]).install(monkeypatch)
    with pytest.raises(UsageError, match="cannot run 'no-such-command-attnprof'"):
        run_monitor(MonitorOptions(command=["no-such-command-attnprof"]), lambda *a: None)


def test_rendering_plain_and_table(monkeypatch):
    FakeNvml([FakeGpu("GPU-aaaa", power_supported=False)]).install(monkeypatch)
    ticks, on_tick = _collect()
    run_monitor(MonitorOptions(interval_s=0.1, duration_s=0.1), on_tick)
    gpus, samples, status = ticks[0]
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=False)
    with LiveMonitor(console) as live:
        live.update(gpus, samples, status)
    line = buffer.getvalue()
    assert "NVIDIA H100 80GB HBM3" in line and "util 87%" in line and "power - " in line
    wide = Console(file=io.StringIO(), width=140)
    wide.print(gpu_table(gpus, samples, status))
    text = wide.file.getvalue()
    assert "1755" in text and "1.0/80.0" in text
