"""`attnprof doctor`'s facts: real probes on this machine, CUDA situations through autospec mocks."""

from __future__ import annotations

import importlib.metadata
import types
from unittest import mock

import pytest
import torch

from attnprof.doctor import environment as doctor
from attnprof.doctor.records import DoctorReport
from attnprof.store import from_json_dict, to_json_dict


def by_name(findings, section: str) -> dict[str, object]:
    return {f.name: f for f in findings if f.section == section}


def test_sdpa_backends_are_tried_for_real_on_cpu() -> None:
    sdpa = by_name(doctor.sdpa_section(), "sdpa")
    # On CPU, PyTorch runs only the math and flash kernels (docs/architecture.md, "Facts about PyTorch").
    assert sdpa["cpu math"].status == "ok" and sdpa["cpu flash"].status == "ok"
    assert sdpa["cpu efficient"].status == "info" and sdpa["cpu cudnn"].status == "info"


def test_probe_reports_torchs_reason() -> None:
    assert doctor.probe_sdpa("cpu", "math") is None
    reason = doctor.probe_sdpa("cpu", "efficient")
    assert reason and "backend" in reason.lower()


def test_a_broken_reference_kernel_is_a_problem_with_a_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "probe_sdpa", lambda device, backend: "boom" if backend == "math" else None)
    math_finding = by_name(doctor.sdpa_section(), "sdpa")["cpu math"]
    assert math_finding.status == "problem" and "boom" in math_finding.detail and math_finding.fix


def test_cpu_only_torch_without_a_driver_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(doctor, "_nvidia_driver_present", lambda: False)
    cuda = by_name(doctor.torch_section(), "torch")["cuda"]
    assert cuda.status == "info"


def test_cpu_only_torch_next_to_a_driver_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(doctor, "_nvidia_driver_present", lambda: True)
    cuda = by_name(doctor.torch_section(), "torch")["cuda"]
    assert cuda.status == "problem" and "CUDA build of torch" in cuda.fix


def test_cuda_build_without_a_usable_gpu_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", mock.create_autospec(torch.cuda.is_available, return_value=False))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cuda = by_name(doctor.torch_section(), "torch")["cuda"]
    assert cuda.status == "problem" and "CUDA_VISIBLE_DEVICES" in cuda.fix and "nvidia-smi" in cuda.fix


def test_gpus_are_listed_with_their_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", mock.create_autospec(torch.cuda.is_available, return_value=True))
    monkeypatch.setattr(torch.cuda, "device_count", mock.create_autospec(torch.cuda.device_count, return_value=2))
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        mock.create_autospec(torch.cuda.get_device_properties, return_value=props),
    )
    gpus = by_name(doctor.gpu_section(), "gpu")
    assert list(gpus) == ["cuda:0", "cuda:1"]
    assert "H100" in gpus["cuda:0"].detail and "9.0" in gpus["cuda:0"].detail and "80.0 GiB" in gpus["cuda:0"].detail
    assert doctor.sdpa_devices() == ["cpu", "cuda:0", "cuda:1"]


def test_missing_transformers_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "transformers":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    (finding,) = doctor.transformers_section()
    assert finding.status == "warn" and finding.fix == "pip install 'attnprof[hf]'"


def test_gather_round_trips_through_json() -> None:
    report = doctor.gather()
    sections = {f.section for f in report.findings}
    assert {"torch", "sdpa", "transformers"} <= sections
    assert from_json_dict(DoctorReport, to_json_dict(report)) == report
    assert all(f.fix for f in report.problems())
