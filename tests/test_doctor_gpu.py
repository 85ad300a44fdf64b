"""doctor's GPU facts (NVML, CUPTI, peaks) and `doctor --calibrate`: fake NVML, real CPU calibration."""

from __future__ import annotations

import json
from unittest import mock

import pynvml
import pytest
import torch

from attnprof.cli.app import app
from attnprof.doctor import environment as doctor
from attnprof.machine import machine_info
from attnprof.measure import hardware
from attnprof.measure.records import DeviceCalibration
from tests.fake_nvml import FakeGpu, FakeNvml


def test_nvml_section_lists_gpus_and_missing_readings(monkeypatch):
    gpus = [FakeGpu("GPU-aaaa"), FakeGpu("GPU-bbbb", name="NVIDIA L4", power_supported=False,
                                         watts_per_counter_second=None)]
    FakeNvml(gpus).install(monkeypatch)
    driver, first, second = doctor.nvml_section()
    assert (driver.status, driver.detail) == ("ok", "NVIDIA driver 550.54.15, 2 GPU(s)")
    assert first.status == "ok" and "NVIDIA H100 80GB HBM3 (GPU-aaaa)" in first.detail
    assert second.status == "warn" and "power_w: not supported by this GPU" in second.detail
    assert "energy_mj: not supported" in second.detail and second.fix


def test_nvml_section_without_driver(monkeypatch):
    FakeNvml([], init_error=pynvml.NVMLError_LibraryNotFound()).install(monkeypatch)
    (finding,) = doctor.nvml_section()
    assert finding.status == "info"  # no GPU in torch either: nothing is lost
    assert "no NVIDIA driver" in finding.detail
    monkeypatch.setattr(torch.cuda, "is_available", mock.create_autospec(torch.cuda.is_available, return_value=True))
    (finding,) = doctor.nvml_section()
    assert finding.status == "problem" and "install the NVIDIA driver" in finding.fix


def test_cupti_on_a_cpu_machine_is_info():
    (finding,) = doctor.cupti_section()
    assert finding.status == "info" and "CPU ops" in finding.detail


def test_peaks_section_before_and_after_calibration():
    (before,) = doctor.peaks_section()
    assert before.status == "warn" and "doctor --calibrate" in before.fix
    measured = DeviceCalibration("cpu", {"fp32": 0.125}, 9.5, {"fp32": 1024}, torch.get_num_threads(), "today")
    hardware.save_calibration(measured, machine_info())
    (after,) = doctor.peaks_section()
    assert after.status == "ok" and "fp32 0.125 TFLOP/s, copy 9.5 GB/s" in after.detail


def test_corrupt_calibration_is_a_problem_not_a_crash():
    hardware.calibration_path(machine_info()).parent.mkdir(parents=True, exist_ok=True)
    hardware.calibration_path(machine_info()).write_text("{broken")
    (finding,) = doctor.peaks_section()
    assert finding.status == "problem" and "corrupt" in finding.detail


def test_calibrate_stores_figures_and_reports_them():
    (finding,) = doctor.calibrate([torch.device("cpu")], budget_s=0.05)
    assert finding.section == "calibration" and "saved to" in finding.detail
    assert hardware.load_calibration(machine_info()).devices["cpu"].copy_gbps > 0


@pytest.mark.slow
def test_doctor_calibrate_cli_then_profile_has_peak_and_bound(runner):
    result = runner.invoke(app, ["doctor", "--calibrate", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    findings = json.loads(result.stdout)["findings"]
    assert findings[0]["section"] == "calibration" and findings[0]["name"] == "cpu"
    assert any(f["section"] == "peaks" and f["status"] == "ok" for f in findings)
    profile = runner.invoke(app, ["profile", "--threads", "1", "--batch-size", "1", "--seq-len", "16",
                                  "--repeats", "2", "--warmup", "1", "--json", "--no-save"])
    assert profile.exit_code == 0, profile.output
    data = json.loads(profile.stdout)
    assert data["peak"]["source"] == "calibrated" and data["peak"]["tflops"] > 0
    assert {layer["bound"] for layer in data["layers"]} & {"compute", "memory"}


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--device", "cpu"], "only apply with --calibrate"), (["--calibrate", "--threads", "0"], "--threads"),
     (["--calibrate", "--device", "tpu"], "--device")],
)
def test_doctor_bad_flags_exit_2(runner, args, message):
    result = runner.invoke(app, ["doctor", *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_calibrate_on_missing_gpu_exits_4(runner):
    result = runner.invoke(app, ["doctor", "--calibrate", "--device", "cuda"])
    assert result.exit_code == 4
    assert "no CUDA GPU" in result.stderr
