"""GPU code paths on a CPU: CUDA event timing, allocator memory and NVML telemetry in whole profiles.

torch.cuda and pynvml functions are replaced by autospecs of the real ones (wrong arguments fail
as they would on a GPU); the model itself runs for real on the CPU.
"""

from __future__ import annotations

from unittest import mock

import pynvml
import pytest
import torch

from attnprof.machine import machine_info
from attnprof.measure import hardware, nvml
from attnprof.measure.memory import CudaAllocatorTracker
from attnprof.measure.records import DeviceCalibration
from attnprof.measure.scopes import ModuleScopes
from attnprof.measure.timing import CudaEventLayerTimer
from attnprof.profiling import run as profiler
from attnprof.profiling.records import Profile
from attnprof.settings import resolve_settings
from attnprof.store import from_json_dict, to_json_dict
from attnprof.targets.load import load_workload
from tests.fake_cuda import Pair, fake_cuda_events
from tests.fake_nvml import FakeGpu, FakeNvml

CUDA = torch.device("cuda:0")


def test_cuda_event_timer_inclusive_and_self_times(monkeypatch):
    fake_cuda_events(monkeypatch)
    model = Pair()
    timer = CudaEventLayerTimer(CUDA)
    with ModuleScopes(model, backward=False) as scopes:
        scopes.add_listener(timer)
        model(torch.randn(2, 4))
    # Events in record order: root 0, a 1-2, b 3-4, root 5 (1 ms per tick).
    times = timer.times
    assert times.inclusive[("", "forward")] == pytest.approx(0.005)
    assert times.inclusive[("a", "forward")] == pytest.approx(0.001)
    assert times.self_time[("", "forward")] == pytest.approx(0.003)
    assert times.calls[("b", "forward")] == 1
    timer.reset()
    with ModuleScopes(model, backward=False) as scopes:
        scopes.add_listener(timer)
        model(torch.randn(2, 4))
    assert timer.times.inclusive[("", "forward")] == pytest.approx(0.005)  # events reused, times fresh
    assert torch.cuda.Event.call_count == 6  # six events created once, reused in the second step


