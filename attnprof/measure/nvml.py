"""NVML telemetry: power, energy, utilization, clocks, temperature and memory of NVIDIA GPUs.

The only module that imports pynvml (package nvidia-ml-py). NVML failures become attnprof
exceptions (`NvmlError`) or, for a single unsupported reading, a null field with its reason:
a GPU that cannot report power still gets profiled.

Devices are matched to CUDA by UUID because NVML numbers GPUs in PCI order and ignores
CUDA_VISIBLE_DEVICES, so NVML index i is not CUDA device i in general.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch

from attnprof.errors import NvmlError, UsageError
from attnprof.measure.records import Clocks, DeviceTelemetry, GpuInfo, GpuSample

try:
    import pynvml
except ImportError:  # a runtime dependency, but a broken install must not break CPU profiling
    pynvml = None

DEFAULT_RATE_HZ = 10.0  # bounded so the sampler thread costs well under 1% of a step
MAX_RATE_HZ = 100.0
NO_GPU_REASON = "energy is measured on NVIDIA GPUs only"


def describe(exc: Exception) -> str:
    """One line saying why NVML could not answer."""
    if pynvml is not None:
        if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
            return "no NVIDIA driver: the NVML library (libnvidia-ml.so.1) was not found"
        if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
            return "the NVIDIA driver is not loaded"
        if isinstance(exc, pynvml.NVMLError_NoPermission):
            return "NVML refused the query: insufficient permissions"
        if isinstance(exc, pynvml.NVMLError_NotSupported):
            return "not supported by this GPU"
        if isinstance(exc, pynvml.NVMLError_GpuIsLost):
            return "the GPU has fallen off the bus (NVML: GPU is lost)"
    return f"NVML error: {exc}"


@contextmanager
def session() -> Iterator[None]:
    """NVML initialised for the block (NVML counts nested inits); NvmlError when it cannot be."""
    if pynvml is None:
        raise NvmlError("nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlError(describe(exc)) from None
    try:
        yield
    finally:
        with suppress(pynvml.NVMLError):  # best effort: the readings are already taken
            pynvml.nvmlShutdown()


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except pynvml.NVMLError as exc:
        raise NvmlError(describe(exc)) from None


def normalize_uuid(uuid: str) -> str:
    """NVML says "GPU-58ff…" / "MIG-…", torch says "58ff…": compare the bare lower-case hex."""
    text = uuid.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def is_mig(handle: Any) -> bool:
    """A MIG slice, or a GPU partitioned into slices (whose counters cover every slice)."""
    with suppress(pynvml.NVMLError):
        if bool(pynvml.nvmlDeviceIsMigDeviceHandle(handle)):
            return True
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except pynvml.NVMLError:
        return False  # GPUs without MIG support answer NotSupported
    return current == pynvml.NVML_DEVICE_MIG_ENABLE


def _memory_total(handle: Any) -> int | None:
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    except pynvml.NVMLError:
        return None


def gpu_info(index: int, handle: Any) -> GpuInfo:
    return GpuInfo(
        nvml_index=index,
        uuid=_call(pynvml.nvmlDeviceGetUUID, handle),
        name=_call(pynvml.nvmlDeviceGetName, handle),
        memory_total_bytes=_memory_total(handle),
        mig=is_mig(handle),
    )


def driver_version() -> str:
    return str(_call(pynvml.nvmlSystemGetDriverVersion))


def list_gpus() -> list[tuple[GpuInfo, Any]]:
    """Every GPU NVML sees, in NVML order, with its handle (inside `session()`)."""
    count = _call(pynvml.nvmlDeviceGetCount)
    gpus = []
    for index in range(count):
        handle = _call(pynvml.nvmlDeviceGetHandleByIndex, index)
        gpus.append((gpu_info(index, handle), handle))
    return gpus


def cuda_uuid(device: torch.device) -> str:
    """The UUID CUDA reports for a device (no "GPU-" prefix); honours CUDA_VISIBLE_DEVICES."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is None:  # torch builds before device properties carried the UUID
        raise NvmlError(f"torch {torch.__version__} does not report CUDA device UUIDs to match NVML devices by")
    return str(uuid)


def match_cuda_device(uuid: str) -> tuple[GpuInfo, Any]:
    """The NVML device with this CUDA UUID; MIG slices are looked up by their own UUID."""
    wanted = normalize_uuid(uuid)
    for info, handle in list_gpus():
        if normalize_uuid(info.uuid) == wanted:
            return info, handle
    try:
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"MIG-{wanted}")
    except pynvml.NVMLError:
        raise NvmlError(f"no NVML device has the UUID {uuid} of the CUDA device") from None
    return GpuInfo(
        nvml_index=-1,
        uuid=f"MIG-{wanted}",
        name=_call(pynvml.nvmlDeviceGetName, handle),
        memory_total_bytes=_memory_total(handle),
        mig=True,
    ), handle


