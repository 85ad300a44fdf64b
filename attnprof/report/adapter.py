"""What the report renderers need to know about one record type, and how cells are written.

Every output format (table, markdown, json, csv, parquet, html) is written once, over any
record type; a record type takes part by providing one `RecordAdapter`: its summary facts,
its tables as DataFrames with declared columns, and its charts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pandas as pd
from rich.console import RenderableType

from attnprof.report.plots import Peaks
from attnprof.report.svg import Chart

R = TypeVar("R")


@dataclass(frozen=True)
class ReportOptions:
    """Inputs a record does not carry itself."""

    peaks: Peaks | None = None


@dataclass(frozen=True)
class Section:
    """A titled table; `frame` has exactly the declared `columns`, in that order."""

    title: str
    frame: pd.DataFrame
    highlight: Sequence[bool] = field(default_factory=tuple)  # rows to emphasise (e.g. attention)


@dataclass(frozen=True)
class RecordAdapter(Generic[R]):
    kind: str  # the name users see: profile, fit, plan, check
    record_type: type[R]
    recognizes: Callable[[dict[str, Any]], bool]  # does this JSON object hold such a record?
    title: Callable[[R], str]
    summary: Callable[[R], list[tuple[str, str]]]  # key facts, shown above the tables
    sections: Callable[[R], list[Section]]  # the first one is the record's main table (csv, parquet)
    charts: Callable[[R, ReportOptions], list[Chart]]
    terminal: Callable[[R], RenderableType] | None = None  # a dedicated terminal view, if it has one
    markdown: Callable[[R], str] | None = None  # a dedicated markdown rendering, if it has one


def frame(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """A DataFrame with exactly `columns`; a row missing a column or carrying an extra one is a bug."""
    for row in rows:
        if set(row) != set(columns):
            missing, extra = set(columns) - set(row), set(row) - set(columns)
            raise ValueError(f"row does not match the declared columns: missing {missing}, extra {extra}")
    return pd.DataFrame(list(rows), columns=list(columns))


def format_cell(value: Any) -> str:
    """How a table cell reads in the terminal, markdown and HTML: missing values as an em dash,
    integers grouped by thousands, floats to four significant digits."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars from a DataFrame cell
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.4e}"
    return str(value)


def is_numeric_column(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
