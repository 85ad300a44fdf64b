"""Device peaks: datasheet lookup, roofline arithmetic, and a real CPU calibration round trip."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

from attnprof.errors import InputFileError, UsageError
from attnprof.machine import machine_info
from attnprof.measure import hardware
from attnprof.measure.records import Calibration, DeviceCalibration

CPU = torch.device("cpu")
CUDA = torch.device("cuda:0")


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200 SXM"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
        ("NVIDIA A100-SXM4-40GB", "A100 40GB SXM"),
        ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe"),
        ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", None),  # not L4, not L40S
        ("Tesla T4", None),
    ],
)
def test_find_spec(name, spec):
    found = hardware.find_spec(name)
    assert (found.name if found else None) == spec


def test_every_spec_is_complete_and_dense():
    for spec in hardware.GPU_SPECS:
        assert {"fp64", "fp32", "tf32", "fp16", "bf16"} <= set(spec.tflops), spec.name
        assert spec.memory_gbps > 0 and spec.interconnect in hardware.INTERCONNECTS
        # Tensor-core half precision is at least twice TF32 on every datacenter part.
        assert spec.tflops["bf16"] >= 2 * spec.tflops["tf32"] - 1e-9, spec.name


def _fake_gpu_name(monkeypatch, name: str) -> None:
    monkeypatch.setattr(
        torch.cuda, "get_device_name", mock.create_autospec(torch.cuda.get_device_name, return_value=name)
    )


def test_datasheet_peak_and_tf32(monkeypatch):
    _fake_gpu_name(monkeypatch, "NVIDIA H100 80GB HBM3")
    peak = hardware.peak_for(CUDA, "bf16")
    assert (peak.tflops, peak.memory_gbps, peak.source) == (989.5, 3350.0, "datasheet")
    assert hardware.peak_for(CUDA, "fp32").tflops == 67.0  # torch's default: IEEE fp32 matmuls
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    tf32 = hardware.peak_for(CUDA, "fp32")
    assert (tf32.math_mode, tf32.tflops) == ("tf32", 494.5)


def test_unknown_gpu_uses_calibration(monkeypatch):
    _fake_gpu_name(monkeypatch, "Tesla T4")
    assert "doctor --calibrate" in hardware.peak_for(CUDA, "fp16").reason
    measured = DeviceCalibration("Tesla T4", {"fp16": 40.0}, 250.0, {"fp16": 4096}, 1, "now")
    calibration = Calibration("abc", {"Tesla T4": measured})
    peak = hardware.peak_for(CUDA, "fp16", calibration)
    assert (peak.tflops, peak.memory_gbps, peak.source) == (40.0, 250.0, "calibrated")
    assert hardware.peak_for(CUDA, "bf16", calibration).reason == "bf16 was not calibrated on Tesla T4"


def test_cpu_without_calibration_has_a_reason():
    peak = hardware.peak_for(CPU, "fp32")
    assert peak.tflops is None and "attnprof doctor --calibrate" in peak.reason
    assert hardware.roofline_bound(10**9, 10**6, peak) is None
    assert hardware.percent_of_peak(1.0, peak) is None


def test_roofline_bound_h100(monkeypatch):
    _fake_gpu_name(monkeypatch, "NVIDIA H100 80GB HBM3")
    peak = hardware.peak_for(CUDA, "bf16")
    # Ridge: 989.5e12 FLOP/s / 3350e9 B/s ≈ 295 FLOP per byte.
    n = 4096
    gemm_flops, gemm_bytes = 2 * n**3, 3 * n * n * 2  # ≈ 1365 FLOP/B
    assert hardware.roofline_bound(gemm_flops, gemm_bytes, peak) == "compute"
    add_flops, add_bytes = n * n, 3 * n * n * 2  # 1/6 FLOP/B
    assert hardware.roofline_bound(add_flops, add_bytes, peak) == "memory"
    assert hardware.roofline_bound(10, 0, peak) is None
    assert hardware.percent_of_peak(494.75, peak) == pytest.approx(50.0)


def test_cpu_calibration_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv(hardware.CACHE_DIR_ENV, str(tmp_path))
    machine = machine_info()
    measured = hardware.calibrate(CPU, dtypes=("fp32",), budget_s=0.05)
    assert measured.device == "cpu"
    assert measured.gemm_tflops["fp32"] > 0 and measured.copy_gbps > 0
    assert measured.gemm_size["fp32"] >= 256
    path = hardware.save_calibration(measured, machine)
    assert path == tmp_path / f"calibration-{machine.fingerprint()}.json"
    other = DeviceCalibration("NVIDIA L4", {"fp32": 20.0}, 250.0, {"fp32": 8192}, 1, "now")
    hardware.save_calibration(other, machine)  # merges, keeps the CPU entry
    loaded = hardware.load_calibration(machine)
    assert set(loaded.devices) == {"cpu", "NVIDIA L4"}
    assert loaded.devices["cpu"].gemm_tflops == measured.gemm_tflops
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left
    peak = hardware.peak_for(CPU, "fp32", loaded)
    assert peak.source == "calibrated" and peak.tflops == measured.gemm_tflops["fp32"]


def test_corrupt_calibration_file_is_an_input_error(tmp_path, monkeypatch):
    monkeypatch.setenv(hardware.CACHE_DIR_ENV, str(tmp_path))
    machine = machine_info()
    hardware.calibration_path(machine).write_text(json.dumps({"schema_version": 1, "devices": {}}))
    with pytest.raises(InputFileError, match="machine_fingerprint"):
        hardware.load_calibration(machine)
    hardware.calibration_path(machine).write_text("{not json")
    with pytest.raises(InputFileError, match="corrupt"):
        hardware.load_calibration(machine)


def test_calibrate_rejects_unknown_dtype():
    with pytest.raises(UsageError, match="int8"):
        hardware.calibrate(CPU, dtypes=("int8",))


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv(hardware.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert hardware.cache_dir() == tmp_path / "attnprof"
