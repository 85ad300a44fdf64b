"""The record types `attnprof report` understands: one module per type, each with its adapter.

A new record type takes part in every format by adding its adapter to `ADAPTERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnprof.errors import InputFileError, UsageError
from attnprof.report import check, distributed, fit, plan, profile
from attnprof.report.adapter import RecordAdapter
from attnprof.store import from_json_dict, json_schema, read_json

ADAPTERS: tuple[RecordAdapter[Any], ...] = (
    profile.ADAPTER,
    plan.ADAPTER,
    check.ADAPTER,
    fit.ADAPTER,
    distributed.ADAPTER,
)


def adapter_for_record(record: object) -> RecordAdapter[Any]:
    for adapter in ADAPTERS:
        if isinstance(record, adapter.record_type):
            return adapter
    raise TypeError(f"no report adapter for {type(record).__name__}")


def load_report_record(path: Path) -> tuple[RecordAdapter[Any], Any]:
    """Read a saved profile, fit, plan, check result or distributed profile, whichever `path` holds."""
    data = read_json(path)
    for adapter in ADAPTERS:
        if adapter.recognizes(data):
            return adapter, from_json_dict(adapter.record_type, data, where=str(path))
    kinds = ", ".join(adapter.kind for adapter in ADAPTERS)
    raise InputFileError(f"{path}: not a record attnprof can report on (expected one of: {kinds})")


def record_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind's files (`attnprof schema KIND`; docs/schema/KIND.schema.json)."""
    for adapter in ADAPTERS:
        if adapter.kind == kind:
            return json_schema(adapter.record_type, f"attnprof {kind} file")
    raise UsageError(f"no record kind {kind!r}: one of {', '.join(adapter.kind for adapter in ADAPTERS)}")
