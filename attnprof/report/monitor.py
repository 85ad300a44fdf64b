"""Live view of `attnprof monitor`: one row per GPU, refreshed in place on a terminal and printed
as plain lines otherwise (logs, CI)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.table import Table

from attnprof.measure.records import GpuInfo, GpuSample


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.1f}"


def gpu_table(gpus: list[GpuInfo], samples: list[GpuSample], status: str) -> Table:
    watching = any(s.process_memory_bytes is not None for s in samples) or status != "all GPUs"
    table = Table(title=f"attnprof monitor: {status}", title_justify="left")
    for header in ("GPU", "name", "util %", "mem GiB", "power W", "SM MHz", "mem MHz", "temp C"):
        table.add_column(header, justify="left" if header == "name" else "right")
    if watching:
        table.add_column("process GiB", justify="right")
    by_index = {s.nvml_index: s for s in samples}
    for gpu in gpus:
        sample = by_index.get(gpu.nvml_index)
        if sample is None:
            continue
        used = _gib(sample.memory_used_bytes)
        total = _gib(gpu.memory_total_bytes)
        row = [
            str(gpu.nvml_index),
            gpu.name + (" (MIG)" if gpu.mig else ""),
            _fmt(sample.utilization_pct, ".0f"),
            f"{used}/{total}",
            _fmt(sample.power_w, ".0f"),
            _fmt(sample.sm_clock_mhz, ".0f"),
            _fmt(sample.memory_clock_mhz, ".0f"),
            _fmt(sample.temperature_c, ".0f"),
        ]
        if watching:
            row.append(_gib(sample.process_memory_bytes))
        table.add_row(*row)
    return table


def plain_line(gpus: list[GpuInfo], samples: list[GpuSample], status: str) -> str:
    names = {g.nvml_index: g.name for g in gpus}
    parts = [
        f"gpu{s.nvml_index} {names.get(s.nvml_index, '?')}: util {_fmt(s.utilization_pct, '.0f', '%')} "
        f"mem {_gib(s.memory_used_bytes)} GiB power {_fmt(s.power_w, '.0f', ' W')} "
        f"sm {_fmt(s.sm_clock_mhz, '.0f', ' MHz')} temp {_fmt(s.temperature_c, '.0f', ' C')}"
        for s in samples
    ]
    return f"t={samples[0].t:.1f}s {status} | " + " | ".join(parts) if samples else status


class LiveMonitor:
    """Context manager whose `update` is the monitor's tick callback."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live: Live | None = None

    def __enter__(self) -> LiveMonitor:
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)

    def update(self, gpus: list[GpuInfo], samples: list[GpuSample], status: str) -> None:
        if self._live is not None:
            self._live.update(gpu_table(gpus, samples, status))
        else:
            self.console.print(plain_line(gpus, samples, status), highlight=False, soft_wrap=True)
