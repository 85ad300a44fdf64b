"""What the report renderers need to know about one record type, and how cells are written.

Every output format (formats.FORMATS) is written once, over any record type; a record type
takes part by providing one `RecordAdapter`: its summary facts, its tables with declared
columns, its charts, and any format it renders its own way.

Tables are plain rows, so the terminal, markdown and HTML views need no pandas; a DataFrame
is built (and pandas imported) only for the formats that export one (csv, parquet).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rich.console import RenderableType

from attnprof.report.console_table import Column, FittedTable, Row
from attnprof.report.plots import Peaks
from attnprof.report.svg import Chart

if TYPE_CHECKING:
    import pandas as pd

R = TypeVar("R")


@dataclass(frozen=True)
class ReportOptions:
    """Inputs a record does not carry itself."""

    peaks: Peaks | None = None


@dataclass(frozen=True)
class Section:
    """A titled table: each row has exactly the declared `columns`."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Mapping[str, Any]]
    highlight: Sequence[bool] = ()  # rows to emphasise (e.g. attention)

    def __post_init__(self) -> None:
        for row in self.rows:  # a row missing a column or carrying an extra one is a bug
            if set(row) != set(self.columns):
                missing, extra = set(self.columns) - set(row), set(row) - set(self.columns)
                raise ValueError(f"row does not match the declared columns: missing {missing}, extra {extra}")

    @property
    def frame(self) -> pd.DataFrame:
        """The table as a DataFrame, for the formats that export one."""
        import pandas as pd  # only csv and parquet need it: the other formats run without pandas

        return pd.DataFrame([dict(row) for row in self.rows], columns=list(self.columns))

    def typed_columns(self) -> tuple[list[bool], list[tuple[Any, ...]]]:
        """Whether each column is numeric, and the rows as one type per column holds them.

        Cells read as they would from `frame` (the same inference pandas makes), so every
        format shows a value alike: integers in a column with a gap are floats, for instance.
        """
        typed = [_typed_column([row[column] for row in self.rows]) for column in self.columns]
        numeric = [is_numeric for is_numeric, _ in typed]
        return numeric, list(zip(*(values for _, values in typed), strict=True))


def section_table(section: Section) -> FittedTable:
    """A section on the terminal: on a narrow one the last columns are left out first; text
    wraps, numbers never do; highlighted rows in bold red."""
    numeric, rows = section.typed_columns()
    columns = [
        Column(str(column), "right" if num else "left", priority=index, wraps=not num)
        for index, (column, num) in enumerate(zip(section.columns, numeric, strict=True))
    ]
    emphasised = [index < len(section.highlight) and section.highlight[index] for index in range(len(rows))]
    return FittedTable(
        columns,
        [
            Row(tuple(format_cell(v) for v in values), style="bold red" if emphasis else "")
            for values, emphasis in zip(rows, emphasised, strict=True)
        ],
        title=section.title,
    )


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
    # Its own rendering of a format of formats.FORMATS, by name: instead of the generic one, or
    # a format only this record type has (a check result's JUnit XML).
    renderings: Mapping[str, Callable[[R], str]] = field(default_factory=dict)


_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1  # what a DataFrame holds as numbers


def _typed_column(values: list[Any]) -> tuple[bool, list[Any]]:
    """(numeric, values) as a DataFrame column made of `values` holds them: numbers of one
    kind, numbers with a gap or of two kinds as floats (gaps NaN); bools, text, mixtures, only
    gaps or no values at all as objects, not numeric; integers beyond 64 bits as objects too."""
    values = [_plain(v) for v in values]
    present = [v for v in values if v is not None]
    if not present or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return False, values
    integers = [v for v in present if isinstance(v, int)]
    if not (all(_INT64_MIN <= v <= _INT64_MAX for v in integers) or all(0 <= v <= _UINT64_MAX for v in integers)):
        return False, values
    if len(integers) == len(values):
        return True, values
    return True, [math.nan if v is None else float(v) for v in values]


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def format_cell(value: Any) -> str:
    """How a table cell reads in the terminal, markdown and HTML: missing values as an em dash,
    integers grouped by thousands, floats to four significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.4e}"
    return str(value)


# Sizes and counts as the records' own tables write them: 1.5 MiB, 2.10M.
def human_bytes(value: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(value: float) -> str:
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(value) < 1000 or unit == "P":
            return f"{value:.0f}" if unit == "" else f"{value:.2f}{unit}"
        value /= 1000
    raise AssertionError("unreachable")