# --- readings ---------------------------------------------------------------------------------

MIG_POWER_REASON = "MIG slice: NVML reports power and energy for the whole GPU, not one slice"
MIG_UTILIZATION_REASON = "MIG slice: NVML reports no utilization for MIG devices"


def _power(handle: Any) -> dict[str, Any]:
    return {"power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0}  # milliwatts


def _utilization(handle: Any) -> dict[str, Any]:
    rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
    return {"utilization_pct": float(rates.gpu), "memory_utilization_pct": float(rates.memory)}


def _sm_clock(handle: Any) -> dict[str, Any]:
    return {"sm_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))}


def _memory_clock(handle: Any) -> dict[str, Any]:
    return {"memory_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM))}


def _temperature(handle: Any) -> dict[str, Any]:
    return {"temperature_c": float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))}


def _memory_used(handle: Any) -> dict[str, Any]:
    return {"memory_used_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)}


def _energy(handle: Any) -> dict[str, Any]:
    return {"energy_mj": int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))}  # millijoules


# Each reader fills the fields named after it; one NVML call per reader per sample.
READERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "power_w": _power,
    "utilization_pct": _utilization,
    "sm_clock_mhz": _sm_clock,
    "memory_clock_mhz": _memory_clock,
    "temperature_c": _temperature,
    "memory_used_bytes": _memory_used,
    "energy_mj": _energy,
}


@dataclass
class DeviceReader:
    """Reads one GPU; a reading that fails is dropped from later samples and its reason kept."""

    info: GpuInfo
    handle: Any
    reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.info.mig:
            self.reasons.update(power_w=MIG_POWER_REASON, energy_mj=MIG_POWER_REASON)
            self.reasons["utilization_pct"] = MIG_UTILIZATION_REASON

    def read(self, t: float) -> GpuSample:
        sample = GpuSample(t=t, nvml_index=self.info.nvml_index)
        for name, reader in READERS.items():
            if name in self.reasons:
                continue
            try:
                values = reader(self.handle)
            except pynvml.NVMLError as exc:
                self.reasons[name] = describe(exc)
                continue
            for key, value in values.items():
                setattr(sample, key, value)
        return sample

    def process_memory(self, pid: int) -> int | None:
        """GPU memory held by `pid` on this device, None when it holds none or NVML cannot say."""
        try:
            processes = pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except pynvml.NVMLError:
            return None
        used = [p.usedGpuMemory for p in processes if p.pid == pid and p.usedGpuMemory is not None]
        return int(sum(used)) if used else None


class Sampler:
    """A daemon thread reading every device `rate_hz` times a second into `samples`."""

    def __init__(self, readers: list[DeviceReader], rate_hz: float = DEFAULT_RATE_HZ) -> None:
        if not (0 < rate_hz <= MAX_RATE_HZ):
            raise UsageError(f"the NVML sampling rate must be in (0, {MAX_RATE_HZ:g}] Hz, got {rate_hz:g}")
        self.readers = readers
        self.rate_hz = rate_hz
        self.samples: list[GpuSample] = []
        self._origin = time.perf_counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="attnprof-nvml", daemon=True)

    def now(self) -> float:
        return time.perf_counter() - self._origin

    def read_now(self) -> list[GpuSample]:
        """Read every device immediately (used at window boundaries), and keep the samples."""
        with self._lock:
            taken = [reader.read(self.now()) for reader in self.readers]
            self.samples.extend(taken)
        return taken

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        while not self._stop.wait(period):
            self.read_now()

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> list[GpuSample]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return self.samples


# --- telemetry around the measured steps of a profile ------------------------------------------


@dataclass
class EnergyResult:
    """Energy per step over the measured window, or None with the reason."""

    energy_j: float | None
    reason: str | None
    source: str | None  # "counter" or "integrated_power"


