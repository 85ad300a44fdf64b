"""NVML telemetry on CPU: pynvml replaced by autospecs of its real functions (tests/fake_nvml.py)."""

from __future__ import annotations

import time

import pynvml
import pytest
import torch

from attnprof.errors import NvmlError, UsageError
from attnprof.measure import nvml
from tests.fake_nvml import FakeGpu, FakeNvml

CUDA0 = torch.device("cuda:0")


def _measure(telemetry: nvml.Telemetry, seconds: float = 0.05, steps: int = 5) -> None:
    telemetry.window_start()
    time.sleep(seconds)
    telemetry.window_end(steps)


def test_no_driver_degrades_to_null_with_reason(monkeypatch):
    FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound()).install(monkeypatch, ["aaaa"])
    with nvml.Telemetry(CUDA0) as telemetry:
        _measure(telemetry)
    energy = telemetry.energy()
    assert energy.energy_j is None
    assert "no NVIDIA driver" in energy.reason
    assert telemetry.record() is None


def test_session_raises_attnprof_error_not_pynvml_error(monkeypatch):
    FakeNvml([], init_error=pynvml.NVMLError_DriverNotLoaded()).install(monkeypatch)
    with pytest.raises(NvmlError, match="driver is not loaded"), nvml.session():
        pass


def test_real_pynvml_without_driver_is_an_attnprof_error():
    # On this machine there is no NVIDIA driver: the real nvmlInit fails with LibraryNotFound.
    try:
        with nvml.session():
            gpus = nvml.list_gpus()
    except NvmlError as exc:
        assert exc.exit_code == 4
        assert str(exc)
    else:
        assert all(g.uuid for g, _ in gpus)


def test_cpu_device_never_touches_nvml(monkeypatch):
    fake = FakeNvml([FakeGpu("GPU-aaaa")])
    fake.install(monkeypatch)
    with nvml.Telemetry(torch.device("cpu")) as telemetry:
        _measure(telemetry)
    assert fake.inits == 0
    assert telemetry.energy().reason == nvml.NO_GPU_REASON


def test_energy_from_counter_per_step(monkeypatch):
    fake = FakeNvml([FakeGpu("GPU-aaaa", power_w=250.0, watts_per_counter_second=250.0)])
    fake.install(monkeypatch, ["aaaa"])
    with nvml.Telemetry(CUDA0, rate_hz=50) as telemetry:
        telemetry.window_start()
        time.sleep(0.1)
        telemetry.window_end(4)
        (start, end) = telemetry._window
    energy = telemetry.energy()
    assert energy.source == "counter"
    # Energy per step is the counter's advance (mJ) over the window, per step. The readings' own
    # counter values are compared, not 250 W × the window's clock time: on a busy machine the
    # sampler thread can be preempted between a reading's timestamp and its counter read.
    assert end.energy_mj > start.energy_mj
    assert energy.energy_j == pytest.approx((end.energy_mj - start.energy_mj) / 1000 / 4)
    record = telemetry.record()
    assert record.power_w == 250.0 and record.power_max_w == 250.0
    assert record.clocks.sm_mhz == 1755.0 and record.clocks.memory_mhz == 2619.0
    assert record.clocks.sm_max_mhz == 1980.0
    assert record.utilization_pct == 87.0
    assert record.temperature_max_c == 61.0
    assert record.energy_source == "counter"
    assert record.reasons == {}
    assert fake.shutdowns == fake.inits == 1


def test_no_energy_counter_integrates_power(monkeypatch):
    FakeNvml([FakeGpu("GPU-aaaa", power_w=100.0, watts_per_counter_second=None)]).install(
        monkeypatch, ["aaaa"]
    )
    with nvml.Telemetry(CUDA0, rate_hz=50) as telemetry:
        _measure(telemetry, seconds=0.1, steps=2)
        (start, end) = telemetry._window
    energy = telemetry.energy()
    assert energy.source == "integrated_power"
    # Constant 100 W integrated over the window, halved for two steps.
    assert energy.energy_j == pytest.approx(100.0 * (end.t - start.t) / 2, rel=1e-6)
    assert "not supported" in telemetry.record().reasons["energy_mj"]


def test_power_not_supported_keeps_other_readings(monkeypatch):
    gpu = FakeGpu("GPU-aaaa", power_supported=False, watts_per_counter_second=None)
    FakeNvml([gpu]).install(monkeypatch, ["aaaa"])
    with nvml.Telemetry(CUDA0) as telemetry:
        _measure(telemetry)
    energy = telemetry.energy()
    assert energy.energy_j is None
    assert "not supported" in energy.reason
    record = telemetry.record()
    assert record.power_w is None
    assert record.reasons["power_w"] == "not supported by this GPU"
    assert record.clocks.sm_mhz == 1755.0
    assert record.memory_used_max_bytes == 1 << 30


