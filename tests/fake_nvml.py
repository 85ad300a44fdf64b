"""A fake NVML for CPU tests: every pynvml function used by attnprof is replaced by an autospec of
the real one (so a call with the wrong arguments fails as it would against the driver), answering
from a list of fake GPUs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pynvml
import torch


@dataclass
class FakeGpu:
    uuid: str  # NVML form, "GPU-…"
    name: str = "NVIDIA H100 80GB HBM3"
    power_w: float = 300.0
    watts_per_counter_second: float | None = 300.0  # None: no total-energy counter
    power_supported: bool = True
    mig_slice: bool = False  # a MIG slice: NVML's index scan skips it, its UUID finds it
    mig_mode: bool | None = None  # None: the GPU does not support MIG at all
    memory_total: int = 80 << 30
    memory_used: int = 1 << 30
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)
    started: float = field(default_factory=time.perf_counter)


def _not_supported() -> pynvml.NVMLError:
    return pynvml.NVMLError_NotSupported()


class FakeNvml:
    """Install with `install(monkeypatch)`; `init_error` makes nvmlInit fail like a missing driver."""

    def __init__(self, gpus: list[FakeGpu], init_error: Exception | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    def listed(self) -> list[FakeGpu]:
        return [gpu for gpu in self.gpus if not gpu.mig_slice]

    def _gpu(self, handle: Any) -> FakeGpu:
        assert isinstance(handle, FakeGpu), f"not a device handle: {handle!r}"
        return handle

    def implementations(self) -> dict[str, Any]:
        def init() -> None:
            if self.init_error is not None:
                raise self.init_error
            self.inits += 1

        def shutdown() -> None:
            self.shutdowns += 1

        def by_uuid(uuid: str) -> FakeGpu:
            for gpu in self.gpus:
                if gpu.uuid == uuid:
                    return gpu
            raise pynvml.NVMLError_NotFound()

        def power(handle: Any) -> int:
            gpu = self._gpu(handle)
            if not gpu.power_supported or gpu.mig_slice:
                raise _not_supported()
            return int(gpu.power_w * 1000)

        def energy(handle: Any) -> int:
            gpu = self._gpu(handle)
            if gpu.watts_per_counter_second is None or gpu.mig_slice:
                raise _not_supported()
            return int((time.perf_counter() - gpu.started) * gpu.watts_per_counter_second * 1000) + 10**6

        def utilization(handle: Any) -> SimpleNamespace:
            if self._gpu(handle).mig_slice:
                raise _not_supported()
            return SimpleNamespace(gpu=87, memory=40)

        def clock(handle: Any, clock_type: int) -> int:
            self._gpu(handle)
            return {pynvml.NVML_CLOCK_SM: 1755, pynvml.NVML_CLOCK_MEM: 2619}[clock_type]

        def max_clock(handle: Any, clock_type: int) -> int:
            self._gpu(handle)
            return {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}[clock_type]

        def temperature(handle: Any, sensor: int) -> int:
            assert sensor == pynvml.NVML_TEMPERATURE_GPU
            self._gpu(handle)
            return 61

        def memory(handle: Any, version: Any = None) -> SimpleNamespace:
            gpu = self._gpu(handle)
            return SimpleNamespace(
                total=gpu.memory_total, used=gpu.memory_used, free=gpu.memory_total - gpu.memory_used
            )

        def is_mig(handle: Any) -> int:
            return int(self._gpu(handle).mig_slice)

        def mig_mode(handle: Any) -> list[int]:
            gpu = self._gpu(handle)
            if gpu.mig_mode is None:
                raise _not_supported()
            return [int(gpu.mig_mode), int(gpu.mig_mode)]

        def processes(handle: Any) -> list[SimpleNamespace]:
            return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self._gpu(handle).processes]

        return {
            "nvmlInit": init,
            "nvmlShutdown": shutdown,
            "nvmlSystemGetDriverVersion": lambda: "550.54.15",
            "nvmlDeviceGetCount": lambda: len(self.listed()),
            "nvmlDeviceGetHandleByIndex": lambda index: self.listed()[index],
            "nvmlDeviceGetHandleByUUID": by_uuid,
            "nvmlDeviceGetUUID": lambda handle: self._gpu(handle).uuid,
            "nvmlDeviceGetName": lambda handle: self._gpu(handle).name,
            "nvmlDeviceGetPowerUsage": power,
            "nvmlDeviceGetTotalEnergyConsumption": energy,
            "nvmlDeviceGetUtilizationRates": utilization,
            "nvmlDeviceGetClockInfo": clock,
            "nvmlDeviceGetMaxClockInfo": max_clock,
            "nvmlDeviceGetTemperature": temperature,
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceIsMigDeviceHandle": is_mig,
            "nvmlDeviceGetMigMode": mig_mode,
            "nvmlDeviceGetComputeRunningProcesses": processes,
        }

    def install(self, monkeypatch: Any, cuda_uuids: list[str] | None = None) -> None:
        """Patch pynvml; with `cuda_uuids`, also make torch report those CUDA devices."""
        for name, impl in self.implementations().items():
            monkeypatch.setattr(pynvml, name, mock.create_autospec(getattr(pynvml, name), side_effect=impl))
        if cuda_uuids is not None:

            def properties(device: Any = None) -> SimpleNamespace:
                index = 0 if device is None else (torch.device(device).index or 0)
                return SimpleNamespace(uuid=cuda_uuids[index], name="fake CUDA device")

            monkeypatch.setattr(
                torch.cuda,
                "get_device_properties",
                mock.create_autospec(torch.cuda.get_device_properties, side_effect=properties),
            )
