"""Progress bars for long loops (sweeps, tune, repeated measurement), on a terminal only.

Callers never test for a terminal themselves:

    with progress("measuring", total=len(configs)) as bar:
        for config in configs:
            ...
            bar.advance()

    for config in track(configs, "measuring"):
        ...

On a TTY (stderr) the bar shows done/total, elapsed time and an estimate of time left. When
stderr is not a terminal, or output is quiet (`-q`), the same calls do nothing, so piped
output and CI logs stay clean. Bars go to stderr: stdout carries data only. Nested calls (a
sweep inside tune) add a line to the bar already on screen instead of opening a second live
display, which rich does not allow. The bar is redrawn only when advanced, never from a
background thread while steps are timed, so it cannot disturb a timed step; `spinning` redraws
from a thread only around untimed work (building a model, counting its operations), so that
work never leaves the screen still.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from attnprof.report import console

T = TypeVar("T")

_live: Progress | None = None  # the bar on screen, shared by nested progress() calls


class ProgressHandle:
    """What a progress() block can do; every method is a no-op when no bar is shown."""

    def __init__(self, bar: Progress | None = None, task: TaskID | None = None) -> None:
        self._bar = bar
        self._task = task

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def advance(self, steps: float = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, steps)
            self._bar.refresh()

    def describe(self, description: str) -> None:
        """Change the text in front of the bar, e.g. to name the configuration being measured."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=description)
            self._bar.refresh()

    def update(self, completed: float, total: float | None) -> None:
        """Jump to `completed` of `total`, for loops that report their own position."""
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=completed, total=total)
            self._bar.refresh()


def progress_enabled() -> bool:
    """Bars are drawn only on an interactive stderr and when output is not quiet."""
    return console.stderr_console().is_terminal and not console.is_quiet()


@contextmanager
def progress(description: str, total: float | None = None) -> Iterator[ProgressHandle]:
    """A progress bar for the duration of the block; `total=None` shows an indeterminate bar."""
    global _live
    if not progress_enabled():
        yield ProgressHandle()
        return
    if _live is not None:
        outer = _live
        task = outer.add_task(description, total=total)
        try:
            yield ProgressHandle(outer, task)
        finally:
            outer.remove_task(task)
        return
    bar = Progress(
        SpinnerColumn(finished_text=" "),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("•"),
        TimeRemainingColumn(),
        TextColumn("left"),
        console=console.stderr_console(),
        transient=True,  # the bar disappears when done; results stay on screen
        # Redrawn only when a caller advances, between measured steps: a refresh thread would
        # compete with the workload being timed.
        auto_refresh=False,
    )
    _live = bar
    try:
        with bar:
            yield ProgressHandle(bar, bar.add_task(description, total=total))
    finally:
        _live = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items`, advancing a bar after each one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total) as bar:
        for item in items:
            yield item
            bar.advance()


SPIN_SECONDS = 0.1  # redraw interval of a spinning line


@contextmanager
def spinning(description: str) -> Iterator[None]:
    """A line with no count for the duration of the block, redrawn by a thread so it moves: for
    untimed work of unknown length (never around timed steps)."""
    with progress(description, total=None) as handle:
        bar = handle._bar
        if bar is None:
            yield
            return
        stop = threading.Event()

        def redraw() -> None:
            while not stop.wait(SPIN_SECONDS):
                bar.refresh()

        thread = threading.Thread(target=redraw, name="attnprof-spinner", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