def test_mig_slice_reports_null_power_and_utilization(monkeypatch):
    # CUDA lists the MIG slice by its own UUID; NVML's index scan sees only the parent GPU.
    gpus = [FakeGpu("GPU-parent", mig_mode=True), FakeGpu("MIG-0123-slice", mig_slice=True)]
    FakeNvml(gpus).install(monkeypatch, ["0123-slice"])
    with nvml.Telemetry(CUDA0) as telemetry:
        _measure(telemetry)
    record = telemetry.record()
    assert record.gpu_uuid == "MIG-0123-slice"
    assert record.power_w is None and record.utilization_pct is None
    assert record.reasons["power_w"] == nvml.MIG_POWER_REASON
    assert record.reasons["utilization_pct"] == nvml.MIG_UTILIZATION_REASON
    assert record.memory_used_max_bytes == 1 << 30
    assert telemetry.energy().energy_j is None
    assert "MIG" in telemetry.energy().reason


def test_gpu_in_mig_mode_counts_as_mig(monkeypatch):
    fake = FakeNvml([FakeGpu("GPU-aaaa", mig_mode=True)])
    fake.install(monkeypatch)
    with nvml.session():
        ((info, _handle),) = nvml.list_gpus()
    assert info.mig


def test_devices_matched_by_uuid_not_index(monkeypatch):
    # NVML lists GPUs in PCI order; CUDA_VISIBLE_DEVICES=1 makes NVML's GPU 1 CUDA's device 0.
    first = FakeGpu("GPU-bbbb", name="NVIDIA A100-SXM4-80GB", power_w=111.0)
    second = FakeGpu("GPU-aaaa", name="NVIDIA H100 80GB HBM3", power_w=222.0)
    FakeNvml([first, second]).install(monkeypatch, ["aaaa"])
    with nvml.Telemetry(CUDA0) as telemetry:
        _measure(telemetry)
    record = telemetry.record()
    assert record.nvml_index == 1
    assert record.gpu_name == "NVIDIA H100 80GB HBM3"
    assert record.power_w == 222.0


def test_unknown_uuid_is_a_reason_not_a_crash(monkeypatch):
    FakeNvml([FakeGpu("GPU-bbbb")]).install(monkeypatch, ["ffff"])
    with nvml.Telemetry(CUDA0) as telemetry:
        _measure(telemetry)
    assert "no NVML device has the UUID ffff" in telemetry.energy().reason


def test_counter_that_does_not_advance_is_null_not_zero(monkeypatch):
    FakeNvml([FakeGpu("GPU-aaaa", watts_per_counter_second=0.0)]).install(monkeypatch, ["aaaa"])
    with nvml.Telemetry(CUDA0) as telemetry:
        _measure(telemetry)
    energy = telemetry.energy()
    assert energy.energy_j is None
    assert "did not advance" in energy.reason


def test_sampler_thread_collects_and_stops(monkeypatch):
    FakeNvml([FakeGpu("GPU-aaaa")]).install(monkeypatch)
    with nvml.session():
        ((info, handle),) = nvml.list_gpus()
        sampler = nvml.Sampler([nvml.DeviceReader(info, handle)], rate_hz=100).start()
        deadline = time.perf_counter() + 5
        while not sampler.samples and time.perf_counter() < deadline:
            time.sleep(0.01)
        samples = sampler.stop()
    assert samples and samples[0].power_w == 300.0
    assert not sampler._thread.is_alive()


@pytest.mark.parametrize("rate", [0, -1, 1000])
def test_sampler_rate_is_bounded(rate):
    with pytest.raises(UsageError, match="sampling rate"):
        nvml.Sampler([], rate_hz=rate)


def test_process_memory(monkeypatch):
    FakeNvml([FakeGpu("GPU-aaaa", processes=[(42, 5 << 20), (7, 1 << 20)])]).install(monkeypatch)
    with nvml.session():
        ((info, handle),) = nvml.list_gpus()
        reader = nvml.DeviceReader(info, handle)
        assert reader.process_memory(42) == 5 << 20
        assert reader.process_memory(99) is None


def test_integrate_power_trapezoid():
    from attnprof.measure.records import GpuSample

    samples = [
        GpuSample(t=0.0, nvml_index=0, power_w=100.0),
        GpuSample(t=1.0, nvml_index=0, power_w=200.0),
        GpuSample(t=3.0, nvml_index=0, power_w=None),
        GpuSample(t=2.0, nvml_index=0, power_w=200.0),
    ]
    # 1 s at a mean of 150 W, then 1 s at 200 W; the sample without a reading is skipped.
    assert nvml.integrate_power(samples) == pytest.approx(350.0)
    assert nvml.integrate_power(samples[:1]) is None


def test_normalize_uuid():
    assert nvml.normalize_uuid("GPU-58FF3B2B-aaaa") == "58ff3b2b-aaaa"
    assert nvml.normalize_uuid("MIG-1234") == "1234"
    assert nvml.normalize_uuid("58ff3b2b") == "58ff3b2b"


def test_torch_without_device_uuids_is_a_reason(monkeypatch):
    from types import SimpleNamespace
    from unittest import mock

    FakeNvml([FakeGpu("GPU-aaaa")]).install(monkeypatch)
    props = mock.create_autospec(torch.cuda.get_device_properties, return_value=SimpleNamespace(name="old"))
    monkeypatch.setattr(torch.cuda, "get_device_properties", props)
    with nvml.Telemetry(CUDA0) as telemetry:
        _measure(telemetry)
    assert "does not report CUDA device UUIDs" in telemetry.energy().reason


def test_driver_version(monkeypatch):
    FakeNvml([]).install(monkeypatch)
    with nvml.session():
        assert nvml.driver_version() == "550.54.15"
