"""`attnprof schema KIND`: the JSON Schema of a profile, plan, check result, fit or distributed profile file.

Generated from the typed records (store.json_schema), so it always matches what attnprof writes
and reads; docs/schema/ holds the schemas of this version (kept in sync by a test).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from attnprof.report.console import log, print_result
from attnprof.report.registry import ADAPTERS, record_schema
from attnprof.store import atomic_write_text


def schema_command(
    kind: str = typer.Argument(..., help=f"The file kind: {', '.join(adapter.kind for adapter in ADAPTERS)}."),
    out: Path = typer.Option(None, "--out", "-o", help="Write the schema to this file instead of stdout."),
) -> None:
    """Print the JSON Schema (draft 2020-12) of one kind of attnprof file."""
    text = json.dumps(record_schema(kind), indent=1) + "\n"
    if out is None:
        print_result(text, end="")
    else:
        atomic_write_text(out, text)
        log(f"wrote {out}")
