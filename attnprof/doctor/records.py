"""What `attnprof doctor` found and what `attnprof monitor --record` wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from attnprof.measure.records import GpuInfo, GpuSample
from attnprof.store import SCHEMA_VERSION

MIN_INTERVAL_S = 0.1  # NVML readings refresh at about this rate; faster sampling repeats them


@dataclass
class MonitorRecording:
    """Samples recorded by `attnprof monitor --record FILE`."""

    created: str
    interval_s: float
    gpus: list[GpuInfo]
    samples: list[GpuSample]
    command: list[str] = field(default_factory=list)
    pid: int | None = None
    exit_code: int | None = None
    schema_version: int = SCHEMA_VERSION


FindingStatus = Literal["ok", "info", "warn", "problem"]


@dataclass
class Finding:
    """One fact `attnprof doctor` established; a `warn` or `problem` says how to fix it."""

    section: str  # torch, gpu, nvml, cupti, sdpa, transformers, peaks, ...
    name: str
    status: FindingStatus
    detail: str
    fix: str = ""


@dataclass
class DoctorReport:
    """What this environment can do, as gathered by `attnprof.doctor.environment.gather`."""

    findings: list[Finding]
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status in ("warn", "problem")]
