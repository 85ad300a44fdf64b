"""What saved files record of a workload."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class WorkloadInfo:
    target: str
    fingerprint: str  # architecture + settings; identifies the workload in saved files
    parameter_count: int
    name: str = ""
    architecture_fingerprint: str = ""  # architecture alone, shared across settings