class FakeAllocator:
    """The CUDA caching allocator's counters, driven by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, level: int) -> None:
        self.level = self.peak = level
        for name, impl in [("memory_allocated", lambda device=None: self.level),
                           ("max_memory_allocated", lambda device=None: self.peak),
                           ("reset_peak_memory_stats", lambda device=None: setattr(self, "peak", self.level))]:
            monkeypatch.setattr(torch.cuda, name, mock.create_autospec(getattr(torch.cuda, name), side_effect=impl))

    def allocate(self, nbytes: int) -> None:
        self.level += nbytes
        self.peak = max(self.peak, self.level)


def test_allocator_tracker_nested_peaks(monkeypatch):
    allocator = FakeAllocator(monkeypatch, level=100)
    tracker = CudaAllocatorTracker(CUDA)
    tracker.start()
    tracker.on_enter("", "forward")
    allocator.allocate(50)  # 150
    tracker.on_enter("a", "forward")
    allocator.allocate(30)  # 180: a's peak, 30 above its entry at 150
    allocator.allocate(-30)
    tracker.on_exit("a", "forward")
    allocator.allocate(100)  # 250: the root's peak, 150 above its entry at 100
    allocator.allocate(-120)
    tracker.on_exit("", "forward")
    assert tracker.finish() == 250
    assert dict(tracker.module_peak) == {"a": 30, "": 150}


def _profile(**overrides: object) -> Profile:
    workload = load_workload("zoo:decoder")
    settings = resolve_settings(workload, {"warmup": 1, "repeats": 2, "batch_size": 1, "seq_len": 16,
                                                    **overrides})
    return profiler.run_profile(workload, settings)


@pytest.fixture
def nvml_on_cpu(monkeypatch):
    """Profiles on the CPU with NVML telemetry for a (fake) CUDA device 0 whose UUID is 'aaaa'."""

    class TelemetryForCuda0(nvml.Telemetry):
        def __init__(self, device: torch.device, rate_hz: float = nvml.DEFAULT_RATE_HZ) -> None:
            super().__init__(CUDA, rate_hz=50.0)

    monkeypatch.setattr(profiler, "Telemetry", TelemetryForCuda0)

    def install(fake: FakeNvml) -> FakeNvml:
        fake.install(monkeypatch, ["aaaa"])
        return fake

    return install


def _intact(profile: Profile) -> None:
    """Everything but the GPU telemetry is there, and the JSON round-trips."""
    assert profile.totals.time_ms.median > 0
    assert all(layer.time_ms is not None for layer in profile.layers)
    assert profile.layer("layers.0.attn").attention.flops > 0
    assert from_json_dict(Profile, to_json_dict(profile)) == profile


def test_profile_with_energy_counter(nvml_on_cpu):
    nvml_on_cpu(FakeNvml([FakeGpu("GPU-bbbb", power_w=50.0), FakeGpu("GPU-aaaa", power_w=300.0)]))
    profile = _profile()
    _intact(profile)
    assert profile.totals.energy_j > 0 and profile.totals.energy_reason is None
    assert profile.totals.power_w == 300.0  # NVML's second GPU: matched by UUID, not index
    assert profile.telemetry.nvml_index == 1 and profile.telemetry.energy_source == "counter"
    assert profile.telemetry.clocks.sm_mhz == 1755.0


@pytest.mark.parametrize(
    ("gpus", "init_error", "reason"),
    [
        ([], pynvml.NVMLError_LibraryNotFound(), "no NVIDIA driver"),
        ([FakeGpu("GPU-aaaa", power_supported=False, watts_per_counter_second=None)], None, "not supported"),
        ([FakeGpu("GPU-parent", mig_mode=True), FakeGpu("MIG-aaaa", mig_slice=True)], None, "MIG slice"),
        ([FakeGpu("GPU-bbbb")], None, "no NVML device has the UUID aaaa"),
    ],
    ids=["no-driver", "power-not-supported", "mig", "uuid-not-found"],
)
def test_profile_degrades_to_null_energy_with_reason(nvml_on_cpu, gpus, init_error, reason):
    nvml_on_cpu(FakeNvml(gpus, init_error=init_error))
    profile = _profile()
    _intact(profile)
    assert profile.totals.energy_j is None and profile.totals.power_w is None
    assert reason in profile.totals.energy_reason


def test_cpu_profile_uses_calibrated_peak_for_bound():
    # Known figures: 0.1 TFLOP/s and 10 GB/s put the ridge at 10 FLOPs per byte.
    calibrated = DeviceCalibration("cpu", {"fp32": 0.1}, 10.0, {"fp32": 1024}, torch.get_num_threads(), "now")
    hardware.save_calibration(calibrated, machine_info())
    profile = _profile(seq_len=64)
    assert (profile.peak.tflops, profile.peak.source) == (0.1, "calibrated")
    for layer in profile.layers:
        if layer.bytes > 0:
            assert layer.bound == ("compute" if layer.flops / layer.bytes >= 10 else "memory"), layer.name
        else:
            assert layer.bound is None
    assert {layer.bound for layer in profile.layers} >= {"compute", "memory"}


def test_cpu_profile_without_calibration_says_why():
    profile = _profile()
    assert profile.peak.tflops is None and "doctor --calibrate" in profile.peak.reason
    assert all(layer.bound is None for layer in profile.layers)
    assert profile.timing_source == "wall"
    assert profile.totals.energy_reason == nvml.NO_GPU_REASON


def test_step_time_on_a_gpu_comes_from_events(monkeypatch):
    fake_cuda_events(monkeypatch)
    monkeypatch.setattr(torch.cuda, "synchronize", mock.create_autospec(torch.cuda.synchronize))
    from attnprof.measure.timing import time_call

    assert time_call(lambda: None, CUDA) == pytest.approx(0.001)  # start and end event: one tick
    assert torch.cuda.synchronize.call_count >= 2  # before the start event, and after the end
