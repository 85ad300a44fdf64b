"""Where a workload's measurements and fitted cost model live, and the store of measurements.

profiles/<workload>-<architecture fingerprint>/ holds, per machine fingerprint, the sweep's
measurements (measurements-<machine>.jsonl) and the model fitted on them (costmodel-<machine>.json).
The store is JSON Lines (store.append_jsonl): one fsynced line per measurement, so a crash
can tear only the last line, which reading skips and the next append cuts off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from attnprof.costmodel.knobs import ConfigValue
from attnprof.costmodel.records import Measurement
from attnprof.settings import Settings
from attnprof.store import append_jsonl, read_jsonl_records, short_hash, workload_dir

if TYPE_CHECKING:  # the paths here are read by light commands; a Workload means torch
    from attnprof.targets.workload import Workload


def measurement_key(config: Mapping[str, ConfigValue]) -> str:
    return short_hash(dict(config))


def architecture_key(workload: Workload) -> str:
    """The workload's architecture fingerprint as built in fp32, whatever dtype a run used."""
    fresh = dataclasses.replace(workload, architecture="")
    fresh.fingerprint(Settings())  # builds the model on the meta device and fingerprints it
    return fresh.architecture


def store_path(folder: Path, workload_name: str, workload_fingerprint: str, machine_fingerprint: str) -> Path:
    """profiles/<workload>-<architecture fingerprint>/measurements-<machine fingerprint>.jsonl"""
    return workload_dir(folder, workload_name, workload_fingerprint) / f"measurements-{machine_fingerprint}.jsonl"


def model_path(folder: Path, workload_name: str, workload_fingerprint: str, machine_fingerprint: str) -> Path:
    """profiles/<workload>-<architecture fingerprint>/costmodel-<machine fingerprint>.json"""
    return workload_dir(folder, workload_name, workload_fingerprint) / f"costmodel-{machine_fingerprint}.json"


class MeasurementStore:
    """Append-only JSON Lines file of one workload's measurements on one machine.

    It is read, repaired and appended to only inside its profiles folder (`folder`, by default
    the one store_path put it under): a store that symlinks lead elsewhere is refused (exit 2),
    so no file outside is ever cut or written.
    """

    def __init__(self, path: Path, folder: Path | None = None) -> None:
        self.path = Path(path)
        self.folder = Path(folder) if folder is not None else self.path.parent.parent
        self.notes: list[str] = []  # e.g. a torn last line skipped on the last load

    def load(self) -> dict[str, Measurement]:
        """Measurements by key (a later line wins); a torn last line is skipped."""
        measurements, self.notes = read_jsonl_records(self.path, Measurement, inside=self.folder)
        return {m.key: m for m in measurements}

    def append(self, measurement: Measurement) -> None:
        append_jsonl(self.path, measurement, inside=self.folder)