class Telemetry:
    """NVML sampling for one profiled device. On a CPU or without NVML it records nothing and
    keeps the reason; profiling carries on either way.

        with Telemetry(device) as telemetry:
            ...warm-up...
            telemetry.window_start()
            ...measured steps...
            telemetry.window_end(steps)
        record = telemetry.record(); energy = telemetry.energy()
    """

    def __init__(self, device: torch.device, rate_hz: float = DEFAULT_RATE_HZ) -> None:
        self.device = device
        self.rate_hz = rate_hz
        self.reason: str | None = None  # why there is no telemetry at all
        self.reader: DeviceReader | None = None
        self.sampler: Sampler | None = None
        self.sm_max_mhz: float | None = None
        self._window: tuple[GpuSample, GpuSample] | None = None
        self._window_start: GpuSample | None = None
        self._steps = 0
        self._stack = ExitStack()

    def __enter__(self) -> Telemetry:
        if self.device.type != "cuda":
            self.reason = NO_GPU_REASON
            return self
        try:
            self._stack.enter_context(session())
            info, handle = match_cuda_device(cuda_uuid(self.device))
        except NvmlError as exc:
            self.reason = str(exc)
            return self
        self.reader = DeviceReader(info, handle)
        try:
            self.sm_max_mhz = float(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM))
        except pynvml.NVMLError:
            self.sm_max_mhz = None
        self.sampler = Sampler([self.reader], self.rate_hz).start()
        self._stack.callback(self.sampler.stop)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()  # stops the sampler, then shuts NVML down

    def window_start(self) -> None:
        if self.sampler is not None:
            (self._window_start,) = self.sampler.read_now()

    def window_end(self, steps: int) -> None:
        if self.sampler is not None and self._window_start is not None:
            (end,) = self.sampler.read_now()
            self._window = (self._window_start, end)
            self._steps = steps

    def window_samples(self) -> list[GpuSample]:
        if self.sampler is None or self._window is None:
            return []
        start, end = self._window
        return [s for s in self.sampler.samples if start.t <= s.t <= end.t]

    def energy(self) -> EnergyResult:
        """Energy per step: the total-energy counter where the GPU has one, else power × time."""
        if self.reason is not None:
            return EnergyResult(None, self.reason, None)
        if self._window is None or self._steps < 1:
            return EnergyResult(None, "no measured window was marked", None)
        start, end = self._window
        seconds = end.t - start.t
        if start.energy_mj is not None and end.energy_mj is not None:
            if end.energy_mj > start.energy_mj:
                return EnergyResult((end.energy_mj - start.energy_mj) / 1000.0 / self._steps, None, "counter")
            return EnergyResult(
                None,
                f"the energy counter did not advance over the {seconds * 1000:.0f} ms measured; "
                "measure more steps (--repeats)",
                None,
            )
        joules = integrate_power(self.window_samples())
        if joules is None:
            reasons = self.reader.reasons if self.reader is not None else {}
            why = reasons.get("energy_mj") or reasons.get("power_w") or "too few power samples"
            return EnergyResult(None, f"no energy counter and no power readings: {why}", None)
        return EnergyResult(joules / self._steps, None, "integrated_power")

    def record(self) -> DeviceTelemetry | None:
        """Summary of the readings over the measured window; None when nothing was read."""
        if self.reader is None or self.sampler is None:
            return None
        window = self.window_samples() or self.sampler.samples
        reasons = dict(self.reader.reasons)
        energy = self.energy()
        if energy.reason is not None:
            reasons.setdefault("energy_j", energy.reason)
        return DeviceTelemetry(
            gpu_name=self.reader.info.name,
            gpu_uuid=self.reader.info.uuid,
            nvml_index=self.reader.info.nvml_index,
            sample_rate_hz=self.rate_hz,
            samples=len(window),
            power_w=_mean(s.power_w for s in window),
            power_max_w=_max(s.power_w for s in window),
            utilization_pct=_mean(s.utilization_pct for s in window),
            clocks=Clocks(
                sm_mhz=_median(s.sm_clock_mhz for s in window),
                memory_mhz=_median(s.memory_clock_mhz for s in window),
                sm_max_mhz=self.sm_max_mhz,
            ),
            temperature_max_c=_max(s.temperature_c for s in window),
            memory_used_max_bytes=_max(s.memory_used_bytes for s in window),
            energy_source=energy.source,
            reasons=reasons,
        )


def integrate_power(samples: list[GpuSample]) -> float | None:
    """Joules under the power curve (trapezoids); None with fewer than two power readings."""
    points = [(s.t, s.power_w) for s in samples if s.power_w is not None]
    if len(points) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(points))


def _present(values: Iterator[Any]) -> list[Any]:
    return [v for v in values if v is not None]


def _mean(values: Iterator[float | None]) -> float | None:
    present = _present(values)
    return statistics.fmean(present) if present else None


def _median(values: Iterator[float | None]) -> float | None:
    present = _present(values)
    return statistics.median(present) if present else None


def _max(values: Iterator[Any]) -> Any:
    present = _present(values)
    return max(present) if present else None
