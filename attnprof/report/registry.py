"""The record types `attnprof report` understands: one module per type, each with its adapter.

A new record type takes part in every format by adding its adapter to `ADAPTERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnprof.errors import InputFileError
from attnprof.report import check, fit, plan, profile
from attnprof.report.adapter import RecordAdapter
from attnprof.store import from_json_dict, read_json

ADAPTERS: tuple[RecordAdapter[Any], ...] = (
    profile.ADAPTER,
    plan.ADAPTER,
    check.ADAPTER,
    fit.ADAPTER,
)


def adapter_for_record(record: object) -> RecordAdapter[Any]:
    for adapter in ADAPTERS:
        if isinstance(record, adapter.record_type):
            return adapter
    raise TypeError(f"no report adapter for {type(record).__name__}")


def load_report_record(path: Path) -> tuple[RecordAdapter[Any], Any]:
    """Read a saved profile, fit, plan or check result, whichever `path` holds."""
    data = read_json(path)
    for adapter in ADAPTERS:
        if adapter.recognizes(data):
            return adapter, from_json_dict(adapter.record_type, data, where=str(path))
    kinds = ", ".join(adapter.kind for adapter in ADAPTERS)
    raise InputFileError(f"{path}: not a record attnprof can report on (expected one of: {kinds})")
