"""Command-line options several commands share, defined once so their names and help agree."""

from __future__ import annotations

import typer

CLOCK = typer.Option(
    None,
    "--clock",
    help="CPU step timing: wall, or cpu (process CPU time, which other load on a shared machine does not inflate).",
)
