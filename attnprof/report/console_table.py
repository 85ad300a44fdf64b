"""Terminal tables that fit the width they are drawn at.

A table declares its columns with a priority. When it is drawn (rich calls `__rich_console__`
with the width at hand: the terminal's, or unlimited when piped), the columns that do not fit
are left out, lowest priority first, and a line under the table names them; a column is never
narrowed below its numbers, so a number is never cut to "…". Columns of text (module names,
details) may wrap. Detail columns are shown only with -v.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from attnprof.report.console import is_verbose

WRAP_MIN = 16  # a text column wraps down to this width before a column is left out

Cell = str | Text


@dataclass(frozen=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "right"
    # Left out when the width runs short, highest first; 0 is always shown.
    priority: int = 0
    detail: bool = False  # shown only with -v
    wraps: bool = False  # text that may wrap over lines (numbers never do)
    max_width: int | None = None  # a text column wraps at this width even when there is room


@dataclass(frozen=True)
class Row:
    cells: tuple[Cell, ...]
    style: str = ""
    section: bool = False  # a rule above this row (the totals)


def _cell_width(cell: Cell) -> int:
    text = cell if isinstance(cell, Text) else Text(cell)
    return max((line.cell_len for line in text.split("\n")), default=0)


class FittedTable:
    """A rich renderable: the table with the columns that fit, and a line naming those left out."""

    def __init__(
        self,
        columns: Sequence[Column],
        rows: Iterable[Row],
        title: str = "",
        caption: str = "",
    ) -> None:
        self.columns = tuple(columns)
        self.rows = tuple(rows)
        for row in self.rows:
            if len(row.cells) != len(self.columns):
                raise ValueError(f"a row has {len(row.cells)} cells for {len(self.columns)} columns")
        self.title = title
        self.caption = caption

    def wanted(self) -> list[int]:
        """The columns shown at unlimited width: detail columns only with -v, empty columns never."""
        verbose = is_verbose()
        return [
            index
            for index, column in enumerate(self.columns)
            if column.priority == 0
            or ((verbose or not column.detail) and any(_cell_width(row.cells[index]) for row in self.rows))
        ]

    def fitted(self, console: Console, options: ConsoleOptions) -> tuple[Table, list[str]]:
        """The table drawn with the columns that fit `options.max_width`, and the headers left out."""
        shown = self.wanted()
        dropped: list[int] = []
        while True:
            table = self._table(shown)
            if self._needed(console, options, table, shown) <= options.max_width:
                break
            droppable = [i for i in shown if self.columns[i].priority > 0]
            if not droppable:
                break  # only the columns that are always shown: rich wraps what it must
            lowest = max(droppable, key=lambda i: (self.columns[i].priority, i))
            shown.remove(lowest)
            dropped.append(lowest)
        return table, [self.columns[i].header.replace("\n", " ") for i in sorted(dropped)]

    def _needed(self, console: Console, options: ConsoleOptions, table: Table, shown: list[int]) -> int:
        """The width the table needs with its text columns wrapped down to WRAP_MIN."""
        natural = Measurement.get(console, options.update_width(10**6), table).maximum
        slack = 0
        for index in shown:
            if self.columns[index].wraps:
                column = self.columns[index]
                widest = max([_cell_width(column.header)] + [_cell_width(r.cells[index]) for r in self.rows])
                slack += max(min(widest, column.max_width or widest) - WRAP_MIN, 0)
        return natural - slack

    def _table(self, shown: list[int]) -> Table:
        table = Table(
            title=self.title or None,
            title_justify="left",
            caption=self.caption or None,
            caption_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            show_edge=False,
        )
        for index in shown:
            column = self.columns[index]
            table.add_column(
                column.header,
                justify=column.justify,
                no_wrap=not column.wraps,
                overflow="fold" if column.wraps else "ellipsis",
                max_width=column.max_width,
            )
        for row in self.rows:
            if row.section:
                table.add_section()
            table.add_row(*(row.cells[i] for i in shown), style=row.style or None)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table, dropped = self.fitted(console, options)
        yield table
        if dropped:
            yield Text(
                f"left out at {options.max_width} columns: {', '.join(dropped)} (a wider terminal, or output "
                "to a pipe or file, shows them)",
                style="dim",
            )

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        table, _ = self.fitted(console, options)
        return Measurement.get(console, options, table)

